"""``classical_log``: a non-learned CMB detector, the floor every learned model must beat.

Pipeline for one case (pure numpy/scipy, CPU, seconds per volume):

1. **Brain mask**: the image smoothed at 2 mm, thresholded at a fraction of its robust
   maximum, holes filled, the largest component kept, then eroded by ``edge_margin_mm``
   (world mm, through the voxel spacing) so that partial-volume dark dots at the brain edge
   are not candidates.
2. **Normalisation**: robust z-score inside the mask, ``(I - median) / (1.4826 MAD)``.
3. **Multi-scale dark-blob response**: for each scale ``sigma`` (mm) the image is smoothed
   with an anisotropic Gaussian of ``sigma / spacing`` voxels per axis and its Laplacian is
   taken in mm (second differences divided by ``spacing**2``); the scale-normalised
   response ``sigma**2 * Laplacian`` is positive for dark blobs. Scales default to
   0.5-1.8 mm, i.e. blob diameters of about 1.7-6 mm (``d = 2 sqrt(3) sigma``).
4. **Candidates**: local maxima (3x3x3 voxels) of the best response over scales inside the
   mask, above a low floor, at most ``max_candidates`` per case.
5. **Features** per candidate: response (score), ``roundness`` (min/max eigenvalue of the
   Hessian at the best scale, restricted to the finely sampled axes so that thick slices do
   not count as elongation), ``contrast`` (local background minus the smoothed centre, in
   z units), and ``diameter_mm`` of the blob segmented around the centre (connected voxels
   darker than the half-way level between centre and background, inside a window of 3 blob
   radii).
6. **Filters and score**: a candidate is kept when ``response >= threshold``,
   ``roundness >= min_roundness``, ``contrast >= min_contrast`` and
   ``min_diameter_mm <= diameter_mm <= max_diameter_mm``. Its blob is painted into the
   probability map with ``p = 1 / (1 + exp(-(response - threshold) / response_scale))``, so a
   kept candidate has ``p >= 0.5`` (the scoring rules binarise at 0.5) and candidates that pass
   the shape filters but not the threshold are painted below 0.5 (visible to a threshold sweep).

:meth:`ClassicalDetector.fit` fits the thresholds on the training cases: the candidates of
every training case are extracted once and each is matched to the ground-truth CMB its blob
overlaps most. For every setting of the shape filters (a small grid of roundness, contrast
and diameter limits) the response threshold with the best pooled lesion-level F1 is found
by an exact sweep over the sorted responses (one TP per CMB); the best ``verify_top``
settings are then re-scored by the dataset's evaluator (the run's rule and parameters) on
the painted predictions and the best of them by pooled F1 is kept.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cmbbench import register_model
from cmbbench.cases import Case
from cmbbench.errors import InputError
from cmbbench.io import write_json_atomic
from cmbbench.models.detector import Prediction
from cmbbench.scoring.rates import detection_rates

log = logging.getLogger(__name__)

PARAMS_FILE = "classical_log.json"  # fitted parameters, written into the run folder
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)
# point-annotated CMBs: a candidate within this distance (world mm) hits the point (fit only;
# the final choice is re-scored with the dataset's own rule)
_POINT_RADIUS_MM = 3.0


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical detector (mm are world millimetres).

    Fitted by :meth:`ClassicalDetector.fit`: ``threshold``, ``min_roundness``,
    ``min_contrast``, ``max_diameter_mm`` (and ``response_scale`` from the training responses).
    """

    sigmas_mm: tuple[float, ...] = (0.5, 0.75, 1.1, 1.6)
    edge_margin_mm: float = 3.0
    mask_fraction: float = 0.2  # brain = smoothed image > fraction * 99th percentile
    candidate_floor: float = 0.5  # minimum response (z units) of a candidate
    max_candidates: int = 400  # per case, strongest first
    background_sigma_mm: float = 4.0
    threshold: float = 5.0
    response_scale: float = 0.5
    min_roundness: float = 0.2
    min_contrast: float = 1.0
    min_diameter_mm: float = 1.0
    max_diameter_mm: float = 10.0


@dataclass
class Candidates:
    """Candidate dark blobs of one case: arrays of shape ``(N,)`` (``centre``: ``(N, 3)``
    voxel indices) plus each blob's voxel indices (flat, C order) for painting/matching."""

    centre: np.ndarray
    response: np.ndarray
    roundness: np.ndarray
    contrast: np.ndarray
    diameter_mm: np.ndarray
    blobs: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.response.size)


# ----------------------------------------------------------------------------- image steps
def _spacing(case: Case) -> np.ndarray:
    sp = np.asarray(case.spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(
            f"invalid voxel spacing {tuple(sp)} (expected 3 positive mm values)", case=case.case_id
        )
    return sp


def brain_mask(
    image: np.ndarray, spacing: np.ndarray, *, fraction: float = 0.2, margin_mm: float = 3.0
) -> np.ndarray:
    """Rough brain mask (bool, image shape): smoothed (2 mm) image above ``fraction`` of its
    99th percentile, holes filled, largest component, eroded by ``margin_mm`` (world mm)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 2.0 / spacing, mode="nearest")
    positive = smooth[smooth > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    mask = smooth > fraction * float(np.percentile(positive, 99))
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    if margin_mm > 0 and mask.any():
        dist = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        mask = dist > margin_mm
    return mask


def robust_normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(image - median) / (1.4826 * MAD)`` with statistics inside ``mask`` (float32)."""
    values = image[mask] if mask.any() else image.ravel()
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    if not mad > 0:
        mad = float(values.std()) or 1.0
    return ((image - med) / mad).astype(np.float32)


def _laplacian_mm(smooth: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Sum of second differences along each axis divided by spacing**2 (mm^-2)."""
    out = np.zeros_like(smooth)
    for axis in range(3):
        padded = np.pad(smooth, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(padded, range(0, smooth.shape[axis]), axis=axis)
        hi = np.take(padded, range(2, smooth.shape[axis] + 2), axis=axis)
        out += (lo + hi - 2 * smooth) / float(spacing[axis] ** 2)
    return out


def _hessian_at(
    smooth: np.ndarray, spacing: np.ndarray, point: np.ndarray, axes: Sequence[int]
) -> np.ndarray:
    """Hessian (mm^-2) of ``smooth`` at voxel ``point`` over ``axes`` by central differences."""
    shape = np.asarray(smooth.shape)

    def val(offset: np.ndarray) -> float:
        return float(smooth[tuple(np.clip(point + offset, 0, shape - 1))])

    k = len(axes)
    h = np.zeros((k, k))
    c = val(np.zeros(3, dtype=int))
    for i, a in enumerate(axes):
        e = np.zeros(3, dtype=int)
        e[a] = 1
        h[i, i] = (val(e) + val(-e) - 2 * c) / spacing[a] ** 2
        for j in range(i + 1, k):
            b = axes[j]
            f = np.zeros(3, dtype=int)
            f[b] = 1
            h[i, j] = h[j, i] = (val(e + f) - val(e - f) - val(f - e) + val(-e - f)) / (
                4 * spacing[a] * spacing[b]
            )
    return h


def _segment_blob(
    norm: np.ndarray, centre: np.ndarray, level: float, radius_vox: np.ndarray
) -> np.ndarray:
    """Flat indices of voxels connected (26) to ``centre`` with ``norm <= level`` inside a box
    of half-size ``radius_vox``; always contains the centre."""
    lo = np.maximum(centre - radius_vox, 0)
    hi = np.minimum(centre + radius_vox + 1, norm.shape)
    window = norm[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] <= level
    local = tuple(centre - lo)
    window[local] = True
    labels, _ = ndimage.label(window, structure=_STRUCT26)
    idx = np.argwhere(labels == labels[local]) + lo
    return np.ravel_multi_index(tuple(idx.T), norm.shape)


def extract_candidates(case: Case, params: ClassicalParams) -> Candidates:
    """Find candidate dark blobs of ``case`` and their features (see the module docstring)."""
    image = np.asarray(case.image, dtype=np.float32)
    if image.ndim != 3:
        raise InputError(f"image must be 3-D (X, Y, Z), got shape {image.shape}", case=case.case_id)
    if not np.all(np.isfinite(image)):
        raise InputError("image contains NaN or Inf", case=case.case_id)
    spacing = _spacing(case)
    mask = brain_mask(
        image, spacing, fraction=params.mask_fraction, margin_mm=params.edge_margin_mm
    )
    norm = robust_normalise(image, mask)
    best = np.full(image.shape, -np.inf, dtype=np.float32)
    best_scale = np.zeros(image.shape, dtype=np.int8)
    smooths = []
    for s, sigma in enumerate(params.sigmas_mm):
        smooth = ndimage.gaussian_filter(norm, sigma / spacing, mode="nearest")
        smooths.append(smooth)
        resp = (sigma**2) * _laplacian_mm(smooth, spacing)
        better = resp > best
        best[better] = resp[better]
        best_scale[better] = s
    peaks = (best == ndimage.maximum_filter(best, size=3, mode="nearest")) & mask
    peaks &= best >= params.candidate_floor
    idx = np.argwhere(peaks)
    resp = best[peaks]
    order = np.argsort(-resp, kind="stable")[: params.max_candidates]
    idx, resp = idx[order], resp[order]
    background = ndimage.gaussian_filter(norm, params.background_sigma_mm / spacing, mode="nearest")
    fine = [a for a in range(3) if spacing[a] <= 1.5 * spacing.min()]
    n = len(idx)
    roundness = np.zeros(n)
    contrast = np.zeros(n)
    diameter = np.zeros(n)
    blobs: list[np.ndarray] = []
    voxel_mm3 = float(np.prod(spacing))
    claimed = np.zeros(norm.size, dtype=bool)
    keep = np.ones(n, dtype=bool)
    for i, point in enumerate(idx):
        flat_centre = int(np.ravel_multi_index(tuple(point), norm.shape))
        if claimed[flat_centre]:  # inside the blob of a stronger candidate: a duplicate peak
            keep[i] = False
            continue
        s = int(best_scale[tuple(point)])
        smooth = smooths[s]
        eig = np.linalg.eigvalsh(_hessian_at(smooth, spacing, point, fine))
        roundness[i] = max(float(eig.min()), 0.0) / float(eig.max()) if eig.max() > 0 else 0.0
        centre_val = float(smooth[tuple(point)])
        bg = float(background[tuple(point)])
        contrast[i] = bg - centre_val
        if contrast[i] > 0:
            radius_vox = np.ceil(3 * math.sqrt(3) * params.sigmas_mm[s] / spacing).astype(int)
            level = 0.5 * (centre_val + bg)
            blob = _segment_blob(norm, point, level, np.maximum(radius_vox, 1))
            claimed[blob] = True
        else:  # not darker than its surroundings: never kept (min_contrast >= 0)
            blob = np.array([flat_centre], dtype=np.intp)
        blobs.append(blob)
        diameter[i] = (6 * blob.size * voxel_mm3 / math.pi) ** (1 / 3)
    idx, resp = idx[keep], resp[keep]
    roundness, contrast, diameter = roundness[keep], contrast[keep], diameter[keep]
    return Candidates(
        centre=idx,
        response=resp.astype(np.float64),
        roundness=roundness,
        contrast=contrast,
        diameter_mm=diameter,
        blobs=blobs,
    )


def passes_filters(c: Candidates, p: ClassicalParams) -> np.ndarray:
    """Bool ``(N,)``: candidates that pass the shape filters (threshold not applied)."""
    return (
        (c.roundness >= p.min_roundness)
        & (c.contrast >= p.min_contrast)
        & (c.diameter_mm >= p.min_diameter_mm)
        & (c.diameter_mm <= p.max_diameter_mm)
    )


def paint(c: Candidates, p: ClassicalParams, shape: tuple[int, int, int]) -> np.ndarray:
    """Probability map float32 ``shape``: each filtered candidate's blob painted with its
    logistic probability (``>= 0.5`` exactly when ``response >= threshold``)."""
    prob = np.zeros(int(np.prod(shape)), dtype=np.float32)
    ok = passes_filters(c, p)
    scale = max(p.response_scale, 1e-6)
    z = np.clip((c.response - p.threshold) / scale, -50, 50)
    probs = 1.0 / (1.0 + np.exp(-z))
    probs[c.response >= p.threshold] = np.maximum(probs[c.response >= p.threshold], 0.5)
    floor = 0.05  # faint candidates are not painted at all
    for i in np.flatnonzero(ok & (probs >= floor)):
        blob = c.blobs[i]
        prob[blob] = np.maximum(prob[blob], np.float32(min(probs[i], 1.0)))
    return prob.reshape(shape)


# ----------------------------------------------------------------------------- fitting
def _gt_instances(case: Case) -> np.ndarray | None:
    """Instance map (int) of the case's CMBs, or None for point/unlabelled cases. A binary
    mask or a rater-agreement map (float weights in (0, 1] per CMB, which an integer cast
    would turn to 0) gives its 26-connected components."""
    label = case.label
    if label is None or case.label_kind in ("points", "none"):
        return None
    label = np.asarray(label)
    if case.label_kind in ("mask", "agreement"):
        inst, _ = ndimage.label(label > 0, structure=_STRUCT26)
        return inst
    return label.astype(np.int64, copy=False)


def _match_candidates(case: Case, c: Candidates) -> tuple[np.ndarray, np.ndarray, int]:
    """Per candidate: the CMB id its blob overlaps most (-1: none) and whether it lies in the
    ignore region; plus the number of CMBs of the case."""
    hit = np.full(len(c), -1, dtype=np.int64)
    ignored = np.zeros(len(c), dtype=bool)
    inst = _gt_instances(case)
    ign = case.ignore
    flat_ign = np.asarray(ign, dtype=bool).ravel() if ign is not None else None
    if inst is None:
        n_gt = 0
        if case.label_kind == "points" and case.label is not None:
            pts = np.asarray(case.label, dtype=np.float64).reshape(-1, 3)
            n_gt = len(pts)
            if n_gt and len(c):
                world = (
                    c.centre @ np.asarray(case.affine)[:3, :3].T + np.asarray(case.affine)[:3, 3]
                )
                d = np.linalg.norm(world[:, None, :] - pts[None], axis=2)
                near = d.min(axis=1) <= _POINT_RADIUS_MM
                hit[near] = np.argmin(d, axis=1)[near] + 1
        return hit, ignored, n_gt
    flat = inst.ravel()
    n_gt = int(np.unique(flat[flat > 0]).size)
    for i, blob in enumerate(c.blobs):
        vals = flat[blob]
        vals = vals[vals > 0]
        if vals.size:
            u, cnt = np.unique(vals, return_counts=True)
            hit[i] = int(u[np.argmax(cnt)])
        elif flat_ign is not None and flat_ign[blob].any():
            ignored[i] = True
    return hit, ignored, n_gt


def best_threshold(
    response: np.ndarray, hit_key: np.ndarray, counted: np.ndarray, n_gt: int
) -> tuple[float, float, int, int]:
    """The response threshold with the best pooled F1 over the candidates ``counted``.

    Candidates are taken in decreasing response; a candidate is a TP when it is the first to
    hit its CMB (``hit_key >= 0``, one TP per CMB), else an FP. Every cut between two distinct
    responses is evaluated exactly; the threshold is put half-way to the next lower response.
    Returns ``(threshold, f1, tp, fp)``; with no candidate, ``(inf, 0, 0, 0)``.
    """
    r = response[counted]
    if r.size == 0:
        return math.inf, 0.0, 0, 0
    order = np.argsort(-r, kind="stable")
    r, keys = r[order], hit_key[counted][order]
    first = np.zeros(keys.size, dtype=bool)
    pos = keys >= 0
    if pos.any():
        _, idx = np.unique(keys[pos], return_index=True)
        first[np.flatnonzero(pos)[idx]] = True
    tp = np.cumsum(first)
    kept = np.arange(1, r.size + 1)
    f1 = detection_rates(tp, kept - tp, n_gt - tp).f1  # FP = kept - TP, FN = n_gt - TP
    cut = np.r_[r[1:] != r[:-1], True]  # last candidate of each tie group
    f1 = np.where(cut, f1, -1.0)
    i = int(np.argmax(f1))
    nxt = r[i + 1] if i + 1 < r.size else r[i] - 1.0
    return float(0.5 * (r[i] + nxt)), float(f1[i]), int(tp[i]), int(kept[i] - tp[i])


class ClassicalDetector:
    """Multi-scale LoG dark-blob detector with fitted thresholds (see the module docstring)."""

    def __init__(self, params: ClassicalParams | None = None, *, verify_top: int = 3):
        self.params = params or ClassicalParams()
        self.verify_top = int(verify_top)
        self.fit_summary: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """The detector's settings (JSON-able), e.g. for a run record."""
        return {**asdict(self.params), "fit": self.fit_summary}

    def load_config(self, fitted: Mapping[str, Any]) -> None:
        """Take back settings written by :meth:`config` (a run record's ``training.fitted``),
        so that ``cmbbench predict`` runs a fitted detector without fitting it again."""
        values = {k: v for k, v in fitted.items() if k != "fit"}
        self.params = params_from_dict(values)
        self.fit_summary = dict(fitted.get("fit") or {})

    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Fit ``threshold``, ``min_roundness``, ``min_contrast``, ``min_diameter_mm`` and
        ``max_diameter_mm`` for the best pooled lesion-level F1 on ``train`` (``val`` is
        unused). ``config`` may give the ``evaluator`` (or ``rule`` / ``rule_params``) for the
        exact re-scoring and ``out_dir``, where the fitted parameters are written as
        ``classical_log.json``."""
        cases = [c for c in train if c.label is not None]
        if not cases:
            raise InputError("classical_log.fit needs labelled training cases; received none")
        base = self.params
        cands = [extract_candidates(c, base) for c in cases]
        matches = [_match_candidates(case, c) for case, c in zip(cases, cands, strict=True)]
        # one global key per (case, CMB) so a CMB is counted once across candidates
        keys = []
        for k, (hit, _, _) in enumerate(matches):
            keys.append(np.where(hit >= 0, hit + k * 1_000_000, -1))
        hit_key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        ignored = np.concatenate([m[1] for m in matches])
        n_gt = sum(m[2] for m in matches)
        allc = Candidates(
            centre=np.concatenate([c.centre for c in cands]).reshape(-1, 3),
            response=np.concatenate([c.response for c in cands]),
            roundness=np.concatenate([c.roundness for c in cands]),
            contrast=np.concatenate([c.contrast for c in cands]),
            diameter_mm=np.concatenate([c.diameter_mm for c in cands]),
        )
        if len(allc) == 0:
            self.fit_summary = {"n_train": len(cases), "n_candidates": 0, "n_gt": n_gt}
            log.warning("classical_log.fit: no candidates in %d training cases", len(cases))
            return
        grid = list(
            itertools.product(
                (0.0, 0.15, 0.3, 0.45), (0.0, 0.5, 1.0, 2.0), (0.0, 1.5, 2.0), (5.0, 7.0, 10.0, 1e9)
            )
        )
        scored = []
        for rnd, con, dmin, dmax in grid:
            p = replace(
                base,
                min_roundness=rnd,
                min_contrast=con,
                min_diameter_mm=dmin,
                max_diameter_mm=dmax,
            )
            counted = passes_filters(allc, p) & ~ignored
            thr, f1, tp, fp = best_threshold(allc.response, hit_key, counted, n_gt)
            if math.isfinite(thr):
                scored.append((f1, tp, -fp, replace(p, threshold=thr)))
        if not scored:
            self.fit_summary = {"n_train": len(cases), "n_candidates": len(allc), "n_gt": n_gt}
            log.warning("classical_log.fit: no candidate passes any filter setting")
            return
        scored.sort(key=lambda t: (-t[0], -t[1], -t[2], t[3].threshold))
        resp_scale = float(max(np.std(allc.response) / 4, 1e-3))
        top = [replace(t[3], response_scale=resp_scale) for t in scored[: max(self.verify_top, 1)]]
        exact = [self._score_exact(cases, cands, p, config) for p in top]
        best_i = int(np.argmax([e[0] for e in exact]))
        self.params = top[best_i]
        self.fit_summary = {
            "n_train": len(cases),
            "n_candidates": len(allc),
            "n_gt": int(n_gt),
            "grid_points": len(grid),
            "train_f1_fast": float(scored[best_i][0]),
            "train_f1": float(exact[best_i][0]),
            "train_tp_fp_fn": list(exact[best_i][1]),
        }
        log.info("classical_log fitted: %s", self.fit_summary)
        if config.get("out_dir"):
            path = write_json_atomic(Path(config["out_dir"]) / PARAMS_FILE, self.config())
            log.info("classical_log: fitted parameters written to %s", path)

    def _score_exact(
        self,
        cases: Sequence[Case],
        cands: Sequence[Candidates],
        p: ClassicalParams,
        config: Mapping[str, Any],
    ) -> tuple[float, tuple[int, int, int]]:
        """Pooled F1 (and TP, FP, FN) of the painted predictions, scored by the run's
        evaluator (``config["evaluator"]``; else one built from ``rule``/``rule_params``)."""
        from cmbbench.scoring.evaluator import Evaluator

        evaluator = config.get("evaluator") or Evaluator(
            config.get("rule", "overlap"), dict(config.get("rule_params", {}) or {})
        )
        tp = fp = fn = 0
        for case, c in zip(cases, cands, strict=True):
            res = evaluator.evaluate(paint(c, p, case.shape), case, threshold=0.5)
            tp, fp, fn = tp + res.tp, fp + res.fp, fn + res.fn
        f1 = detection_rates(tp, fp, fn).f1
        return (0.0 if math.isnan(f1) else f1), (tp, fp, fn)  # nothing to count ranks lowest

    def predict(self, case: Case) -> Prediction:
        """Probability map (float32, the case's shape) of dark blobs passing the filters."""
        c = extract_candidates(case, self.params)
        prob = paint(c, self.params, case.shape)
        n_kept = int((passes_filters(c, self.params) & (c.response >= self.params.threshold)).sum())
        return Prediction(prob=prob, meta={"n_candidates": len(c), "n_detections": n_kept})


@register_model(
    "classical_log",
    description="Non-learned floor: multi-scale LoG dark-blob detector, thresholds fitted on train",
    kind="detector",
)
def classical_log(**params: Any) -> ClassicalDetector:
    """Build the classical detector; keyword arguments override :class:`ClassicalParams`."""
    return ClassicalDetector(params_from_dict(params))


def params_from_dict(params: Mapping[str, Any]) -> ClassicalParams:
    """:class:`ClassicalParams` from keyword values (unknown names are an error)."""
    known = set(ClassicalParams.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(f"classical_log: unknown parameters {unknown}; known: {sorted(known)}")
    values = dict(params)
    if "sigmas_mm" in values:
        values["sigmas_mm"] = tuple(float(s) for s in values["sigmas_mm"])
    return ClassicalParams(**values)
