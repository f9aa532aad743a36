"""On-disk cache of generated subjects: a VALDO-style NIfTI tree plus a JSON sidecar each.

Layout of one dataset folder (the cache folder and ``export_tree`` output are the same)::

    DIR/sub-0001/sub-0001_space-T2S_desc-masked_T2S.nii.gz   image, float32
    DIR/sub-0001/sub-0001_space-T2S_CMB.nii.gz               binary CMB mask, uint8 (VALDO-style)
    DIR/sub-0001/sub-0001_space-T2S_desc-instance_CMB.nii.gz instance map, uint16 (one id per CMB)
    DIR/sub-0001/sub-0001_space-T2S_desc-ignore_mask.nii.gz  "ignore" CMBs, uint8 0/1
    DIR/sub-0001/sub-0001_space-T2S_desc-mimics_dseg.nii.gz  mimics, uint8 (1 vein, 2 calcification,
                                                             3 iron focus, 4 air-bone drop-out)
    DIR/sub-0001/sub-0001_space-T2S_desc-masked_T2S.json     sidecar: meta + fingerprint

Every file is written atomically (temp file + rename) and the sidecar last, so a subject is
complete exactly when its sidecar exists and its fingerprint (generator version + every
parameter) matches; anything else is regenerated. An interrupted run thus leaves no
half-written case behind and resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from cmbbench.cases import CaseData
from cmbbench.errors import InputError
from cmbbench.io import load_nifti, save_nifti, write_json_atomic
from cmbbench.progress import PhaseTracker, ProgressFn

log = logging.getLogger(__name__)

SUFFIXES = {
    "image": "_space-T2S_desc-masked_T2S.nii.gz",
    "mask": "_space-T2S_CMB.nii.gz",
    "instance": "_space-T2S_desc-instance_CMB.nii.gz",
    "ignore": "_space-T2S_desc-ignore_mask.nii.gz",
    "mimics": "_space-T2S_desc-mimics_dseg.nii.gz",
}
SIDECAR_SUFFIX = "_space-T2S_desc-masked_T2S.json"


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache root: ``cache_dir`` if given, else ``$CMBBENCH_CACHE``, else the user cache folder
    (``$XDG_CACHE_HOME/cmbbench`` or ``~/.cache/cmbbench``; ``~/Library/Caches/cmbbench`` on
    macOS; ``%LOCALAPPDATA%/cmbbench/Cache`` on Windows)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CMBBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "cmbbench"
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "cmbbench" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cmbbench"


def subject_paths(folder: Path, subject_id: str) -> dict[str, Path]:
    """Paths of a subject's files (keys of :data:`SUFFIXES` plus ``"sidecar"``)."""
    d = Path(folder) / subject_id
    out = {k: d / f"{subject_id}{s}" for k, s in SUFFIXES.items()}
    out["sidecar"] = d / f"{subject_id}{SIDECAR_SUFFIX}"
    return out


def read_sidecar(folder: Path, subject_id: str) -> dict | None:
    """The sidecar of a subject, or ``None`` when it is missing or unreadable."""
    path = subject_paths(folder, subject_id)["sidecar"]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(folder: Path, subject_id: str, fingerprint: dict) -> bool:
    """True when the subject's files exist and its sidecar carries ``fingerprint``."""
    side = read_sidecar(folder, subject_id)
    if side is None or side.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        return False
    return all(p.is_file() for p in subject_paths(folder, subject_id).values())


def _remove_stale_temps(d: Path) -> None:
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".") and p.is_file():  # temp files of an interrupted write
                p.unlink()


def write_subject(folder: Path, subject) -> Path:
    """Write a generated :class:`~.generator.Subject` (files first, sidecar last). Returns its folder."""
    sid = subject.spec.subject_id
    paths = subject_paths(folder, sid)
    d = paths["sidecar"].parent
    d.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(d)
    paths["sidecar"].unlink(missing_ok=True)  # the case is incomplete until the sidecar is back
    aff = subject.grid.affine
    save_nifti(paths["image"], subject.image.astype(np.float32), aff)
    save_nifti(paths["mask"], (subject.label > 0).astype(np.uint8), aff)
    save_nifti(paths["instance"], subject.label.astype(np.uint16), aff)
    save_nifti(paths["ignore"], subject.ignore.astype(np.uint8), aff)
    save_nifti(paths["mimics"], subject.mimics.astype(np.uint8), aff)
    for key in SUFFIXES:  # temp files are created 0600; exported trees are for everyone
        _make_readable(paths[key])
    write_json_atomic(
        paths["sidecar"],
        {
            "fingerprint": subject.spec.fingerprint(),
            "shape": list(subject.grid.shape),
            "affine": np.asarray(aff).tolist(),
            "meta": subject.meta,
        },
    )
    _make_readable(paths["sidecar"])
    return d


def _make_readable(path: Path) -> None:
    os.chmod(path, 0o644)  # rw-r--r--, like a file written with the usual umask 022


def load_subject_arrays(folder: Path, subject_id: str) -> CaseData:
    """Read a cached subject: image float32, instance label uint16, ignore bool."""
    paths = subject_paths(folder, subject_id)
    image, _, _ = load_nifti(paths["image"], case=subject_id)
    label, _, _ = load_nifti(paths["instance"], case=subject_id)
    ignore, _, _ = load_nifti(paths["ignore"], case=subject_id)
    if image.shape != label.shape or image.shape != ignore.shape:
        raise InputError(
            f"cached arrays disagree in shape: image {image.shape}, label {label.shape}, "
            f"ignore {ignore.shape}; delete the folder to regenerate",
            case=subject_id,
            path=str(paths["image"].parent),
        )
    return CaseData(
        image=np.asarray(image, dtype=np.float32),
        label=np.asarray(label, dtype=np.uint16),
        ignore=np.asarray(ignore, dtype=bool),
    )


def load_mimic_map(folder: Path, subject_id: str) -> np.ndarray:
    """The uint8 mimic map of a cached subject (codes in :data:`.generator.MIMIC_CODES`)."""
    arr, _, _ = load_nifti(subject_paths(folder, subject_id)["mimics"], case=subject_id)
    return np.asarray(arr, dtype=np.uint8)


def _generate_and_write(folder: str, spec) -> str:
    from cmbbench.datasets.synthetic.generator import generate_subject

    write_subject(Path(folder), generate_subject(spec))
    return spec.subject_id


def ensure_generated(
    folder: Path,
    specs: Sequence,
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Generate (in parallel, ``workers`` processes; default all cores) every subject of
    ``specs`` whose cached copy in ``folder`` is missing or stale, reporting a ``"data"``
    phase to ``progress`` (subjects ready of all). Returns the ids generated."""
    folder = Path(folder)
    total = len(specs)
    missing = [s for s in specs if not is_complete(folder, s.subject_id, s.fingerprint())]
    done = total - len(missing)
    tracker = PhaseTracker(progress, "data", total, "generating synthetic data", offset=done)
    if not missing:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    n_workers = min(int(workers or os.cpu_count() or 1), len(missing))
    log.info(
        "generating %d synthetic subject(s) in %s with %d worker(s)",
        len(missing),
        folder,
        n_workers,
    )
    made: list[str] = []
    if n_workers <= 1:
        for spec in missing:
            made.append(_generate_and_write(str(folder), spec))
            done += 1
            tracker.emit(done)
        return made
    # Linux: fork (workers inherit the loaded templates, and a user script without an
    # ``if __name__ == "__main__"`` guard still works); elsewhere the platform's safe spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "fork":  # load the templates once; the workers share them copy-on-write
        from cmbbench.datasets.synthetic.anatomy import load_anatomy

        load_anatomy()
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        futures = [pool.submit(_generate_and_write, str(folder), s) for s in missing]
        for fut in as_completed(futures):
            made.append(fut.result())
            done += 1
            tracker.emit(done)
    return sorted(made)
