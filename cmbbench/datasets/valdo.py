"""The VALDO 2021 Task 2 (cerebral microbleeds) layout.

::

    ROOT/sub-101/sub-101_space-T2S_desc-masked_T2S.nii.gz   main channel (T2*)
    ROOT/sub-101/sub-101_space-T2S_desc-masked_T1.nii.gz    optional extra channel (may hold NaNs)
    ROOT/sub-101/sub-101_space-T2S_desc-masked_T2.nii.gz    optional extra channel (may hold NaNs)
    ROOT/sub-101/sub-101_space-T2S_CMB.nii.gz               label: 0/1, float64/float32/uint16

Arrays keep the files' voxel order (the released data is LAS: the affine's first axis is
negative) and the affine is preserved, so predictions written back land in place. The
cohort comes from the subject number's first digit (1xx, 2xx, 3xx); the cohort's nominal
grid is recorded in ``meta`` (``expected_spacing_mm``, ``expected_shape``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from cmbbench.datasets.common import (
    find_nifti,
    finish,
    nifti_case,
    reject_options,
    require_root,
)
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.errors import InputError

log = logging.getLogger(__name__)

CHANNELS = ("T2S", "T1", "T2")
_SUBJECT = re.compile(r"^sub-(\d+)$")

#: nominal grids of the three VALDO Task 2 cohorts, by the subject number's first digit
COHORTS: dict[str, dict[str, Any]] = {
    "1": {
        "cohort": "cohort1",
        "expected_spacing_mm": (0.45, 0.45, 4.0),
        "expected_shape": (512, 512, 35),
        "sequence": "2D T2*",
    },
    "2": {
        "cohort": "cohort2",
        "expected_spacing_mm": (0.49, 0.49, 0.8),
        "expected_shape": (512, 512, 192),
        "sequence": "3D T2*",
    },
    "3": {
        "cohort": "cohort3",
        "expected_spacing_mm": (1.0, 1.0, "3-4"),
        "expected_shape": (256, 256, "36-49"),
        "sequence": "2D T2*",
    },
}


def cohort_meta(case_id: str) -> dict[str, Any]:
    """Cohort record for a subject id such as ``sub-205`` (unknown prefixes get ``cohort<digit>``)."""
    m = _SUBJECT.match(case_id)
    digit = m.group(1)[0] if m else "?"
    rec = COHORTS.get(digit)
    if rec is None:
        return {"cohort": f"cohort{digit}"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in rec.items()}


INFO = DatasetInfo(
    name="valdo",
    description="VALDO 2021 Task 2 cerebral microbleeds (T2*, 3 cohorts, LAS, labels 0/1)",
    version="1",
    default_rule="overlap",
    rule_params={"min_overlap_voxels": 1},
    rule_note=(
        "overlap, not the challenge's own 'valdo' rule: the official code's distance "
        "threshold was not published; score with --rule valdo --max-distance-mm D to "
        "reproduce the challenge with a chosen D"
    ),
    label_kind="mask",
    needs_root=True,
    case_meta=lambda case_id: {"cohort": cohort_meta(case_id)["cohort"]},
    expected_input_format=(
        "ROOT/sub-XXX/sub-XXX_space-T2S_desc-masked_T2S.nii.gz (+ optional _desc-masked_T1/_T2) "
        "and ROOT/sub-XXX/sub-XXX_space-T2S_CMB.nii.gz"
    ),
)


@register_dataset(INFO)
def load_valdo(
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    channels: Sequence[str] = ("T2S",),
    **options: Any,
) -> Dataset:
    """Load a VALDO Task 2 folder. ``channels[0]`` is the main channel, the rest are extras.

    Splits (``split``) are stratified by cohort and CMB-count bin; without ``split_file``
    that reads every label once, only when a split is requested.
    """
    reject_options(INFO, options, ["channels", "split_file", "seed"])
    base = require_root(INFO, root)
    chans = [channels] if isinstance(channels, str) else list(channels)
    unknown = [c for c in chans if c not in CHANNELS]
    if not chans or unknown or len(set(chans)) != len(chans):
        raise InputError(
            f"valdo: channels must be distinct names from {', '.join(CHANNELS)}, got {chans}"
        )
    subjects = sorted(p for p in base.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
    if not subjects:
        raise InputError(
            f"no VALDO subject folders (sub-XXX) found; expected layout: {INFO.expected_input_format}",
            path=str(base),
        )
    cases = []
    for sdir in subjects:
        sid = sdir.name
        paths = {}
        for ch in chans:
            stem = f"{sid}_space-T2S_desc-masked_{ch}"
            p = find_nifti(sdir, stem)
            if p is None:
                raise InputError(
                    f"missing {ch} image (expected {stem}.nii.gz)", case=sid, path=str(sdir)
                )
            paths[ch] = p
        label_stem = f"{sid}_space-T2S_CMB"
        label = find_nifti(sdir, label_stem)
        if label is None:
            raise InputError(
                f"missing label file {label_stem}.nii.gz",
                case=sid,
                path=str(sdir / f"{label_stem}.nii.gz"),
            )
        meta = {**cohort_meta(sid), "channels": chans}
        cases.append(
            nifti_case(
                sid,
                paths[chans[0]],
                label,
                label_kind="mask",
                extras={ch: paths[ch] for ch in chans[1:]},
                meta=meta,
            )
        )
    return finish(
        INFO,
        cases,
        split=split,
        split_file=split_file,
        seed=seed,
        options={"root": str(base), "channels": chans},
        group_key="cohort",
    )
