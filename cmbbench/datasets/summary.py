"""Dataset statistics behind ``cmbbench data info``: counts, CMB sizes, grids, cohorts.

Reading every label is the cost: each case is loaded once and released again (unless it
was already loaded), so memory stays at one case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cmbbench.cases import Case
from cmbbench.datasets.splits import count_bin
from cmbbench.progress import PhaseTracker, ProgressFn

COUNT_BINS = ("0", "1", "2-4", "5-10", ">10")


def component_sizes(
    label: np.ndarray | None, label_kind: str, *, connectivity: int = 26
) -> np.ndarray:
    """Voxel count of every CMB in a mask (connected components) or instance map (ids); int64 (N,).

    Points labels have no size: an empty array is returned for them.
    """
    if label is None or label_kind in ("points", "none"):
        return np.zeros(0, dtype=np.int64)
    lab = np.asarray(label)
    if label_kind == "instance":
        _ids, counts = np.unique(lab[lab > 0], return_counts=True)
        return counts.astype(np.int64)
    from cmbbench.scoring.components import label_volume

    cc = label_volume(lab, connectivity)
    return np.bincount(cc.ravel())[1:].astype(np.int64)


def equivalent_diameter_mm(n_voxels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Diameter (mm) of the sphere with the same volume as ``n_voxels`` voxels of ``spacing`` mm
    (the scoring's :func:`~cmbbench.scoring.components.equivalent_diameter_mm`)."""
    from cmbbench.scoring.components import equivalent_diameter_mm as from_volume

    return from_volume(np.asarray(n_voxels, dtype=np.float64) * float(np.prod(spacing)))


@dataclass
class DatasetSummary:
    """What ``cmbbench data info`` prints; sizes are per CMB, counts per case."""

    name: str
    split: str | None
    n_cases: int = 0
    n_labelled: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # case id -> number of CMBs
    sizes_voxels: list[int] = field(default_factory=list)
    diameters_mm: list[float] = field(default_factory=list)
    spacings: Counter = field(default_factory=Counter)  # (sx, sy, sz) mm rounded to 0.01
    shapes: Counter = field(default_factory=Counter)
    groups: Counter = field(default_factory=Counter)  # protocol / cohort -> cases
    label_kinds: Counter = field(default_factory=Counter)

    @property
    def n_cmb(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def n_negative(self) -> int:
        """Labelled cases without any CMB."""
        return sum(1 for v in self.counts.values() if v == 0)

    def count_bins(self) -> dict[str, int]:
        """Cases per CMB-count bin (``0``, ``1``, ``2-4``, ``5-10``, ``>10``)."""
        c = Counter(count_bin(v) for v in self.counts.values())
        return {b: c.get(b, 0) for b in COUNT_BINS}


def _group(case: Case) -> str:
    for key in ("protocol", "cohort"):
        v = case.meta.get(key)
        if v not in (None, "-", ""):
            return str(v)
    return "-"


def summarize_dataset(
    dataset: Sequence[Case],
    *,
    name: str | None = None,
    split: str | None = None,
    progress: ProgressFn | None = None,
    connectivity: int = 26,
) -> DatasetSummary:
    """Read every case's label once and collect the statistics (a ``"data"`` phase)."""
    s = DatasetSummary(
        name=name or getattr(dataset, "name", "?"), split=split or getattr(dataset, "split", None)
    )
    total = len(dataset)
    tracker = PhaseTracker(progress, "data", total, f"reading {s.name}")
    for i, case in enumerate(dataset):
        s.n_cases += 1
        sp = tuple(round(v, 2) for v in case.spacing)
        s.spacings[sp] += 1
        s.shapes[tuple(case.shape)] += 1
        s.groups[_group(case)] += 1
        s.label_kinds[case.label_kind] += 1
        if case.label_kind != "none":
            was_loaded = case._data is not None
            label = case.read_label()
            if label is not None:
                s.n_labelled += 1
                if case.label_kind == "points":
                    s.counts[case.case_id] = int(np.asarray(label).reshape(-1, 3).shape[0])
                else:
                    sizes = component_sizes(label, case.label_kind, connectivity=connectivity)
                    s.counts[case.case_id] = int(sizes.size)
                    s.sizes_voxels.extend(int(v) for v in sizes)
                    s.diameters_mm.extend(
                        float(v) for v in equivalent_diameter_mm(sizes, case.spacing)
                    )
            if not was_loaded:
                case.release()
        tracker.emit(i + 1)
    return s
