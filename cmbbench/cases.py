"""The unit every dataset yields and every model consumes: :class:`Case`.

Orientation convention: arrays are indexed ``[i, j, k]`` in the file's own voxel order (as
nibabel returns them, no reorientation), ``affine`` maps ``(i, j, k, 1)`` to world
millimetres (RAS+, as in the NIfTI header) and ``spacing`` is the voxel size in mm along
``i, j, k``. Keeping the file's own order means a prediction written with ``affine`` lands
in the original space exactly.

A case's arrays are loaded lazily (on first access of :attr:`Case.image` /
:attr:`Case.label`) and cached on the object; :meth:`Case.release` drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

LabelKind = Literal["mask", "instance", "points", "agreement", "none"]


@dataclass
class CaseData:
    """The arrays of a case, as returned by a loader.

    ``image``: float32, shape (X, Y, Z) — the main channel (T2* / SWI magnitude).
    ``label``: uint8 binary mask (X, Y, Z), integer instance map (X, Y, Z) with one value per
    CMB, float64 (N, 3) centre points in world mm, or ``None`` (unlabelled case).
    ``ignore``: optional bool mask (X, Y, Z) of regions whose predictions are not scored
    (e.g. synthetic CMBs that vanish at the target resolution).
    ``extra``: optional further channels by name (e.g. ``{"T1": array}``), float32.
    ``missing``: optional bool (X, Y, Z) mask per extra channel of the voxels that held no
    value in the file (NaN/inf, stored as 0 in ``extra``), e.g. outside VALDO's brain mask;
    normalisation leaves them out of its statistics and sets them to 0.
    """

    image: np.ndarray
    label: np.ndarray | None = None
    ignore: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Case:
    """One subject/scan of a dataset.

    ``meta`` holds what is known about the case: ``cohort`` / ``protocol``, ``field_strength_t``,
    ``sequence``, ``cmbs`` (per-CMB records: world-mm centre, region, size, ...), ``mimics``
    (synthetic data), and ``lesion_attrs`` (instance id -> dict of attributes such as region,
    passed to scoring so results can be stratified).
    """

    case_id: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    label_kind: LabelKind
    loader: Callable[[], CaseData] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    #: optional: reads the label alone (no image), for callers that need only labels
    label_loader: Callable[[], np.ndarray | None] | None = field(default=None, repr=False)
    _data: CaseData | None = field(default=None, init=False, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes, from the affine's column norms."""
        return tuple(float(v) for v in np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0))

    @property
    def gt_kind(self) -> str:
        """The ``gt_kind`` to score this case's label with (``"auto"`` when unlabelled)."""
        kinds = ("mask", "instance", "points", "agreement")
        return self.label_kind if self.label_kind in kinds else "auto"

    def load(self) -> CaseData:
        """Load (once) and return the arrays."""
        if self._data is None:
            self._data = self.loader()
        return self._data

    @property
    def image(self) -> np.ndarray:
        """float32 (X, Y, Z) main image channel."""
        return self.load().image

    @property
    def label(self) -> np.ndarray | None:
        """Mask / instance map (X, Y, Z), world-mm points (N, 3), or None."""
        return self.load().label

    @property
    def ignore(self) -> np.ndarray | None:
        """Optional bool (X, Y, Z) mask of regions excluded from scoring."""
        return self.load().ignore

    def read_label(self) -> np.ndarray | None:
        """The label without reading the image when possible.

        The cached label if the arrays are loaded; else ``label_loader()`` (not cached) when
        the dataset provides one; else :meth:`load` (which reads and caches everything).
        """
        if self._data is not None or self.label_loader is None:
            return self.label
        return self.label_loader()

    def release(self) -> None:
        """Drop the cached arrays (they are re-read on next access)."""
        self._data = None
