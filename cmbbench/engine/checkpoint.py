"""Checkpoints: atomic save with a sha256 sidecar; load with ``torch.load(weights_only=True)``.

A checkpoint ``ckpt.pt`` is a torch-serialised dict of tensors and plain Python values
(model / optimizer / grad-scaler state dicts, step, best metric, RNG state). Next to it,
``ckpt.pt.sha256`` holds the payload's sha256 and byte size. Loading verifies both before
unpickling anything, so a truncated or corrupted file is reported by name instead of
crashing deep inside torch; ``weights_only=True`` never executes arbitrary pickled code.

Payload and sidecar change together. A save is up to three atomic writes (temp file,
fsync, rename, fsync of the folder), each leaving a pair that verifies:

1. the sidecar gets the new digest and, under ``"previous"``, the digest of the good
   checkpoint still on disk (if any);
2. the payload is replaced;
3. the sidecar drops ``"previous"`` (only when 1 wrote one).

A process killed after 1 leaves the previous checkpoint, which still verifies against
``"previous"`` (loaded with a warning naming the file: the newer one was never written), or,
on a first save, no payload at all (nothing to resume from); one killed after 2 leaves the
new checkpoint, which verifies against the new digest. Only a truncated or corrupted payload
matching neither digest is refused.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmbbench.errors import CmbbenchError
from cmbbench.io import write_atomic

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"

#: Test seam, ``None`` outside tests: called as ``hook(stage, path)`` in the middle of
#: :func:`save_checkpoint`, with ``stage`` ``"intent"`` (after step 1 above) and
#: ``"payload"`` (after step 2), so a test can kill the process at either point.
_save_hook: Callable[[str, Path], None] | None = None


class CheckpointError(CmbbenchError):
    """A checkpoint that cannot be written or read (names the file)."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``run/ckpt.pt -> run/ckpt.pt.sha256``."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, the folder fsynced after the rename so successive
    writes reach the disk in order (:func:`cmbbench.io.write_atomic`). Raises
    :class:`CheckpointError` for a full disk or an unwritable folder."""
    try:
        write_atomic(path, data, sync_folder=True)
    except OSError as err:
        raise CheckpointError(_describe_os_error(err, path)) from None


def _describe_os_error(err: OSError, path: Path) -> str:
    if err.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk is full"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: the folder is read-only or not writable ({err.strerror})"
    return f"cannot write {path}: {err.strerror or err}"


def _entry(meta: Any) -> tuple[str, int]:
    """``(sha256, bytes)`` of a sidecar entry; raises ValueError/KeyError/TypeError."""
    return str(meta["sha256"]), int(meta["bytes"])


def _digest(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def _read_sidecar(side: Path) -> dict[str, Any]:
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        _entry(meta)
        if "previous" in meta:
            _entry(meta["previous"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checksum file {side} is corrupted ({err})") from None
    return meta


def _entry_on_disk(path: Path) -> tuple[str, int] | None:
    """The digest of the good checkpoint now at ``path`` (``None``: nothing good to keep).

    A sidecar without ``"previous"`` was written after its payload and is trusted as is; one
    with it (an interrupted save) is resolved by hashing the payload.
    """
    side = sidecar_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        meta = _read_sidecar(side)
    except CheckpointError:
        return None
    if "previous" not in meta:
        return _entry(meta)
    try:
        found = _digest(path.read_bytes())
    except OSError:
        return None
    candidates = (_entry(meta), _entry(meta["previous"]))
    return found if found in candidates else None


def _sidecar_bytes(path: Path, digest: tuple[str, int], previous: tuple[str, int] | None) -> bytes:
    meta: dict[str, Any] = {"sha256": digest[0], "bytes": digest[1], "file": path.name}
    if previous is not None:
        meta["previous"] = {"sha256": previous[0], "bytes": previous[1]}
    return (json.dumps(meta, sort_keys=True) + "\n").encode()


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Save ``state`` (tensors, state dicts, plain Python values) atomically; returns the path.

    Payload and sidecar change together: a process killed at any point leaves either the
    previous or the new checkpoint, and :func:`load_checkpoint` loads it (module docstring).
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = _digest(data)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed save
        stale.unlink(missing_ok=True)
    previous = _entry_on_disk(path)
    if previous == digest:
        previous = None
    side = sidecar_path(path)
    write_bytes_atomic(side, _sidecar_bytes(path, digest, previous))
    if _save_hook is not None:
        _save_hook("intent", path)
    write_bytes_atomic(path, data)
    if _save_hook is not None:
        _save_hook("payload", path)
    if previous is not None:
        write_bytes_atomic(side, _sidecar_bytes(path, digest, None))
    return path


def verify_checkpoint(path: str | os.PathLike[str]) -> bytes:
    """Return the payload bytes after checking size and sha256 against the sidecar.

    A payload matching the sidecar's ``"previous"`` digest (a save killed before it replaced
    the payload) is accepted with a warning naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no checksum file {side.name}; it may be incomplete"
        )
    meta = _read_sidecar(side)
    expected, size = _entry(meta)
    data = path.read_bytes()
    found = _digest(data)
    if found == (expected, size):
        return data
    if "previous" in meta and found == _entry(meta["previous"]):
        logger.warning(
            "checkpoint %s: a save was interrupted before it replaced this file; "
            "using the previous checkpoint it still holds",
            path,
        )
        return data
    if len(data) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted: expected {size} bytes, found {len(data)}"
        )
    raise CheckpointError(f"checkpoint {path} is corrupted: sha256 does not match {side.name}")


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    data = verify_checkpoint(path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    return state
