"""Real anatomy for the synthetic dataset: the MNI152 2009a templates shipped inside nilearn.

The templates (197×233×189 voxels at 1 mm, RAS+, MNI world mm) are read from the files next
to the installed nilearn package (never from the network). There is no CSF map: it is
derived as brain mask × (1 − GM − WM). Rough region maps (cortex / grey-white junction,
subcortical white matter, basal ganglia, thalamus, cerebellum, brainstem) and iron-rich
nuclei are derived from MNI coordinates and the tissue maps; they only need to be good
enough to place CMBs and mimics where they occur in real brains.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbbench.errors import InputError

#: CMB location regions (code = index + 1 in :attr:`Anatomy.regions`).
REGIONS: tuple[str, ...] = (
    "cortex_junction",
    "subcortical_wm",
    "basal_ganglia",
    "thalamus",
    "cerebellum",
    "brainstem",
)
LOBAR_REGIONS: tuple[str, ...] = ("cortex_junction", "subcortical_wm")

TEMPLATE_NAMES = {
    t: f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz" for t in ("t1", "gm", "wm")
}

# Ellipsoids in MNI mm: (centre x (mirrored to ±x), y, z), semi-axes (x, y, z).
_ELLIPSOIDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "putamen": ((25.0, 2.0, 1.0), (5.5, 14.0, 9.0)),
    "pallidum": ((19.0, -4.0, -1.0), (4.0, 8.0, 5.0)),
    "caudate": ((13.0, 12.0, 10.0), (4.5, 9.0, 8.0)),
    "thalamus": ((11.0, -18.0, 6.0), (7.0, 11.0, 7.0)),
    "substantia_nigra": ((10.0, -18.0, -11.0), (3.0, 6.0, 3.0)),
    "red_nucleus": ((5.0, -20.0, -8.0), (3.0, 3.0, 3.0)),
    "dentate": ((15.0, -57.0, -34.0), (6.0, 8.0, 5.0)),
}
#: iron-rich nuclei and their R2* multiplier at 3 T (scaled with B0 in :mod:`.contrast`)
IRON_NUCLEI: dict[str, float] = {
    "pallidum": 2.6,
    "putamen": 2.0,
    "substantia_nigra": 2.4,
    "red_nucleus": 2.2,
    "dentate": 2.0,
}
#: calcification sites in MNI mm (x mirrored when bilateral)
CALCIFICATION_SITES: dict[str, tuple[tuple[float, float, float], bool]] = {
    "globus_pallidus": ((19.0, -4.0, -1.0), True),
    "choroid_plexus": ((28.0, -40.0, 12.0), True),
    "pineal": ((0.0, -31.0, 3.0), False),
    "dentate": ((15.0, -57.0, -34.0), True),
}


def template_dir() -> Path:
    """Folder of the MNI152 2009a templates inside the installed nilearn package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nilearn is not installed; the synthetic dataset needs its MNI templates")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _read_template(kind: str) -> tuple[np.ndarray, np.ndarray]:
    path = template_dir() / TEMPLATE_NAMES[kind]
    if not path.is_file():
        raise InputError("MNI152 2009a template missing from the nilearn install", path=str(path))
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32) / np.float32(255.0), np.asarray(img.affine)


@dataclass(frozen=True)
class Anatomy:
    """Tissue and region maps on the 1 mm template grid cropped to the brain (+ margin).

    All arrays have shape (X, Y, Z); ``affine`` maps voxel indices to MNI world mm.
    ``regions`` is uint8 with 0 = none and ``i + 1`` = ``REGIONS[i]``; ``eligible`` marks
    voxels where a CMB centre may go (tissue ≥ 90 %, ≥ 5 taxicab mm (≈ 3 mm) from the brain edge, no CSF in
    its 3×3×3 neighbourhood). ``iron`` is the R2* multiplier at 3 T (1 outside nuclei).
    ``ventricle_dist`` is the taxicab distance (≥ Euclidean) (mm) to the nearest deep-CSF voxel.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    regions: np.ndarray
    eligible: np.ndarray
    iron: np.ndarray
    ventricle_dist: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]

    def world_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid MNI coordinates (mm) of the voxel centres, each broadcastable to the shape."""
        idx = [np.arange(n, dtype=np.float32) for n in self.shape]
        a = self.affine
        x = (a[0, 0] * idx[0] + a[0, 3])[:, None, None]
        y = (a[1, 1] * idx[1] + a[1, 3])[None, :, None]
        z = (a[2, 2] * idx[2] + a[2, 3])[None, None, :]
        return x, y, z

    def region_name(self, code: int) -> str:
        return REGIONS[int(code) - 1] if code > 0 else "none"


def _soft_ellipsoid(x, y, z, centre, axes, mirror: bool) -> np.ndarray:
    """Soft (logistic-edged, 0.5 on the surface) ellipsoid indicator, float32 on the x/y/z grid.

    Evaluated only inside a box of twice the semi-axes around each copy (zero elsewhere).
    """
    cx, cy, cz = centre
    ax, ay, az = axes
    shape = (x.shape[0], y.shape[1], z.shape[2])
    out = np.zeros(shape, dtype=np.float32)
    for sx in (1.0, -1.0) if (mirror and cx != 0) else (1.0,):
        sl = []
        for coords, c, a in ((x.ravel(), sx * cx, ax), (y.ravel(), cy, ay), (z.ravel(), cz, az)):
            inside = np.nonzero(np.abs(coords - c) <= 2.0 * a)[0]
            if len(inside) == 0:
                break
            sl.append(slice(int(inside[0]), int(inside[-1]) + 1))
        else:
            xs, ys, zs = x[sl[0]], y[:, sl[1]], z[:, :, sl[2]]
            r = np.sqrt(((xs - sx * cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 + ((zs - cz) / az) ** 2)
            box = 1.0 / (1.0 + np.exp((r - 1.0) * 8.0))
            out[tuple(sl)] = np.maximum(out[tuple(sl)], box)
    return out


@functools.lru_cache(maxsize=1)
def load_anatomy(margin_mm: int = 6) -> Anatomy:
    """Load the templates (once per process), derive CSF, brain mask, regions and iron maps."""
    from scipy import ndimage as ndi  # imported here: registering the dataset stays light

    t1, affine = _read_template("t1")
    gm, _ = _read_template("gm")
    wm, _ = _read_template("wm")
    tissue = np.clip(gm + wm, 0.0, 1.0)
    brain = ndi.binary_fill_holes(ndi.binary_closing(tissue > 0.3, iterations=3))
    brain &= t1 > 0  # the T1 template is skull-stripped: nothing outside it is brain
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin_mm, 0)
    hi = np.minimum(idx.max(0) + margin_mm + 1, brain.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    gm, wm, brain = gm[sl], wm[sl], brain[sl]
    tissue = np.clip(gm + wm, 0.0, 1.0)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    csf = (brain * (1.0 - tissue)).astype(np.float32)
    gm = gm * brain
    wm = wm * brain

    anat0 = Anatomy(crop_affine, gm, wm, csf, brain, brain, brain, brain, brain)
    x, y, z = anat0.world_coords()
    ell = {k: _soft_ellipsoid(x, y, z, c, a, mirror=True) for k, (c, a) in _ELLIPSOIDS.items()}

    # infratentorial: brainstem (an elliptic cylinder) and cerebellum (behind/below the tentorium)
    shape = brain.shape
    brainstem = np.broadcast_to(
        (((x / 12.0) ** 2 + ((y + 27.0) / 14.0) ** 2) < 1.0) & (z < -6.0) & (z > -75.0), shape
    )
    tent = -12.0 - 0.25 * np.clip(np.abs(x) - 20.0, 0, None) + 0.1 * (y + 60.0)
    cerebellum = np.broadcast_to((y < -42.0) & (z < tent), shape) & ~brainstem
    deep_bg = np.maximum(np.maximum(ell["putamen"], ell["pallidum"]), ell["caudate"]) > 0.5
    thal = ell["thalamus"] > 0.5
    lobar = ~(cerebellum | brainstem | deep_bg | thal)

    solid = tissue >= 0.5
    regions = np.zeros(brain.shape, dtype=np.uint8)
    code = {name: i + 1 for i, name in enumerate(REGIONS)}
    regions[solid & lobar & (gm >= 0.35)] = code["cortex_junction"]
    regions[solid & lobar & (gm < 0.35)] = code["subcortical_wm"]
    regions[solid & deep_bg & ~cerebellum & ~brainstem] = code["basal_ganglia"]
    regions[solid & thal & ~deep_bg & ~cerebellum & ~brainstem] = code["thalamus"]
    regions[solid & cerebellum] = code["cerebellum"]
    regions[solid & brainstem] = code["brainstem"]
    regions[~brain] = 0

    # chamfer (taxicab) distances, 15× faster than Euclidean: Euclid ≥ taxicab / √3
    edge_dist = ndi.distance_transform_cdt(brain, metric="taxicab")
    csf_near = ndi.maximum_filter(csf, size=3)
    eligible = (regions > 0) & (tissue >= 0.9) & (edge_dist >= 5) & (csf_near < 0.35)

    iron = np.ones(brain.shape, dtype=np.float32)
    for name, factor in IRON_NUCLEI.items():
        iron += (factor - 1.0) * ell[name] * tissue
    deep_csf = (csf > 0.6) & (edge_dist > 12)  # ventricles and deep cisterns, not sulci
    ventricle_dist = ndi.distance_transform_cdt(~deep_csf, metric="taxicab").astype(np.float32)
    # every map C-contiguous: the templates come from nibabel in Fortran order and brain is a
    # view of the uncropped mask, and arithmetic mixing memory orders runs several times slower
    # (the values are the same in either order)
    return Anatomy(
        affine=crop_affine,
        gm=np.ascontiguousarray(gm, dtype=np.float32),
        wm=np.ascontiguousarray(wm, dtype=np.float32),
        csf=np.ascontiguousarray(csf),
        brain=np.ascontiguousarray(brain),
        regions=regions,
        eligible=eligible,
        iron=iron,
        ventricle_dist=np.ascontiguousarray(ventricle_dist),
    )


@functools.lru_cache(maxsize=8)
def eligible_indices(region: str, box: tuple[float, ...] | None = None) -> np.ndarray:
    """Voxel indices (N, 3) of the 1 mm anatomy grid where a CMB of ``region`` may be centred.

    ``box`` = (xmin, xmax, ymin, ymax, zmin, zmax) in MNI mm restricts them to a sub-volume.
    """
    anat = load_anatomy()
    code = REGIONS.index(region) + 1
    return indices_in_box(np.argwhere(anat.eligible & (anat.regions == code)), box)


def indices_in_box(idx: np.ndarray, box: tuple[float, ...] | None) -> np.ndarray:
    """The anatomy-grid voxel indices ``idx`` (N, 3) whose centres lie in ``box`` =
    (xmin, xmax, ymin, ymax, zmin, zmax) MNI mm (all of them for ``None``)."""
    if box is None:
        return idx
    anat = load_anatomy()
    world = idx @ anat.affine[:3, :3].T + anat.affine[:3, 3]
    lo, hi = np.asarray(box[0::2]), np.asarray(box[1::2])
    return idx[np.all((world >= lo) & (world <= hi), axis=1)]
