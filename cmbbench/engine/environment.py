"""The machine a run ran on: device choice, OpenMP policy, and the environment it records.

:func:`resolve_device` turns ``"auto"``/``"cpu"``/``"cuda"`` into a torch device;
:func:`configure_openmp` sets the OpenMP wait policy before torch is first imported (every
entry point that trains or predicts calls it, the Python API included); :func:`environment`
is the ``environment`` block of a run record (cmbbench version and git revision, Python,
torch, CUDA, device name, CPU count). Torch is imported inside the functions.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Literal

from cmbbench import __version__
from cmbbench.errors import CmbbenchError

DeviceName = Literal["auto", "cpu", "cuda"]


def peak_memory_bytes(device: Any) -> int:
    """CUDA (``device.type == "cuda"``): torch's ``max_memory_allocated``; otherwise the
    process's peak resident set size (bytes; child processes not included)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_kind(device: Any) -> str:
    """What :func:`peak_memory_bytes` measures on ``device`` (the run record's name for it)."""
    return "cuda_max_allocated" if getattr(device, "type", str(device)) == "cuda" else "cpu_max_rss"


def configure_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (effective before torch is imported).

    A robustness choice, measured on 2 cores (unet3d, quick recipe, s/step): on an idle
    machine sleeping threads cost ~20 % (0.207 against libgomp's default spinning 0.171);
    with one other busy process they are the faster by far (0.62 against 1.02 with spinning
    limited to 100 000 rounds; earlier sessions saw up to ~10× with unlimited spinning). A
    value set by the user wins (``OMP_WAIT_POLICY=ACTIVE`` on a machine that is all yours).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prime_vector_math() -> None:
    """Put the process's CPU ``expm1``/``log1p`` kernels on their fast path (values unchanged).

    Measured with torch 2.14.1 (CPU build with MKL and Sleef, AVX-512, 2 cores): until one
    ``torch.expm1`` of a process has been given ``-0.0``, every ``expm1`` and ``log1p`` there
    runs 5-15× slower (``expm1`` of 10 M float32 values 112-127 ms of CPU against 8 ms,
    ``log1p`` 106 against 5 ms), and with it ELU, which computes ``expm1``: ELU took half of a
    ``unet3d`` whole-volume forward (152×184×48 voxels, bfloat16 autocast: 4.8 s of CPU
    against 2.5 s after priming). The state is process-wide (priming in one thread speeds up
    every thread) and the results are bitwise the same either way (checked on ``expm1`` of
    40 M values and on the whole network's output); why the slow path is taken was not
    established (no hardware counters on the machine it was measured on). A one-element
    ``expm1(-0.0)`` costs microseconds, so inference and training call this on every entry
    (no flag is kept: whatever the state is, one more call leaves it primed).
    """
    import torch

    torch.expm1(torch.full((1,), -0.0, dtype=torch.float32))


def resolve_device(device: DeviceName | str) -> Any:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" or str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise CmbbenchError(
                "--device cuda was requested but no CUDA GPU is available to torch "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use --device cpu or --device auto"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise CmbbenchError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'")


def git_revision() -> str | None:
    """The git commit of the cmbbench source tree (``-dirty`` when modified), if a checkout."""
    src = Path(__file__).resolve().parents[2]
    if not (src / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def environment(device: Any, world_size: int = 1) -> dict[str, Any]:
    """cmbbench version and git revision, Python, torch, CUDA, device name, CPU count."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "cmbbench_version": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
    }
