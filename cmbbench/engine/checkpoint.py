"""Checkpoints: atomic save with a sha256 sidecar; load with ``torch.load(weights_only=True)``.

A checkpoint ``ckpt.pt`` is a torch-serialised dict of tensors and plain Python values
(model / optimizer / grad-scaler state dicts, step, best metric, RNG state). Next to it,
``ckpt.pt.sha256`` holds the payload's sha256 and byte size. Loading verifies both before
unpickling anything, so a truncated or corrupted file is reported by name instead of
crashing deep inside torch; ``weights_only=True`` never executes arbitrary pickled code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from cmbbench.errors import CmbbenchError

SIDECAR_SUFFIX = ".sha256"


class CheckpointError(CmbbenchError):
    """A checkpoint that cannot be written or read (names the file)."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``run/ckpt.pt -> run/ckpt.pt.sha256``."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename.

    Raises :class:`CheckpointError` for a full disk or an unwritable folder.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(_describe_os_error(err, path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CheckpointError(_describe_os_error(err, path)) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _describe_os_error(err: OSError, path: Path) -> str:
    if err.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk is full"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: the folder is read-only or not writable ({err.strerror})"
    return f"cannot write {path}: {err.strerror or err}"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Save ``state`` (tensors, state dicts, plain Python values) atomically; returns the path.

    The sidecar is written after the payload, so a crash between the two leaves a payload
    whose sidecar does not match: :func:`load_checkpoint` reports it instead of using it.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(path, data)
    meta = json.dumps({"sha256": digest, "bytes": len(data), "file": path.name}, sort_keys=True)
    write_bytes_atomic(sidecar_path(path), (meta + "\n").encode())
    return path


def verify_checkpoint(path: str | os.PathLike[str]) -> bytes:
    """Return the payload bytes after checking size and sha256 against the sidecar."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no checksum file {side.name}; it may be incomplete"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        expected, size = str(meta["sha256"]), int(meta["bytes"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checksum file {side} is corrupted ({err})") from None
    data = path.read_bytes()
    if len(data) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted: expected {size} bytes, found {len(data)}"
        )
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupted: sha256 does not match {side.name}")
    return data


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
