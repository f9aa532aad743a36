"""Synthetic volumes shared by the engine benchmarks (not collected: no test functions)."""

from __future__ import annotations

import numpy as np

from cmbbench.cases import Case, CaseData

SHAPE = (160, 200, 56)


def bench_volume(seed: int, shape: tuple[int, int, int] = SHAPE) -> Case:
    """A brain-sized noisy volume with 6 dark 3×3×1 'CMBs' (instance labels 1..6)."""
    rng = np.random.default_rng(seed)
    img = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint16)
    for k in range(6):
        c = rng.integers(10, np.asarray(shape) - 10)
        lab[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2]] = k + 1
    img[lab > 0] = 0.3
    return Case(
        f"v{seed}", np.diag([1.0, 1.0, 3.0, 1.0]), shape, "instance", lambda: CaseData(img, lab)
    )


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, float32."""
    return ((a - a.mean()) / a.std()).astype(np.float32)
