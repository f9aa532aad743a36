"""Training patches: class-proportional sampling, deterministic per (seed, sample index).

The :class:`PatchSampler` turns a list of prepared training volumes into patches. Sample
``i`` (a global index over the whole run) is a pure function of ``(seed, i)``: its volume,
its centre and its augmentation come from a generator seeded by ``(seed, i)``, so training
resumed at step ``s`` sees exactly the batches an uninterrupted run would, with any number of
data-loading workers. :class:`PatchBatches` is a torch ``IterableDataset`` that yields whole
batches for a range of steps; with ``num_workers > 0`` the ``DataLoader`` interleaves workers
in step order, so the device never waits on the CPU-side sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cmbbench.cases import Case
from cmbbench.engine.augment import augment_patch
from cmbbench.engine.channels import normalized_channels
from cmbbench.errors import InputError
from cmbbench.progress import PhaseTracker, ProgressFn

Normalizer = Callable[[np.ndarray], np.ndarray]


@dataclass
class TrainVolume:
    """A normalised training image with its binary label, valid mask and CMB voxel lists.

    ``image`` float32 (X, Y, Z), standardised, or (C, X, Y, Z) for multi-sequence input
    (every channel standardised on its own, :mod:`cmbbench.engine.channels`); ``label`` uint8 (X, Y, Z) 0/1; ``valid`` bool
    (X, Y, Z), False where the case's "ignore" mask is set; ``instances`` one int32 (N_k, 3)
    array of voxel indices per CMB; ``fg_box`` the (lo, hi) voxel bounds of the head region
    from which background patch centres are drawn; ``fg_mask`` the head voxels (signal voids
    inside the head included).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    valid: np.ndarray
    instances: list[np.ndarray]
    fg_box: tuple[tuple[int, int, int], tuple[int, int, int]]
    fg_mask: np.ndarray
    dark_spots: np.ndarray | None = None  # int32 (N, 3) hard-negative candidate voxels


def dark_spot_candidates(
    image: np.ndarray,
    fg: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    fraction: float = 0.002,
    max_points: int = 20000,
    seed: int = 0,
    voids: np.ndarray | None = None,
    void_share: float = 0.5,
) -> np.ndarray:
    """Voxels darker than their surroundings (CMB look-alikes: veins, calcifications, iron,
    edges) that are not CMBs: int32 (N, 3) voxel indices.

    Local darkness = Gaussian-smoothed image (σ = 2 mm per axis, converted to voxels with
    ``spacing``) minus the image; the top ``fraction`` of head voxels (``fg``) are kept, at
    most ``max_points`` of them (a seeded subsample), excluding voxels within 2 voxels of a
    labelled CMB. ``voids`` (bool, optional): signal voids inside the head (air-bone
    drop-out, masked-out holes), added as a seeded subsample of at most ``void_share`` ×
    the tissue candidates, so they are sampled without crowding out veins and the like.
    """
    from scipy import ndimage

    sigma = tuple(2.0 / max(float(s), 1e-3) for s in spacing)
    darkness = ndimage.gaussian_filter(image, sigma) - image
    near_cmb = ndimage.binary_dilation(label > 0, iterations=2) if label.any() else None
    ok = fg if near_cmb is None else fg & ~near_cmb
    values = darkness[ok]
    if values.size == 0:
        return np.zeros((0, 3), np.int32)
    cut = np.quantile(values, 1.0 - fraction)
    idx = np.flatnonzero((darkness >= cut).reshape(-1) & ok.reshape(-1))
    rng = np.random.default_rng(seed)
    if idx.size > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    if voids is not None:
        void_ok = voids if near_cmb is None else voids & ~near_cmb
        vidx = np.flatnonzero(void_ok.reshape(-1))
        n_void = min(vidx.size, int(void_share * idx.size))
        if n_void:
            idx = np.sort(np.concatenate([idx, rng.choice(vidx, n_void, replace=False)]))
    return np.stack(np.unravel_index(idx, image.shape), axis=1).astype(np.int32)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """bool (X, Y, Z): ``mask`` with the holes of every slice along the last axis filled."""
    from scipy import ndimage

    out = np.empty_like(mask)
    for z in range(mask.shape[2]):
        out[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return out


def prepare_volume(
    case: Case,
    normalize: Normalizer,
    *,
    hard_negatives: bool = False,
    extra_channels: Sequence[str] = (),
) -> TrainVolume:
    """Normalise one labelled case and index its CMB voxels (label values > 0; instance maps
    ok); with ``hard_negatives``, also index dark-spot look-alikes (:func:`dark_spot_candidates`).

    ``extra_channels``: names of the case's extra channels stacked after the main image
    (the volume's image is then (C, X, Y, Z)); the head region and the dark spots come from
    the main channel."""
    image = np.asarray(case.image, dtype=np.float32)
    label = case.label
    if label is None or np.asarray(label).ndim != 3:
        raise InputError(
            "training needs a voxel label (mask or instance map); this case has "
            + ("none" if label is None else f"an array of shape {np.asarray(label).shape}"),
            case=case.case_id,
        )
    label = np.asarray(label)
    if label.shape != image.shape:
        raise InputError(
            f"label shape {label.shape} does not match image shape {image.shape}",
            case=case.case_id,
        )
    ignore = case.ignore
    valid = np.ones(image.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    if extra_channels:
        norm = normalized_channels(case, normalize, extra_channels)
    else:
        norm = np.asarray(normalize(image), dtype=np.float32)
    # head region: voxels above 10% of the robust maximum of the raw image
    hi = float(np.percentile(image, 99.5)) if image.size else 0.0
    fg = image > 0.1 * hi if hi > 0 else np.ones(image.shape, bool)
    if not fg.any():
        fg = np.ones(image.shape, bool)
    # signal voids inside the head (air-bone drop-out, masked-out regions) are the darkest
    # look-alikes of all: they count as head, and as hard negatives of their own
    fgmask = _fill_holes_per_slice(fg)
    nz = [np.flatnonzero(fgmask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    box = (tuple(int(n[0]) for n in nz), tuple(int(n[-1]) + 1 for n in nz))
    lab_idx = np.flatnonzero(label.reshape(-1) > 0)
    instances: list[np.ndarray] = []
    if lab_idx.size:
        values = label.reshape(-1)[lab_idx]
        coords = np.stack(np.unravel_index(lab_idx, label.shape), axis=1).astype(np.int32)
        if values.max() > 1:  # instance map: one group per CMB value
            order = np.argsort(values, kind="stable")
            values, coords = values[order], coords[order]
            cuts = np.flatnonzero(np.diff(values)) + 1
            instances = list(np.split(coords, cuts))
        else:  # binary mask: label its components
            from cmbbench.scoring.components import label_volume

            comp = label_volume(label > 0, 26)
            cvals = comp.reshape(-1)[lab_idx]
            order = np.argsort(cvals, kind="stable")
            cvals, coords = cvals[order], coords[order]
            instances = list(np.split(coords, np.flatnonzero(np.diff(cvals)) + 1))
    binary = (label > 0).astype(np.uint8)
    dark = None
    if hard_negatives:
        main = norm if norm.ndim == 3 else norm[0]
        dark = dark_spot_candidates(main, fg, binary, case.spacing, voids=fgmask & ~fg)
    return TrainVolume(
        case_id=case.case_id,
        image=norm,
        label=binary,
        valid=valid,
        instances=instances,
        fg_box=box,  # type: ignore[arg-type]
        fg_mask=fgmask,
        dark_spots=dark,
    )


def prepare_volumes(
    cases: Sequence[Case],
    normalize: Normalizer,
    progress: ProgressFn | None = None,
    *,
    hard_negatives: bool = False,
    extra_channels: Sequence[str] = (),
) -> list[TrainVolume]:
    """:func:`prepare_volume` over ``cases``, reported as a ``"data"`` phase."""
    tracker = PhaseTracker(progress, "data", len(cases), "preparing training volumes")
    out = []
    for i, case in enumerate(cases):
        out.append(
            prepare_volume(
                case, normalize, hard_negatives=hard_negatives, extra_channels=extra_channels
            )
        )
        case.release()
        tracker.emit(i + 1)
    return out


def _crop(arr: np.ndarray, lo: np.ndarray, size: tuple[int, int, int], fill) -> np.ndarray:
    """``arr[lo : lo + size]`` with out-of-bounds parts filled with ``fill``."""
    hi = lo + np.asarray(size)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, arr.shape)
    out = np.full(size, fill, dtype=arr.dtype)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = arr[
        src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
    ]
    return out


def _fill(channel: np.ndarray) -> np.float32:
    """The padding value of one channel's patches: its minimum (0 when empty)."""
    return np.float32(float(channel.min()) if channel.size else 0.0)


class PatchSampler:
    """Deterministic patch sampler over prepared volumes.

    Sample ``i`` uses volume ``perm_e[i mod n]`` where ``perm_e`` is a seeded permutation for
    epoch ``e = i // (n · patches_per_volume)``, so every volume gives ``patches_per_volume``
    patches per epoch. With probability ``cmb_fraction`` (and when the volume has CMBs) the
    patch centre is a voxel of a uniformly chosen CMB, jittered by up to a quarter patch;
    with probability ``hard_negative_fraction`` (when the volume was prepared with
    ``hard_negatives``) a dark-spot look-alike, likewise jittered; otherwise a random head
    voxel. Batches of rank ``r`` of ``world_size`` ranks at step ``s``
    hold samples ``((s · world_size + r) · batch_size + b)``.
    """

    def __init__(
        self,
        volumes: Sequence[TrainVolume],
        *,
        patch_size: tuple[int, int, int],
        batch_size: int,
        patches_per_volume: int = 30,
        cmb_fraction: float = 0.9,
        hard_negative_fraction: float = 0.0,
        flip: bool = True,
        rotate_deg: float = 0.0,
        intensity: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not volumes:
            raise InputError("no training volumes to sample patches from")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.ppv = int(patches_per_volume)
        self.cmb_fraction = float(cmb_fraction)
        self.hard_fraction = float(hard_negative_fraction)
        self.flip, self.rotate_deg, self.intensity = flip, float(rotate_deg), intensity
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._perm_cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_recipe(
        cls,
        volumes: Sequence[TrainVolume],
        recipe,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> PatchSampler:
        return cls(
            volumes,
            patch_size=recipe.patch_size,
            batch_size=recipe.batch_size,
            patches_per_volume=recipe.patches_per_volume,
            cmb_fraction=recipe.cmb_fraction,
            hard_negative_fraction=recipe.hard_negative_fraction,
            flip=recipe.aug_flip,
            rotate_deg=recipe.aug_rotate_deg,
            intensity=recipe.aug_intensity,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def _volume_index(self, i: int) -> int:
        n = len(self.volumes)
        epoch = i // (n * self.ppv)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, 7, epoch]).permutation(n)
            if len(self._perm_cache) > 8:
                self._perm_cache.clear()
            self._perm_cache[epoch] = perm
        return int(perm[i % n])

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``i``: image float32 (X, Y, Z) (or (C, X, Y, Z) for multi-sequence
        volumes), label uint8 (X, Y, Z), valid bool (X, Y, Z)."""
        vol = self.volumes[self._volume_index(i)]
        rng = np.random.default_rng([self.seed, 11, i])
        size = np.asarray(self.patch_size)
        u = rng.random()
        jitter = np.maximum(size // 4, 0)
        dark = vol.dark_spots
        if vol.instances and u < self.cmb_fraction:
            inst = vol.instances[int(rng.integers(len(vol.instances)))]
            centre = inst[int(rng.integers(len(inst)))].astype(np.int64)
            centre = centre + rng.integers(-jitter, jitter + 1)
        elif dark is not None and len(dark) and u < self.cmb_fraction + self.hard_fraction:
            centre = dark[int(rng.integers(len(dark)))].astype(np.int64)
            centre = centre + rng.integers(-jitter, jitter + 1)
        else:
            lo, hi = (np.asarray(b) for b in vol.fg_box)
            centre = rng.integers(lo, hi)
            for _ in range(8):  # prefer a head voxel inside the bounding box
                if vol.fg_mask[tuple(centre)]:
                    break
                centre = rng.integers(lo, hi)
        lo = centre - size // 2
        if vol.image.ndim == 4:  # multi-sequence: each channel padded with its own minimum
            image = np.stack([_crop(c, lo, self.patch_size, _fill(c)) for c in vol.image])
        else:
            fill = float(vol.image.min()) if vol.image.size else 0.0
            image = _crop(vol.image, lo, self.patch_size, np.float32(fill))
        label = _crop(vol.label, lo, self.patch_size, np.uint8(0))
        valid = _crop(vol.valid, lo, self.patch_size, False)
        return augment_patch(
            image,
            label,
            valid,
            rng,
            flip=self.flip,
            rotate_deg=self.rotate_deg,
            intensity=self.intensity,
        )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of this rank at ``step``: image (B, C, *P) float32 (C = 1 for
        single-channel volumes), label (B, *P) int64, valid (B, *P) bool."""
        first = (step * self.world_size + self.rank) * self.batch_size
        samples = [self.sample(first + b) for b in range(self.batch_size)]
        image = np.stack([s[0] for s in samples])
        if image.ndim == 4:  # single-channel (X, Y, Z) patches
            image = image[:, None]
        label = np.stack([s[1] for s in samples]).astype(np.int64)
        valid = np.stack([s[2] for s in samples])
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label),
            "valid": torch.from_numpy(valid),
            "step": torch.tensor(step),
        }


class PatchBatches(IterableDataset):
    """Batches for steps ``start <= s < stop``; workers split the steps round-robin."""

    def __init__(self, sampler: PatchSampler, start: int, stop: int):
        super().__init__()
        self.sampler, self.start, self.stop = sampler, int(start), int(stop)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + wid, self.stop, nw):
            yield self.sampler.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_loader(
    sampler: PatchSampler, start: int, stop: int, *, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over :class:`PatchBatches` that yields batches in step order."""
    kwargs = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": 4, "persistent_workers": False}
    return DataLoader(
        PatchBatches(sampler, start, stop),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kwargs,
    )
