"""The ``synthetic`` dataset: registration, splits, cached loading and the NIfTI export."""

from __future__ import annotations

import dataclasses
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
    DATASET_VERSIONS,
    check_without,
    generator_of,
    get_preset,
)
from cmbbench.datasets.synthetic.subjects import (
    SubjectSpec,
    subject_count,
    subject_ids,
    subject_protocol,
)
from cmbbench.datasets.synthetic.unlabelled import with_reasons
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


def _specs(
    preset: str,
    n: int | None,
    seed: int,
    protocol: str | None,
    lesion_model: LesionModel,
    version: str = DATASET_VERSION,
    without: tuple[str, ...] = (),
):
    gen = generator_of(version)
    if without and gen == "1.0":
        raise InputError(f"synthetic v{version} has no generator elements to switch off (without=)")
    p = get_preset(preset, gen)
    if protocol is not None:
        get_protocol(protocol)  # unknown names list the known ones
    n_subjects = p.n if n is None else int(n)
    if n_subjects < 1:
        raise InputError(f"n must be at least 1, got {n}")
    return [
        SubjectSpec(
            sid,
            int(seed),
            protocol or subject_protocol(int(seed), sid, preset, gen),
            preset,
            lesion_model,
            gen,
            without,
        )
        for sid in subject_ids(n_subjects)
    ]


def dataset_folder(
    base: Path,
    preset: str,
    seed: int,
    protocol: str | None,
    lesion_model: str,
    version: str = DATASET_VERSION,
    without: tuple[str, ...] = (),
) -> Path:
    """Folder of one generated dataset under the cache root (one per generator version)."""
    name = f"{preset}_seed{int(seed)}"
    if protocol:
        name += f"_{protocol}"
    if lesion_model != "dipole":
        name += f"_{lesion_model}"
    if without:
        name += "_without-" + "-".join(without)
    return Path(base) / "synthetic" / f"v{generator_of(version)}" / name


def strata(specs) -> list[str]:
    """Stratum label per subject: ``"<protocol>|<count bin>"`` from the planned CMB count."""
    return [
        f"{s.protocol}|{count_bin(subject_count(s.seed, s.subject_id, s.preset, s.version))}"
        for s in specs
    ]


def _stored_split_name(preset: str, version: str = DATASET_VERSION) -> str:
    return f"splits_{preset}_v{version}.json"


def compute_splits(
    preset: str = "default",
    n: int | None = None,
    seed: int = 0,
    protocol: str | None = None,
    version: str = DATASET_VERSION,
) -> SplitDef:
    """The deterministic train/val/test split (stratified by protocol and CMB-count bin).

    Ablations (``without=``) share the full dataset's split: the planned counts and
    protocols they are stratified by come from streams no element touches."""
    specs = _specs(preset, n, seed, protocol, "dipole", version)
    fractions = get_preset(preset, generator_of(version)).fractions
    return make_splits([s.subject_id for s in specs], strata(specs), seed=seed, fractions=fractions)


def stored_splits(preset: str, version: str = DATASET_VERSION) -> SplitDef | None:
    """The frozen split shipped with the package for ``preset`` (seed 0, preset size), if any."""
    ref = resources.files("cmbbench.datasets.synthetic").joinpath(
        _stored_split_name(preset, version)
    )
    if not ref.is_file():
        return None
    with resources.as_file(ref) as path:
        return load_split_file(path)


def write_stored_splits(
    folder: str | os.PathLike[str] | None = None, version_filter: str | None = None
) -> list[Path]:
    """(Maintainers) write the frozen split files of every preset into the package folder."""
    out_dir = Path(folder) if folder else Path(__file__).parent
    paths = []
    for version in DATASET_VERSIONS if version_filter is None else [version_filter]:
        from cmbbench.datasets.synthetic.presets import PRESETS_BY_GENERATOR

        for name in PRESETS_BY_GENERATOR[generator_of(version)]:
            meta = {
                "dataset": "synthetic",
                "version": version,
                "preset": name,
                "seed": 0,
                "strata": "protocol|count bin",
            }
            paths.append(
                save_split_file(
                    compute_splits(name, version=version),
                    out_dir / _stored_split_name(name, version),
                    meta=meta,
                )
            )
    return paths


def _split_def(preset, n, seed, protocol, split_file, version: str = DATASET_VERSION) -> SplitDef:
    if split_file is not None:
        return load_split_file(split_file)
    if n is None and protocol is None and int(seed) == 0:
        frozen = stored_splits(preset, version)
        if frozen is not None:
            return frozen
    return compute_splits(preset, n, seed, protocol, version)


def _progress_fn(progress: bool | ProgressFn | None) -> ProgressFn | None:
    if callable(progress):
        return progress
    if progress:
        return log_progress(log, "synthetic: subjects ready")
    return None


def _meta_from_sidecar(side: dict) -> dict[str, Any]:
    meta = dict(side["meta"])
    meta["lesion_attrs"] = {int(k): v for k, v in meta.get("lesion_attrs", {}).items()}
    if "mimics" in meta:  # why each look-alike is unlabelled (added on load, files unchanged)
        meta["mimics"] = with_reasons(meta["mimics"])
    return meta


def _agreement_arrays(folder: Path, sid: str, extras: tuple[str, ...], weights: dict):
    """The cached subject with its instance label turned into a rater-agreement map
    (float32: each CMB's voxels hold the share of raters who marked it, 1 or 0.5)."""
    data = load_subject_arrays(folder, sid, extras)
    lut = np.zeros(int(data.label.max()) + 1, dtype=np.float32)
    for lid, w in weights.items():
        if int(lid) < len(lut):
            lut[int(lid)] = w
    return dataclasses.replace(data, label=lut[data.label])


def _case(folder: Path, sid: str, extras: tuple[str, ...] = (), labels: str = "instance") -> Case:
    side = read_sidecar(folder, sid)
    if side is None:
        raise InputError(
            "generated subject has no readable sidecar", case=sid, path=str(folder / sid)
        )
    meta = _meta_from_sidecar(side)
    loader = functools.partial(load_subject_arrays, folder, sid, extras)
    if labels == "agreement":
        weights = {k: float(v.get("agreement", 1.0)) for k, v in meta["lesion_attrs"].items()}
        loader = functools.partial(_agreement_arrays, folder, sid, extras, weights)
    return Case(
        case_id=sid,
        affine=np.asarray(side["affine"], dtype=np.float64),
        shape=tuple(int(s) for s in side["shape"]),  # type: ignore[arg-type]
        label_kind="agreement" if labels == "agreement" else "instance",
        loader=loader,
        meta=meta,
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
    version: str = DATASET_VERSION,
    without: Sequence[str] | str | None = None,
    labels: str = "instance",
) -> Dataset:
    """The semi-synthetic CMB dataset (see ``docs/datasets-synthetic.md``).

    ``labels``: ``"instance"`` (one id per CMB) or ``"agreement"`` (version 2: each CMB's
    voxels hold the share of two simulated raters who marked it, 1 or 0.5, VALDO-style; the
    ``valdo`` rule then weights F1 by it).

    ``version``: the dataset version (``"2.0"``, the default; ``"1.1"`` for the records made
    on it: its own presets, splits and generator). ``without``: generator-2 elements to
    switch off (an ablation, e.g. ``"veins,motion"``; see
    :data:`~cmbbench.datasets.synthetic.presets.ELEMENTS`), cached in a folder of its own.

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
    version = str(version)
    off = check_without(without)
    if labels not in ("instance", "agreement"):
        raise InputError(f"labels must be 'instance' or 'agreement', got {labels!r}")
    if labels == "agreement" and (generator_of(version) == "1.0" or "raters" in off):
        raise InputError(
            f"labels='agreement' needs the simulated raters (dataset version 2, without "
            f"'raters' kept on); got version {version!r}, without={list(off)}"
        )
    specs = _specs(preset, n, seed, protocol, lesion_model, version, off)
    if split is not None:
        split_def = _split_def(preset, n, seed, protocol, split_file, version)
        specs = select(specs, split_def, split)
    base = default_cache_dir(cache_dir if cache_dir is not None else root)
    folder = dataset_folder(base, preset, seed, protocol, lesion_model, version, off)
    ensure_generated(folder, specs, workers=workers, progress=_progress_fn(progress), extras=extras)
    cases = [_case(folder, s.subject_id, extras, labels) for s in specs]
    options = {
        "preset": preset,
        "n": len(specs) if split is None else n,
        "seed": seed,
        "protocol": protocol,
        "lesion_model": lesion_model,
        "cache_folder": str(folder),
        "version": version,
    }
    if off:
        options["without"] = list(off)
    if extras:
        options["channels"] = ["T2S", *extras]
    info = INFO if version == INFO.version else dataclasses.replace(INFO, version=version)
    if labels == "agreement":
        options["labels"] = labels
        info = dataclasses.replace(info, label_kind="agreement")
    return Dataset(info, cases, split=split, options=options)


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
    version: str = DATASET_VERSION,
    without: Sequence[str] | str | None = None,
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
    version = str(version)
    off = check_without(without)
    all_specs = _specs(preset, n, seed, protocol, lesion_model, version, off)
    split_def = _split_def(preset, n, seed, protocol, None, version)
    specs = all_specs if split is None else select(all_specs, split_def, split)
    extras = _extra_channels(channels)
    ensure_generated(out, specs, workers=workers, progress=progress, extras=extras)
    write_json_atomic(
        out / "dataset_description.json",
        {
            "Name": "cmbbench synthetic CMB dataset",
            "generator": "cmbbench.datasets.synthetic",
            "version": version,
            "generator_version": generator_of(version),
            "without": list(off),
            "preset": preset,
            "seed": int(seed),
            "n_subjects": len(specs),
            "split": split,
            "protocol": protocol,
            "protocol_mix": get_preset(preset, generator_of(version)).protocols
            if protocol is None
            else {protocol: 1.0},
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
                "mimics": (
                    "sub-XXXX_space-T2S_desc-mimics_dseg.nii.gz (uint8: 1 vein, 2 calcification, "
                    "3 iron focus, 4 air-bone; version 2: 5 flow void, 6 siderosis, "
                    "7 macro-haemorrhage, 8 cavernoma, 9 lacune)"
                ),
                "sidecar": "sub-XXXX_space-T2S_desc-masked_T2S.json",
            },
        },
    )
    save_split_file(split_def, out / "splits.json", meta={"strata": "protocol|count bin"})
    return out
