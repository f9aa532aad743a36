"""The plain layout: ``images/`` and ``labels/`` with matching file names.

::

    ROOT/images/<case>.nii.gz     (an nnU-Net channel suffix ``<case>_0000.nii.gz`` is tolerated)
    ROOT/labels/<case>.nii.gz     binary 0/1 mask, or an instance map with ``instance_labels=True``

The case id is the file name without ``.nii``/``.nii.gz`` (and without ``_0000`` on images).
Cases without a ``cohort`` get ``meta["cohort"] = "-"`` for split stratification, which then
uses only the CMB-count bin.
"""

from __future__ import annotations

import os
from typing import Any

from cmbbench.datasets.common import (
    check_unique_ids,
    find_nifti,
    finish,
    image_case_id,
    nifti_case,
    nifti_files,
    reject_options,
    require_root,
)
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.errors import InputError

INFO = DatasetInfo(
    name="folder",
    description="Any NIfTI folder pair: images/<case>.nii.gz with labels/<case>.nii.gz",
    version="1",
    default_rule="overlap",
    rule_params={"min_overlap_voxels": 1},
    label_kind="mask",
    needs_root=True,
    expected_input_format=(
        "ROOT/images/<case>.nii.gz (or <case>_0000.nii.gz) and ROOT/labels/<case>.nii.gz "
        "(binary 0/1, or instance ids with instance_labels=True)"
    ),
)


@register_dataset(INFO)
def load_folder(
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    instance_labels: bool = False,
    **options: Any,
) -> Dataset:
    """Load ``ROOT/images`` + ``ROOT/labels``; every image needs its label file."""
    reject_options(INFO, options, ["instance_labels", "split_file", "seed"])
    base = require_root(INFO, root)
    images = nifti_files(base / "images")
    if not images:
        raise InputError(
            f"no NIfTI images found in images/; expected layout: {INFO.expected_input_format}",
            path=str(base / "images"),
        )
    ids = [(image_case_id(p.name), p) for p in images]
    check_unique_ids(ids)
    cases = []
    for cid, img in ids:
        label = find_nifti(base / "labels", cid)
        if label is None:
            raise InputError(
                "missing label file", case=cid, path=str(base / "labels" / f"{cid}.nii.gz")
            )
        cases.append(
            nifti_case(
                cid,
                img,
                label,
                label_kind="instance" if instance_labels else "mask",
                meta={"cohort": "-"},
            )
        )
    return finish(
        INFO,
        cases,
        split=split,
        split_file=split_file,
        seed=seed,
        options={"root": str(base), "instance_labels": bool(instance_labels)},
    )
