"""nnU-Net v2 raw folders: reading (score nnU-Net data) and writing (train nnU-Net on cmbbench data).

::

    ROOT/dataset.json                      {"channel_names": {"0": "T2S", ...},
                                            "labels": {"background": 0, "CMB": 1},
                                            "numTraining": N, "file_ending": ".nii.gz"}
    ROOT/imagesTr/<case>_0000.nii.gz       channel 0 (main); _0001... are extra channels
    ROOT/labelsTr/<case>.nii.gz
    ROOT/imagesTs/<case>_0000.nii.gz       optional (option subset="test")
    ROOT/labelsTs/<case>.nii.gz            optional; without it the test cases are unlabelled

The CMB class is the only non-background label, or the one named by option ``cmb_label``
(default: a label named like "cmb"/"microbleed" when there are several). Label files may hold
only the values declared in ``dataset.json``; the case's mask is ``label == <CMB value>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench.cases import Case, CaseData
from cmbbench.datasets.common import (
    as_extra,
    as_image,
    check_same_grid,
    check_unique_ids,
    finish,
    read_header,
    reject_options,
    require_root,
)
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.errors import InputError
from cmbbench.io import load_nifti, save_nifti
from cmbbench.progress import PhaseTracker, ProgressFn

INFO = DatasetInfo(
    name="nnunet",
    description="An nnU-Net v2 raw dataset folder (dataset.json, imagesTr/labelsTr[, imagesTs/labelsTs])",
    version="1",
    default_rule="overlap",
    rule_params={"min_overlap_voxels": 1},
    label_kind="mask",
    needs_root=True,
    expected_input_format=(
        "ROOT/dataset.json, ROOT/imagesTr/<case>_0000.nii.gz, ROOT/labelsTr/<case>.nii.gz "
        "(nnU-Net v2 raw folder, e.g. Dataset501_CMB)"
    ),
)

_SUPPORTED_ENDINGS = (".nii.gz", ".nii")


def _read_dataset_json(base: Path) -> dict[str, Any]:
    p = base / "dataset.json"
    if not p.is_file():
        raise InputError(
            f"missing dataset.json (expected layout: {INFO.expected_input_format})", path=str(p)
        )
    try:
        spec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"unreadable dataset.json ({err})", path=str(p)) from None
    if not isinstance(spec, dict):
        raise InputError("dataset.json must be a JSON object", path=str(p))
    for key in ("channel_names", "labels", "file_ending"):
        if key not in spec:
            raise InputError(f"dataset.json lacks the required key {key!r}", path=str(p))
    if spec["file_ending"] not in _SUPPORTED_ENDINGS:
        raise InputError(
            f"file_ending {spec['file_ending']!r} is not supported (expected one of "
            f"{', '.join(_SUPPORTED_ENDINGS)})",
            path=str(p),
        )
    return spec


def _channels(spec: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    try:
        chans = sorted((int(k), str(v)) for k, v in spec["channel_names"].items())
    except (AttributeError, TypeError, ValueError):
        raise InputError(
            'channel_names must map channel indices to names, e.g. {"0": "T2S"}', path=str(path)
        ) from None
    if not chans or [i for i, _ in chans] != list(range(len(chans))):
        raise InputError(
            f"channel_names must number channels 0..N-1, got {spec['channel_names']}",
            path=str(path),
        )
    return chans


def _cmb_value(spec: dict[str, Any], cmb_label: str | None, path: Path) -> tuple[int, set[int]]:
    labels = spec["labels"]
    if not isinstance(labels, dict) or any(
        not isinstance(v, int) or isinstance(v, bool) for v in labels.values()
    ):
        raise InputError(
            f"labels must map names to integer values (region-based labels are not supported), got {labels}",
            path=str(path),
        )
    allowed = set(labels.values())
    fg = {k: v for k, v in labels.items() if v != 0 and k != "ignore"}
    if cmb_label is not None:
        if cmb_label not in fg:
            raise InputError(
                f"cmb_label {cmb_label!r} is not a foreground label; labels: {sorted(fg)}",
                path=str(path),
            )
        return fg[cmb_label], allowed
    if len(fg) == 1:
        return next(iter(fg.values())), allowed
    named = [k for k in fg if re.search(r"cmb|microbleed|bleed", k, re.IGNORECASE)]
    if len(named) == 1:
        return fg[named[0]], allowed
    raise InputError(
        f"cannot tell which label is the CMB class among {sorted(fg)}; pass option cmb_label=NAME",
        path=str(path),
    )


def _nnunet_case(
    cid: str,
    image_paths: list[Path],
    channel_names: list[str],
    label_path: Path | None,
    cmb_value: int,
    allowed: set[int],
) -> Case:
    """A lazy case whose ``label_loader`` reads the label file alone."""
    shape, affine = read_header(image_paths[0], case=cid)
    for p, name in zip(image_paths[1:], channel_names[1:], strict=True):
        check_same_grid(
            (shape, affine), read_header(p, case=cid), case=cid, path=p, what=f"channel {name}"
        )
    if label_path is not None:
        check_same_grid(
            (shape, affine), read_header(label_path, case=cid), case=cid, path=label_path
        )

    def read_label() -> np.ndarray:
        assert label_path is not None
        raw = np.asarray(load_nifti(label_path, case=cid)[0])
        bad = ~np.isin(raw, sorted(allowed))
        if bad.any():
            vals = np.unique(raw[bad])[:5].tolist()
            raise InputError(
                f"label holds values {vals} not declared in dataset.json labels {sorted(allowed)}",
                case=cid,
                path=str(label_path),
            )
        return (raw == cmb_value).astype(np.uint8)

    def load() -> CaseData:
        image = as_image(load_nifti(image_paths[0], case=cid)[0], case=cid, path=image_paths[0])
        extra = {
            name: as_extra(load_nifti(p, case=cid)[0], case=cid, path=p, name=name)
            for p, name in zip(image_paths[1:], channel_names[1:], strict=True)
        }
        label = read_label() if label_path is not None else None
        return CaseData(image=image, label=label, extra=extra)

    meta: dict[str, Any] = {"cohort": "-", "image_path": str(image_paths[0])}
    if label_path is not None:
        meta["label_path"] = str(label_path)
    case = Case(
        case_id=cid,
        affine=affine,
        shape=shape,
        label_kind="mask" if label_path is not None else "none",
        loader=load,
        meta=meta,
        label_loader=read_label if label_path is not None else None,
    )
    return case


@register_dataset(INFO)
def load_nnunet(
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    subset: Literal["train", "test"] = "train",
    cmb_label: str | None = None,
    **options: Any,
) -> Dataset:
    """Load an nnU-Net v2 raw folder: ``subset="train"`` (imagesTr/labelsTr) or ``"test"`` (imagesTs[/labelsTs])."""
    reject_options(INFO, options, ["subset", "cmb_label", "split_file", "seed"])
    base = require_root(INFO, root)
    spec = _read_dataset_json(base)
    djson = base / "dataset.json"
    chans = _channels(spec, djson)
    cmb_value, allowed = _cmb_value(spec, cmb_label, djson)
    ending = spec["file_ending"]
    if subset not in ("train", "test"):
        raise InputError(f"nnunet: subset must be 'train' or 'test', got {subset!r}")
    img_dir, lab_dir = (
        (base / "imagesTr", base / "labelsTr")
        if subset == "train"
        else (
            base / "imagesTs",
            base / "labelsTs",
        )
    )
    main_files = sorted(p for p in img_dir.glob(f"*_0000{ending}") if not p.name.startswith("."))
    if not main_files:
        raise InputError(
            f"no images matching <case>_0000{ending} (expected layout: {INFO.expected_input_format})",
            path=str(img_dir),
        )
    ids = [(p.name[: -len(f"_0000{ending}")], p) for p in main_files]
    check_unique_ids(ids)
    labelled = subset == "train" or lab_dir.is_dir()
    cases = []
    for cid, main in ids:
        paths = [main] + [img_dir / f"{cid}_{i:04d}{ending}" for i, _ in chans[1:]]
        for p in paths[1:]:
            if not p.is_file():
                raise InputError("missing channel file", case=cid, path=str(p))
        label = lab_dir / f"{cid}{ending}" if labelled else None
        if label is not None and not label.is_file():
            raise InputError("missing label file", case=cid, path=str(label))
        case = _nnunet_case(cid, paths, [n for _, n in chans], label, cmb_value, allowed)
        cases.append(case)
    return finish(
        INFO,
        cases,
        split=split,
        split_file=split_file,
        seed=seed,
        options={"root": str(base), "subset": subset, "cmb_label": cmb_label},
    )


def export_nnunet(
    dataset: Sequence[Case],
    out_dir: str | os.PathLike[str],
    *,
    dataset_id: int,
    name: str,
    channel_name: str = "T2S",
    extra_channels: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> Path:
    """Write ``dataset`` as the nnU-Net v2 raw folder ``out_dir/Dataset{ID:03d}_{name}``; returns it.

    Labelled cases go to ``imagesTr``/``labelsTr`` (labels: uint8, 0 background / 1 CMB; an
    instance map is binarised), unlabelled cases to ``imagesTs``. Images keep their affine
    and voxel order (float32). ``extra_channels`` names ``CaseData.extra`` channels written
    as ``_0001``, ``_0002``... ``progress`` receives an ``"export"`` phase. Cases
    labelled only by points cannot be written (nnU-Net needs masks). Files are written
    atomically, ``dataset.json`` last.
    """
    if not (0 <= int(dataset_id) <= 999):
        raise InputError(f"nnU-Net dataset id must be 0..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise InputError(f"nnU-Net dataset name must be letters, digits, _ or -, got {name!r}")
    out = Path(out_dir) / f"Dataset{int(dataset_id):03d}_{name}"
    check_unique_ids((c.case_id, out) for c in dataset)
    n_train = 0
    total = len(dataset)
    tracker = PhaseTracker(progress, "export", total, "exporting to nnU-Net")
    for i, case in enumerate(dataset):
        if case.label_kind == "points":
            raise InputError(
                "labelled by centre points only; nnU-Net needs voxel masks", case=case.case_id
            )
        was_loaded = case._data is not None
        data = case.load()
        labelled = data.label is not None
        img_dir = out / ("imagesTr" if labelled else "imagesTs")
        save_nifti(
            img_dir / f"{case.case_id}_0000.nii.gz", data.image.astype(np.float32), case.affine
        )
        for k, ch in enumerate(extra_channels, start=1):
            if ch not in data.extra:
                raise InputError(
                    f"extra channel {ch!r} not available (has: {sorted(data.extra) or 'none'})",
                    case=case.case_id,
                )
            save_nifti(
                img_dir / f"{case.case_id}_{k:04d}.nii.gz",
                data.extra[ch].astype(np.float32),
                case.affine,
            )
        if labelled:
            save_nifti(
                out / "labelsTr" / f"{case.case_id}.nii.gz",
                (np.asarray(data.label) > 0).astype(np.uint8),
                case.affine,
            )
            n_train += 1
        if not was_loaded:
            case.release()
        tracker.emit(i + 1)
    spec = {
        "channel_names": {str(k): ch for k, ch in enumerate([channel_name, *extra_channels])},
        "labels": {"background": 0, "CMB": 1},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "exported by cmbbench",
    }
    from cmbbench.io import write_json_atomic

    write_json_atomic(out / "dataset.json", spec)
    return out
