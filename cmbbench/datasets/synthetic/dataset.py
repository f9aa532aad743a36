"""The ``synthetic`` dataset: registration, splits, cached loading and the NIfTI export."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cmbbench.cases import Case
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.datasets.splits import (
    SplitDef,
    count_bin,
    load_split_file,
    make_splits,
    save_split_file,
    select,
)
from cmbbench.datasets.synthetic.cache import (
    default_cache_dir,
    ensure_generated,
    load_subject_arrays,
    read_sidecar,
)
from cmbbench.datasets.synthetic.contrast import get_protocol
from cmbbench.datasets.synthetic.lesions import LABEL_LOSS, LesionModel
from cmbbench.datasets.synthetic.presets import (
    DATASET_VERSION,
    GENERATOR_VERSION,
    PRESETS,
    get_preset,
)
from cmbbench.datasets.synthetic.subjects import (
    SubjectSpec,
    subject_count,
    subject_ids,
    subject_protocol,
)
from cmbbench.errors import InputError
from cmbbench.io import write_json_atomic
from cmbbench.progress import ProgressFn, log_progress

log = logging.getLogger(__name__)

INFO = DatasetInfo(
    name="synthetic",
    description=(
        "Semi-synthetic CMBs (magnetic-dipole model) on the MNI152 2009a anatomy with veins, "
        "calcifications, iron and air-bone drop-out as unlabelled mimics; six acquisition "
        "protocols; generated locally and cached (presets: default, quick, tiny)"
    ),
    version=DATASET_VERSION,
    default_rule="overlap",
    rule_params={"min_overlap_voxels": 1},
    label_kind="instance",
    needs_root=False,
    expected_input_format="no input needed: generated locally (root = optional cache folder)",
    # the dataset preset each recipe preset is designed for
    recipe_options={
        "tiny": {"preset": "tiny"},
        "quick": {"preset": "quick"},
        "full": {"preset": "default"},
    },
    generates=True,
)


def _specs(preset: str, n: int | None, seed: int, protocol: str | None, lesion_model: LesionModel):
    p = get_preset(preset)
    if protocol is not None:
        get_protocol(protocol)  # unknown names list the known ones
    n_subjects = p.n if n is None else int(n)
    if n_subjects < 1:
        raise InputError(f"n must be at least 1, got {n}")
    return [
        SubjectSpec(
            sid,
            int(seed),
            protocol or subject_protocol(int(seed), sid, preset),
            preset,
            lesion_model,
        )
        for sid in subject_ids(n_subjects)
    ]


def dataset_folder(
    base: Path, preset: str, seed: int, protocol: str | None, lesion_model: str
) -> Path:
    """Folder of one generated dataset under the cache root."""
    name = f"{preset}_seed{int(seed)}"
    if protocol:
        name += f"_{protocol}"
    if lesion_model != "dipole":
        name += f"_{lesion_model}"
    return Path(base) / "synthetic" / f"v{GENERATOR_VERSION}" / name


def strata(specs) -> list[str]:
    """Stratum label per subject: ``"<protocol>|<count bin>"`` from the planned CMB count."""
    return [
        f"{s.protocol}|{count_bin(subject_count(s.seed, s.subject_id, s.preset))}" for s in specs
    ]


def _stored_split_name(preset: str) -> str:
    return f"splits_{preset}_v{DATASET_VERSION}.json"


def compute_splits(
    preset: str = "default", n: int | None = None, seed: int = 0, protocol: str | None = None
) -> SplitDef:
    """The deterministic train/val/test split (stratified by protocol and CMB-count bin)."""
    specs = _specs(preset, n, seed, protocol, "dipole")
    fractions = get_preset(preset).fractions
    return make_splits([s.subject_id for s in specs], strata(specs), seed=seed, fractions=fractions)


def stored_splits(preset: str) -> SplitDef | None:
    """The frozen split shipped with the package for ``preset`` (seed 0, preset size), if any."""
    ref = resources.files("cmbbench.datasets.synthetic").joinpath(_stored_split_name(preset))
    if not ref.is_file():
        return None
    with resources.as_file(ref) as path:
        return load_split_file(path)


def write_stored_splits(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """(Maintainers) write the frozen split files of every preset into the package folder."""
    out_dir = Path(folder) if folder else Path(__file__).parent
    paths = []
    for name in PRESETS:
        meta = {
            "dataset": "synthetic",
            "version": DATASET_VERSION,
            "preset": name,
            "seed": 0,
            "strata": "protocol|count bin",
        }
        paths.append(
            save_split_file(compute_splits(name), out_dir / _stored_split_name(name), meta=meta)
        )
    return paths


def _split_def(preset, n, seed, protocol, split_file) -> SplitDef:
    if split_file is not None:
        return load_split_file(split_file)
    if n is None and protocol is None and int(seed) == 0:
        frozen = stored_splits(preset)
        if frozen is not None:
            return frozen
    return compute_splits(preset, n, seed, protocol)


def _progress_fn(progress: bool | ProgressFn | None) -> ProgressFn | None:
    if callable(progress):
        return progress
    if progress:
        return log_progress(log, "synthetic: subjects ready")
    return None


def _meta_from_sidecar(side: dict) -> dict[str, Any]:
    meta = dict(side["meta"])
    meta["lesion_attrs"] = {int(k): v for k, v in meta.get("lesion_attrs", {}).items()}
    return meta


def _case(folder: Path, sid: str, extras: tuple[str, ...] = ()) -> Case:
    side = read_sidecar(folder, sid)
    if side is None:
        raise InputError(
            "generated subject has no readable sidecar", case=sid, path=str(folder / sid)
        )
    return Case(
        case_id=sid,
        affine=np.asarray(side["affine"], dtype=np.float64),
        shape=tuple(int(s) for s in side["shape"]),  # type: ignore[arg-type]
        label_kind="instance",
        loader=functools.partial(load_subject_arrays, folder, sid, extras),
        meta=_meta_from_sidecar(side),
    )


#: the channels a synthetic subject can have: its T2* image (main) and a T1-weighted image
CHANNELS = ("T2S", "T1")


def _extra_channels(channels: Sequence[str] | str | None) -> tuple[str, ...]:
    """The extra channels named by the ``channels`` option (``T2S`` first, then ``T1``)."""
    if channels is None:
        return ()
    chans = [channels] if isinstance(channels, str) else [str(c) for c in channels]
    if (
        not chans
        or chans[0] != "T2S"
        or len(set(chans)) != len(chans)
        or any(c not in CHANNELS for c in chans)
    ):
        raise InputError(
            f"synthetic: channels must start with the main T2S and name distinct channels "
            f"from {', '.join(CHANNELS)}, got {chans}"
        )
    return tuple(chans[1:])


@register_dataset(INFO)
def synthetic(
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    preset: str = "default",
    n: int | None = None,
    seed: int = 0,
    protocol: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool | ProgressFn | None = True,
    split_file: str | os.PathLike[str] | None = None,
    lesion_model: LesionModel = "dipole",
    channels: Sequence[str] | str | None = None,
) -> Dataset:
    """The semi-synthetic CMB dataset (see ``docs/datasets-synthetic.md``).

    Subjects of the requested ``split`` (``None`` = all) that are not yet in the cache are
    generated in parallel (``workers`` processes, default all cores) and cached under
    ``cache_dir`` (else ``root``, else ``$CMBBENCH_CACHE``, else the user cache folder).
    ``progress``: a :data:`~cmbbench.progress.ProgressFn`, ``True`` (log at INFO) or ``False``.
    ``protocol`` forces one protocol for every subject; ``n`` overrides the preset size
    (subject ids are the same, so the first ``n`` subjects are shared across sizes).
    ``channels``: ``("T2S", "T1")`` adds each subject's T1-weighted image as the extra
    channel ``T1`` (generated and cached on first request, beside the subject; the T2*
    image and cached subjects are unchanged); ``None`` or ``("T2S",)``: the T2* image only.
    """
    extras = _extra_channels(channels)
    if lesion_model not in ("dipole", "gaussian"):
        raise InputError(f"lesion_model must be 'dipole' or 'gaussian', got {lesion_model!r}")
    specs = _specs(preset, n, seed, protocol, lesion_model)
    if split is not None:
        split_def = _split_def(preset, n, seed, protocol, split_file)
        specs = select(specs, split_def, split)
    base = default_cache_dir(cache_dir if cache_dir is not None else root)
    folder = dataset_folder(base, preset, seed, protocol, lesion_model)
    ensure_generated(folder, specs, workers=workers, progress=_progress_fn(progress), extras=extras)
    cases = [_case(folder, s.subject_id, extras) for s in specs]
    options = {
        "preset": preset,
        "n": len(specs) if split is None else n,
        "seed": seed,
        "protocol": protocol,
        "lesion_model": lesion_model,
        "cache_folder": str(folder),
    }
    if extras:
        options["channels"] = ["T2S", *extras]
    return Dataset(INFO, cases, split=split, options=options)


def export_tree(
    out_dir: str | os.PathLike[str],
    *,
    n: int | None = None,
    preset: str = "default",
    protocol: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    lesion_model: LesionModel = "dipole",
    split: str | None = None,
    channels: Sequence[str] | str | None = None,
) -> Path:
    """Write the dataset as a VALDO-style NIfTI tree under ``out_dir`` and return it.

    ``split`` (``"train"``, ``"val"``, ``"test"``): only that split's subjects, the ones
    ``load_dataset("synthetic", split=...)`` gives with the same options (e.g. the test
    images a method outside cmbbench predicts for ``cmbbench submit``). ``channels``
    (``("T2S", "T1")``) also writes each subject's T1-weighted image
    (``sub-XXXX_space-T2S_desc-masked_T1.nii.gz``, VALDO's naming).

    Per subject: ``sub-XXXX/sub-XXXX_space-T2S_desc-masked_T2S.nii.gz`` (image),
    ``sub-XXXX_space-T2S_CMB.nii.gz`` (binary mask), ``..._desc-instance_CMB.nii.gz``,
    ``..._desc-ignore_mask.nii.gz``, ``..._desc-mimics_dseg.nii.gz`` and a JSON sidecar with
    every CMB's world coordinates, moment, region and the generator version. Top level:
    ``dataset_description.json`` and ``splits.json``. Re-running resumes / reuses.
    """
    out = Path(out_dir)
    all_specs = _specs(preset, n, seed, protocol, lesion_model)
    split_def = _split_def(preset, n, seed, protocol, None)
    specs = all_specs if split is None else select(all_specs, split_def, split)
    extras = _extra_channels(channels)
    ensure_generated(out, specs, workers=workers, progress=progress, extras=extras)
    write_json_atomic(
        out / "dataset_description.json",
        {
            "Name": "cmbbench synthetic CMB dataset",
            "generator": "cmbbench.datasets.synthetic",
            "generator_version": GENERATOR_VERSION,
            "preset": preset,
            "seed": int(seed),
            "n_subjects": len(specs),
            "split": split,
            "protocol": protocol,
            "protocol_mix": get_preset(preset).protocols if protocol is None else {protocol: 1.0},
            "lesion_model": lesion_model,
            "label_policy": (
                f"CMB voxels lose >= {LABEL_LOSS:.0%} signal from that CMB's own attenuation; "
                "CMBs losing < 25% everywhere are 'ignore' (in the ignore mask, not labelled)"
            ),
            "files": {
                "image": "sub-XXXX_space-T2S_desc-masked_T2S.nii.gz (float32)",
                "mask": "sub-XXXX_space-T2S_CMB.nii.gz (uint8 0/1)",
                "instance": "sub-XXXX_space-T2S_desc-instance_CMB.nii.gz (uint16 CMB ids)",
                "ignore": "sub-XXXX_space-T2S_desc-ignore_mask.nii.gz (uint8 0/1)",
                "mimics": "sub-XXXX_space-T2S_desc-mimics_dseg.nii.gz (uint8: 1 vein, 2 calcification, 3 iron focus, 4 air-bone)",
                "sidecar": "sub-XXXX_space-T2S_desc-masked_T2S.json",
            },
        },
    )
    save_split_file(split_def, out / "splits.json", meta={"strata": "protocol|count bin"})
    return out
