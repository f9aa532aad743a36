"""``two_stage``: sensitive candidates, then a small 3D CNN that rejects the false positives.

The classic CMB design (Dou et al., IEEE TMI 2016: a 3D FCN screens SWI volumes for
candidates, a 3D CNN discriminates them; they report 93 % sensitivity at 2.7 FP per scan on
their own data), built from cmbbench's parts:

1. **Stage 1 proposes candidates at high sensitivity.** By default (``stage1="classical_log"``)
   the candidate extraction of the ``classical_log`` detector
   (:func:`cmbbench_baselines.classical.extract_candidates`: local maxima of the multi-scale
   LoG dark-blob response inside the brain mask, each with its segmented blob) at its
   permissive candidate floor: response >= ``stage1_floor`` (default 0.5, in the
   scale-normalised z units of the response; a fitted ``classical_log`` threshold is about
   5), none of its shape filters, the ``max_candidates`` strongest maxima per case (default
   200) less the duplicates inside a stronger candidate's blob (about 105-110 per scan
   remain on the ``quick`` preset). Any other registered *detector* may be named instead
   (``stage1="my_detector"``, its factory keywords in ``stage1_kwargs``): it is fitted on the
   same splits first, and its candidates are the 26-connected components of its probability
   map (or mask) at ``stage1_floor`` (default 0.01, the engine's candidate floor), each
   centred on its maximum. A network cannot be stage 1 inside one run (it would need the
   engine's trainer); an unknown name is an error listing the usable registered models.
2. **Stage 2 scores each candidate** with
   :class:`~cmbbench_baselines.two_stage_net.PatchClassifier` on a fixed-size patch of
   ``patch_size`` voxels (default 16×16×8 (x, y, z): 16×16×24 mm on a 1×1×3 mm grid) of the
   image, normalised per case as the networks' input (``zscore_foreground``), centred on the
   candidate's voxel. Its training set is every stage-1 candidate of the labelled training
   cases, labelled TP when its blob overlaps a ground-truth CMB (a point-annotated CMB: within
   3 mm), FP otherwise, by ``classical_log``'s own matching; candidates in ignore regions are
   left out. Batches are class-balanced: ``positive_fraction`` (default half) are TPs drawn
   with replacement, the FPs are drawn in proportion to their stage-1 response, so that strong
   look-alikes (vessels, other dark structures) are seen more often than noise bumps
   (``negative_sampling="uniform"`` draws them alike). Augmentation: a random shift of up to
   ``shift`` voxels per axis (default ±1 in x and y), random flips along every axis, and the
   engine's intensity jitter (gain U(0.9, 1.1), offset U(−0.1, 0.1), Gaussian noise σ ≤ 0.05,
   in standard deviations of the image). Loss: binary cross-entropy; Adam (``lr`` 1e-3,
   weight decay 1e-4) with a cosine decay.
3. **The operating point is tuned on validation**, as ``classical_log`` tunes its threshold:
   the stage-2 score threshold with the best pooled lesion-level F1 over the validation
   candidates (an exact sweep, one TP per CMB, CMBs that stage 1 missed counting as FN), then
   re-scored with the dataset's evaluator on the painted maps. Without labelled validation
   cases it is tuned on the training candidates (recorded as ``tuned_on``).

**Output**: scored candidates. Each candidate's blob is painted with its stage-2 probability
into a probability map (``Prediction.prob``) whose ``meta["threshold"]`` is the operating
threshold: the counting metrics use the candidates at or above it, and the engine's full FROC
sweeps every candidate scored at or above its candidate floor. (A map rather than ``points``:
the default ``overlap`` rule and the engine's candidate lists need voxels.)

**Budget**: stage 2 trains for the run recipe's ``steps`` (``tiny`` 8, ``quick`` 800,
``full`` 20000; ``--steps`` or the model keyword ``steps`` override it) Adam steps of
``batch_size`` 64 patches. ``quick`` is therefore 800 × 64 patches of 16×16×8 voxels drawn
from the LoG candidates of the quick preset's training scans; measured on two shared CPU
cores a whole ``cmbbench run --model two_stage --preset quick`` took 136-200 s on synthetic
v1.1 (67 training scans) and 280 s on v2.0 (102): stage 1 about 0.7-0.8 s per scan,
0.08-0.13 s per training step, inference 0.4-1.8 s per scan. The network runs channels-last
on the CPU, and on a GPU when the run's device is one (the engine's device choice,
:func:`cmbbench.engine.environment.resolve_device`).

**Recorded** (``config()``, i.e. the run record's ``training.fitted``): the settings, the
operating threshold, the stage-2 weights (float32, base64, about 145 kB, so that
``cmbbench predict`` restores the detector from its record alone), and ``fit``: stage-1
candidate recall on train and val (the fraction of CMBs hit by at least one candidate: the
ceiling of the detector's sensitivity), candidates per scan, the stage-2 rejection rate on
train and val (the fraction of stage-1 candidates scored below the operating threshold),
validation F1 (fast sweep and exact), training loss and time. Deterministic from the run's
seed (initialisation, batch draws and augmentation all come from it; on a GPU cuDNN is put
in deterministic mode while stage 2 runs).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from cmbbench_baselines.classical import (
    Candidates,
    ClassicalParams,
    _match_candidates,
    best_threshold,
    extract_candidates,
    params_from_dict,
)

from cmbbench import register_model
from cmbbench.cases import Case
from cmbbench.errors import CmbbenchError, InputError, UnknownNameError
from cmbbench.io import write_json_atomic
from cmbbench.models.detector import Prediction
from cmbbench.scoring.candidates import DEFAULT_CANDIDATE_FLOOR
from cmbbench.scoring.rates import detection_rates

log = logging.getLogger(__name__)

NAME = "two_stage"
PARAMS_FILE = "two_stage.json"  # the fitted state, written into the run folder
LOG_STAGE1 = "classical_log"
#: one key per (case, CMB) across cases, as classical_log's fit counts them
_CASE_KEY = 1_000_000
#: how a batch's FP patches are drawn: in proportion to their stage-1 response (strong
#: look-alikes such as vessels more often than noise bumps) or uniformly
NEGATIVE_SAMPLING = ("response", "uniform")


@dataclass(frozen=True)
class TwoStageParams:
    """Settings of ``two_stage`` (voxel sizes are (x, y, z) voxels of the case's grid).

    ``stage1``: ``"classical_log"`` (LoG candidate extraction) or a registered detector's name;
    ``stage1_kwargs``: for the LoG stage, :class:`~cmbbench_baselines.classical.ClassicalParams`
    fields (e.g. ``sigmas_mm``), else the detector's factory keywords. ``stage1_floor``: the
    LoG response floor (default 0.5) or the probability floor of a detector's map (default
    0.01). ``max_candidates``: per case, strongest first. ``steps``: stage-2 training steps
    (``None``: the run recipe's ``steps``). ``shift``: random shift (voxels) of a training
    patch around its candidate, per axis.
    """

    stage1: str = LOG_STAGE1
    stage1_kwargs: Mapping[str, Any] = field(default_factory=dict)
    stage1_floor: float | None = None
    max_candidates: int = 200
    patch_size: tuple[int, int, int] = (16, 16, 8)
    shift: tuple[int, int, int] = (1, 1, 0)
    widths: tuple[int, ...] = (8, 16, 16)
    steps: int | None = None
    batch_size: int = 64
    positive_fraction: float = 0.5
    negative_sampling: str = "response"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    flip: bool = True
    intensity: bool = True
    normalize: str = "zscore_foreground"


def params_from_mapping(values: Mapping[str, Any]) -> TwoStageParams:
    """:class:`TwoStageParams` from keyword values (JSON lists accepted for tuples); unknown
    names and out-of-range values are an :class:`~cmbbench.errors.InputError`."""
    known = {f.name for f in fields(TwoStageParams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{NAME}: unknown parameters {unknown}; known: {sorted(known)}")
    v = dict(values)
    for key in ("patch_size", "shift"):
        if key in v:
            t = tuple(int(s) for s in v[key])
            if len(t) != 3:
                raise InputError(f"{NAME}: {key} needs 3 voxel sizes (x, y, z), got {v[key]!r}")
            v[key] = t
    if "widths" in v:
        v["widths"] = tuple(int(w) for w in v["widths"])
    if "stage1_kwargs" in v:
        v["stage1_kwargs"] = dict(v["stage1_kwargs"] or {})
    p = TwoStageParams(**v)
    if min(p.patch_size) < 1 or min(p.shift) < 0 or not p.widths or min(p.widths) < 1:
        raise InputError(f"{NAME}: patch_size and widths must be positive, shift >= 0 ({p})")
    if p.max_candidates < 1 or p.batch_size < 1 or (p.steps is not None and p.steps < 0):
        raise InputError(f"{NAME}: max_candidates, batch_size must be >= 1 and steps >= 0")
    if p.negative_sampling not in NEGATIVE_SAMPLING:
        raise InputError(
            f"{NAME}: negative_sampling must be one of {NEGATIVE_SAMPLING}, got "
            f"{p.negative_sampling!r}"
        )
    if not 0.0 < p.positive_fraction < 1.0:
        raise InputError(f"{NAME}: positive_fraction must be in (0, 1), got {p.positive_fraction}")
    return p


def _jsonable(p: TwoStageParams) -> dict[str, Any]:
    d = asdict(p)
    return {k: (list(x) if isinstance(x, tuple) else x) for k, x in d.items()}


# ----------------------------------------------------------------------------- stage 1
class LogStage1:
    """Stage 1 from ``classical_log``'s candidate extraction (no fit, no shape filters)."""

    name = LOG_STAGE1

    def __init__(self, params: ClassicalParams):
        self.params = params

    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Nothing to fit: the LoG candidates do not depend on the training data."""

    def propose(self, case: Case) -> Candidates:
        """The LoG candidates of ``case`` (strongest first, at most ``max_candidates``)."""
        return extract_candidates(case, self.params)

    def config(self) -> dict[str, Any]:
        """The stage's settings (JSON-able): the LoG parameters it extracts with."""
        return {"name": self.name, "classical_params": asdict(self.params)}

    def load_config(self, fitted: Mapping[str, Any]) -> None:
        """Take back :meth:`config`."""
        self.params = params_from_dict(fitted.get("classical_params") or {})


class DetectorStage1:
    """Stage 1 from a registered detector: fitted on the run's splits, its candidates are the
    26-connected components of its map at ``floor``, strongest (maximum) first."""

    def __init__(self, name: str, det: Any, floor: float, max_candidates: int):
        self.name, self.det = name, det
        self.floor, self.max_candidates = float(floor), int(max_candidates)

    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Fit the stage-1 detector on the same splits and config as ``two_stage``."""
        self.det.fit(train, val, config)

    def propose(self, case: Case) -> Candidates:
        """The components of the detector's probability map (or mask) of ``case``."""
        pred = self.det.predict(case)
        if not isinstance(pred, Prediction) or pred.kind == "points":
            raise CmbbenchError(
                f"{NAME}: stage-1 model {self.name!r} must return a probability map or a mask "
                f"(got {getattr(pred, 'kind', type(pred).__name__)})"
            )
        arr = np.asarray(pred.array, dtype=np.float32)
        if arr.shape != tuple(case.shape):
            raise InputError(
                f"{NAME}: stage-1 map shape {arr.shape} differs from the image {case.shape}",
                case=case.case_id,
            )
        return map_candidates(arr, self.floor, self.max_candidates)

    def config(self) -> dict[str, Any]:
        """The stage's name and the detector's fitted settings (its ``config()``, if any)."""
        describe = getattr(self.det, "config", None)
        return {"name": self.name, "fitted": describe() if callable(describe) else None}

    def load_config(self, fitted: Mapping[str, Any]) -> None:
        """Give the detector back its fitted settings (its ``load_config``)."""
        restore = getattr(self.det, "load_config", None)
        if fitted.get("fitted") is not None:
            if not callable(restore):
                raise CmbbenchError(
                    f"{NAME}: stage-1 detector {self.name!r} cannot be restored (no load_config)"
                )
            restore(fitted["fitted"])


Stage1 = LogStage1 | DetectorStage1


def map_candidates(prob: np.ndarray, floor: float, max_candidates: int) -> Candidates:
    """Candidates of a map ``prob`` (X, Y, Z): 26-connected components of ``prob >= floor``,
    each centred on its first maximal voxel, scored (``response``) by its maximum, its blob its
    voxels; the ``max_candidates`` highest first. Shape features are zero (not computed)."""
    from cmbbench.scoring.components import label_mask

    comps = label_mask(prob >= floor, 26, values=prob)
    n = int(comps.ids.size)
    order = np.argsort(comps.label, kind="stable")
    flat_sorted, lab_sorted = comps.flat[order], comps.label[order]
    starts = np.searchsorted(lab_sorted, np.arange(n + 1))
    blobs = [flat_sorted[starts[k] : starts[k + 1]] for k in range(n)]
    flat_prob = prob.reshape(-1)
    peaks = [int(b[int(np.argmax(flat_prob[b]))]) for b in blobs]
    score = np.asarray([float(flat_prob[p]) for p in peaks], dtype=np.float64)
    keep = np.argsort(-score, kind="stable")[:max_candidates]
    centre = (
        np.stack(np.unravel_index(np.asarray(peaks, dtype=np.intp)[keep], prob.shape), axis=1)
        if n
        else np.zeros((0, 3), dtype=np.intp)
    )
    zeros = np.zeros(len(keep))
    return Candidates(
        centre=centre,
        response=score[keep],
        roundness=zeros,
        contrast=zeros.copy(),
        diameter_mm=zeros.copy(),
        blobs=[blobs[k] for k in keep],
    )


def make_stage1(p: TwoStageParams) -> Stage1:
    """The stage-1 proposer named by ``p.stage1``; an unknown name lists the known models,
    a network or ``two_stage`` itself is refused with the reason."""
    from cmbbench.models.registry import build_model, list_models, model_info

    if p.stage1 == LOG_STAGE1:
        floor = 0.5 if p.stage1_floor is None else float(p.stage1_floor)
        values = {"candidate_floor": floor, "max_candidates": p.max_candidates}
        return LogStage1(params_from_dict({**values, **dict(p.stage1_kwargs)}))
    if p.stage1 == NAME:
        raise CmbbenchError(f"{NAME}: stage 1 cannot be {NAME} itself")
    try:
        info = model_info(p.stage1)
    except UnknownNameError:
        usable = [n for n in list_models() if n != NAME and model_info(n).kind != "network"]
        raise UnknownNameError("stage-1 model", p.stage1, usable) from None
    if info.kind == "network":
        raise CmbbenchError(
            f"{NAME}: stage-1 model {p.stage1!r} is a network; stage 1 must be a detector "
            f"(e.g. {LOG_STAGE1!r}): a network is trained by the engine, not inside a detector"
        )
    built = build_model(p.stage1, **dict(p.stage1_kwargs))
    if built.kind != "detector":
        raise CmbbenchError(f"{NAME}: stage-1 model {p.stage1!r} is a {built.kind}, not a detector")
    floor = DEFAULT_CANDIDATE_FLOOR if p.stage1_floor is None else float(p.stage1_floor)
    return DetectorStage1(p.stage1, built.model, floor, p.max_candidates)


# ----------------------------------------------------------------------------- patches
def patch_box(p: TwoStageParams) -> tuple[int, int, int]:
    """The stored patch size (voxels): ``patch_size`` plus ``2 * shift`` on each axis."""
    return tuple(s + 2 * m for s, m in zip(p.patch_size, p.shift, strict=True))  # type: ignore[return-value]


def crop_patches(
    image: np.ndarray, centres: np.ndarray, size: Sequence[int], fill: float
) -> np.ndarray:
    """float32 ``(N, *size)`` patches of ``image`` (X, Y, Z) whose voxel ``size // 2`` is each
    centre (``(N, 3)`` voxel indices); voxels outside the image are ``fill``."""
    size_a = np.asarray(size, dtype=np.intp)
    half = size_a // 2
    pad = [(int(h), int(s - h)) for h, s in zip(half, size_a, strict=True)]
    padded = np.pad(image.astype(np.float32, copy=False), pad, constant_values=np.float32(fill))
    out = np.empty((len(centres), *size_a.tolist()), dtype=np.float32)
    for i, c in enumerate(np.asarray(centres, dtype=np.intp).reshape(-1, 3)):
        # padded index of image voxel c is c + half: the window starts at c
        out[i] = padded[c[0] : c[0] + size_a[0], c[1] : c[1] + size_a[1], c[2] : c[2] + size_a[2]]
    return out


def case_patches(case: Case, cands: Candidates, p: TwoStageParams) -> np.ndarray:
    """The stored patches ``(N, *patch_box(p))`` of a case's candidates, on the case's image
    normalised by ``p.normalize`` (the engine's per-image normalisation); outside the image
    the patch holds the image's minimum."""
    from cmbbench.engine.normalize import normalizer

    norm = normalizer(p.normalize)(np.asarray(case.image, dtype=np.float32))
    return crop_patches(norm, cands.centre, patch_box(p), float(norm.min()) if norm.size else 0.0)


def centre_crop(patches: np.ndarray, p: TwoStageParams) -> np.ndarray:
    """The unshifted ``patch_size`` window of stored patches ``(N, *patch_box(p))``."""
    sx, sy, sz = p.shift
    px, py, pz = p.patch_size
    return np.ascontiguousarray(patches[:, sx : sx + px, sy : sy + py, sz : sz + pz])


@dataclass
class CandidateSet:
    """Stage-1 candidates of several cases: stored patches ``(N, *patch_box)`` float32,
    ``hit_key`` ``(N,)`` (a (case, CMB) key, -1: no CMB), ``ignored`` ``(N,)`` (in an ignore
    region), ``response`` ``(N,)`` (stage-1 score), ``n_gt`` (CMBs over the cases);
    ``per_case``: each case's candidates (for painting)."""

    patches: np.ndarray
    hit_key: np.ndarray
    response: np.ndarray
    ignored: np.ndarray
    n_gt: int
    per_case: list[Candidates]

    @property
    def recall(self) -> float:
        """The fraction of CMBs hit by at least one candidate (NaN without CMBs)."""
        found = np.unique(self.hit_key[(self.hit_key >= 0) & ~self.ignored]).size
        return found / self.n_gt if self.n_gt else math.nan


def collect(stage1: Stage1, cases: Sequence[Case], p: TwoStageParams) -> CandidateSet:
    """Stage-1 candidates of ``cases``, their patches and their TP/FP labels (classical_log's
    matching); each case's arrays are released after use."""
    patches, keys, ignored, per_case = [], [], [], []
    n_gt = 0
    for k, case in enumerate(cases):
        cands = stage1.propose(case)
        hit, ign, n = _match_candidates(case, cands)
        patches.append(case_patches(case, cands, p))
        keys.append(np.where(hit >= 0, hit + k * _CASE_KEY, -1))
        ignored.append(ign)
        per_case.append(cands)
        n_gt += n
        case.release()
    box = patch_box(p)
    return CandidateSet(
        patches=np.concatenate(patches) if patches else np.zeros((0, *box), np.float32),
        hit_key=np.concatenate(keys) if keys else np.zeros(0, np.int64),
        ignored=np.concatenate(ignored) if ignored else np.zeros(0, bool),
        response=np.concatenate([c.response for c in per_case]) if per_case else np.zeros(0),
        n_gt=int(n_gt),
        per_case=per_case,
    )


# ----------------------------------------------------------------------------- stage 2
@contextlib.contextmanager
def _deterministic_cudnn(device: Any) -> Iterator[None]:
    """cuDNN in deterministic mode (no autotuning) while the block runs on a CUDA device."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def augment_batch(stored: np.ndarray, rng: np.random.Generator, p: TwoStageParams) -> np.ndarray:
    """Training patches ``(B, *patch_size)`` from stored patches ``(B, *patch_box)``: a random
    shift of up to ``p.shift`` voxels, random flips and intensity jitter (the engine's)."""
    from cmbbench.engine.augment import random_flip, random_intensity

    px, py, pz = p.patch_size
    out = np.empty((len(stored), px, py, pz), dtype=np.float32)
    for i, patch in enumerate(stored):
        o = [int(rng.integers(0, 2 * m + 1)) for m in p.shift]
        crop = patch[o[0] : o[0] + px, o[1] : o[1] + py, o[2] : o[2] + pz]
        if p.flip:
            crop = random_flip([crop], rng)[0]
        if p.intensity:
            crop = random_intensity(crop, rng)
        out[i] = crop
    return out


def negative_weights(response: np.ndarray, how: str) -> np.ndarray | None:
    """Sampling probabilities ``(N,)`` of FP candidates with stage-1 ``response`` ``(N,)``:
    ``"response"``: proportional to the response above its minimum (plus 1 % of the range,
    so that none is never drawn); ``"uniform"`` (or all equal): ``None``."""
    if how == "uniform" or response.size == 0:
        return None
    r = response.astype(np.float64) - float(response.min())
    span = float(r.max())
    if not span > 0:
        return None
    w = r + 0.01 * span
    return w / w.sum()


def balanced_batch(
    rng: np.random.Generator,
    pos: np.ndarray,
    neg: np.ndarray,
    size: int,
    fraction: float,
    neg_p: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(size,)`` and labels ``(size,)`` (1.0 = TP): ``round(fraction * size)`` drawn
    with replacement from ``pos`` (at least 1), the rest from ``neg`` with probabilities
    ``neg_p`` (``None``: uniform; all ``pos`` when ``neg`` is empty)."""
    n_pos = size if neg.size == 0 else min(max(round(fraction * size), 1), size)
    parts = [rng.choice(pos, n_pos, replace=True)]
    if size > n_pos:
        parts.append(rng.choice(neg, size - n_pos, replace=True, p=neg_p))
    idx = np.concatenate(parts)
    labels = np.concatenate([np.ones(n_pos), np.zeros(size - n_pos)]).astype(np.float32)
    return idx, labels


def train_stage2(
    data: CandidateSet, p: TwoStageParams, *, steps: int, seed: int, device: Any
) -> tuple[Any, dict[str, Any]]:
    """Train a :class:`~cmbbench_baselines.two_stage_net.PatchClassifier` on ``data``'s
    non-ignored candidates for ``steps`` class-balanced, augmented batches; returns the network
    (eval mode, on ``device``) and a summary (steps, seconds, s/step, mean loss of the last
    50 steps, TP/FP patch counts, parameters)."""
    import torch
    from cmbbench_baselines.two_stage_net import PatchClassifier

    from cmbbench.engine.layout import channels_last_input, to_channels_last

    usable = ~data.ignored
    pos = np.flatnonzero((data.hit_key >= 0) & usable)
    neg = np.flatnonzero((data.hit_key < 0) & usable)
    if pos.size == 0:
        raise InputError(
            f"{NAME}.fit: no stage-1 candidate of the {len(data.per_case)} training cases hits "
            f"a CMB ({data.n_gt} CMBs); stage 2 has nothing to learn (lower stage1_floor?)"
        )
    neg_p = negative_weights(data.response[neg], p.negative_sampling)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = to_channels_last(PatchClassifier(p.patch_size, p.widths).to(device), device)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses: list[float] = []
    t0 = time.perf_counter()
    net.train()
    with _deterministic_cudnn(device):
        for _ in range(steps):
            idx, labels = balanced_batch(rng, pos, neg, p.batch_size, p.positive_fraction, neg_p)
            x = torch.from_numpy(augment_batch(data.patches[idx], rng, p)[:, None]).to(device)
            x = channels_last_input(x, device)
            y = torch.from_numpy(labels).to(device)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    net.eval()
    summary = {
        "steps": int(steps),
        "batch_size": p.batch_size,
        "train_seconds": seconds,
        "seconds_per_step": seconds / steps if steps else 0.0,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "tp_patches": int(pos.size),
        "fp_patches": int(neg.size),
        "n_parameters": int(sum(t.numel() for t in net.parameters())),
    }
    return net, summary


def score_patches(
    net: Any, stored: np.ndarray, p: TwoStageParams, device: Any, batch: int = 512
) -> np.ndarray:
    """Stage-2 CMB probabilities ``(N,)`` float64 of stored patches ``(N, *patch_box(p))``
    (their unshifted centre windows)."""
    import torch

    from cmbbench.engine.layout import channels_last_input, to_channels_last

    to_channels_last(net, device)
    x_all = centre_crop(stored, p)
    out = np.zeros(len(x_all), dtype=np.float64)
    with torch.inference_mode(), _deterministic_cudnn(device):
        for s in range(0, len(x_all), batch):
            x = channels_last_input(torch.from_numpy(x_all[s : s + batch, None]).to(device), device)
            out[s : s + batch] = torch.sigmoid(net(x).float()).cpu().numpy()
    return out


def paint_scores(cands: Candidates, scores: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Probability map float32 ``shape``: each candidate's blob painted with its score in
    [0, 1] (overlapping blobs keep the higher score)."""
    prob = np.zeros(int(np.prod(shape)), dtype=np.float32)
    for blob, s in zip(cands.blobs, scores, strict=True):
        prob[blob] = np.maximum(prob[blob], np.float32(min(max(float(s), 0.0), 1.0)))
    return prob.reshape(tuple(shape))


def encode_state(net: Any) -> list[dict[str, Any]]:
    """The network's state dict as JSON: per tensor its name, dtype, shape and raw
    little-endian bytes in base64 (exact; float32 weights stay float32)."""
    out = []
    for name, t in net.state_dict().items():
        a = t.detach().cpu().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        out.append(
            {
                "name": name,
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"),
            }
        )
    return out


def decode_state(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Inverse of :func:`encode_state`: a state dict of CPU tensors."""
    import torch

    state = {}
    for e in entries:
        raw = base64.b64decode(e["data"])
        a = np.frombuffer(raw, dtype=np.dtype(e["dtype"])).reshape(e["shape"]).copy()
        state[e["name"]] = torch.from_numpy(a)
    return state


def rejection_rate(scores: np.ndarray, threshold: float) -> float | None:
    """The fraction of candidates (scores ``(N,)``) below ``threshold``; None without any."""
    return float(np.mean(scores < threshold)) if scores.size else None


def split_summary(
    split: str, data: CandidateSet | None, scores: np.ndarray | None, threshold: float
) -> dict[str, Any]:
    """What the record keeps of one split's candidates: scans, CMBs, stage-1 recall,
    candidates per scan and the stage-2 rejection rate at ``threshold`` (``None`` values
    for a split without labelled cases)."""
    if data is None or scores is None:
        keys = ("n", "n_gt", "stage1_recall", "candidates_per_case", "rejection_rate")
        return {f"{k}_{split}": (0 if k == "n" else None) for k in keys}
    n = len(data.per_case)
    return {
        f"n_{split}": n,
        f"n_gt_{split}": data.n_gt,
        f"stage1_recall_{split}": None if math.isnan(data.recall) else data.recall,
        f"candidates_per_case_{split}": len(data.hit_key) / n if n else None,
        f"rejection_rate_{split}": rejection_rate(scores, threshold),
    }


def _clamp_threshold(thr: float) -> float:
    """A score threshold in (0, 1]: no candidate at all (inf) keeps nothing (1.0)."""
    if not math.isfinite(thr):
        return 1.0
    return float(min(max(thr, 1e-6), 1.0))


# ----------------------------------------------------------------------------- detector
class TwoStageDetector:
    """Stage-1 candidates scored by a stage-2 patch CNN (see the module docstring)."""

    def __init__(self, params: TwoStageParams | None = None):
        self.params = params or TwoStageParams()
        self.stage1: Stage1 = make_stage1(self.params)  # validates the stage-1 name
        self.net: Any = None
        self.threshold = 0.5
        self.device: Any = None
        self.fit_summary: dict[str, Any] = {}

    def _device(self) -> Any:
        if self.device is None:
            from cmbbench.engine.environment import resolve_device

            self.device = resolve_device("auto")
        return self.device

    def config(self) -> dict[str, Any]:
        """The fitted state (JSON-able): settings, stage 1, threshold, weights, fit summary."""
        return {
            "params": _jsonable(self.params),
            "stage1": self.stage1.config(),
            "threshold": self.threshold,
            "weights": encode_state(self.net) if self.net is not None else None,
            "fit": self.fit_summary,
        }

    def load_config(self, fitted: Mapping[str, Any]) -> None:
        """Take back a state written by :meth:`config` (a run record's ``training.fitted``)."""
        from cmbbench_baselines.two_stage_net import PatchClassifier

        self.params = params_from_mapping(fitted.get("params") or {})
        self.stage1 = make_stage1(self.params)
        self.stage1.load_config(fitted.get("stage1") or {})
        self.threshold = float(fitted["threshold"])
        self.fit_summary = dict(fitted.get("fit") or {})
        if fitted.get("weights") is None:
            raise CmbbenchError(f"{NAME}: the fitted state holds no stage-2 weights")
        net = PatchClassifier(self.params.patch_size, self.params.widths)
        net.load_state_dict(decode_state(fitted["weights"]))
        self.net = net.to(self._device()).eval()

    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Fit stage 1 (a detector's own fit; nothing for the LoG stage), train stage 2 on the
        training candidates and tune the score threshold on the validation candidates.
        ``config``: the engine's (``seed``, ``device``, ``recipe`` for ``steps``, ``evaluator``
        or ``rule``/``rule_params``, ``out_dir`` where ``two_stage.json`` is written)."""
        from cmbbench.engine.environment import resolve_device

        t0 = time.perf_counter()
        p = self.params
        seed = int(config.get("seed", 0))
        self.device = resolve_device(str(config.get("device", "auto")))
        steps = (
            p.steps if p.steps is not None else int((config.get("recipe") or {}).get("steps", 800))
        )
        train_l = [c for c in train if c.label is not None]
        val_l = [c for c in val if c.label is not None]
        if not train_l:
            raise InputError(f"{NAME}.fit needs labelled training cases; received none")
        self.stage1.fit(train, val, config)
        t1 = time.perf_counter()
        tr = collect(self.stage1, train_l, p)
        va = collect(self.stage1, val_l, p) if val_l else None
        stage1_s = time.perf_counter() - t1
        self.net, s2 = train_stage2(tr, p, steps=steps, seed=seed, device=self.device)
        tr_scores = score_patches(self.net, tr.patches, p, self.device)
        va_scores = score_patches(self.net, va.patches, p, self.device) if va is not None else None
        if va is None or va_scores is None:
            log.warning("%s.fit: no labelled validation cases; tuning on the training cases", NAME)
            tune, tune_scores, tune_cases, tuned_on = tr, tr_scores, train_l, "train"
        else:
            tune, tune_scores, tune_cases, tuned_on = va, va_scores, val_l, "val"
        thr, f1_fast, _, _ = best_threshold(tune_scores, tune.hit_key, ~tune.ignored, tune.n_gt)
        self.threshold = _clamp_threshold(thr)
        f1, counts = self._score_exact(tune_cases, tune, tune_scores, config)
        self.fit_summary = {
            "stage1": self.stage1.name,
            **split_summary("train", tr, tr_scores, self.threshold),
            **split_summary("val", va, va_scores, self.threshold),
            "stage1_seconds": stage1_s,
            "stage2": s2,
            "steps_source": "model" if p.steps is not None else "recipe",
            "device": str(self.device),
            "tuned_on": tuned_on,
            "threshold": self.threshold,
            f"{tuned_on}_f1_fast": f1_fast,
            f"{tuned_on}_f1": f1,
            f"{tuned_on}_tp_fp_fn": list(counts),
            "fit_seconds": time.perf_counter() - t0,
        }
        log.info("%s fitted: %s", NAME, self.fit_summary)
        if config.get("out_dir"):
            path = write_json_atomic(Path(config["out_dir"]) / PARAMS_FILE, self.config())
            log.info("%s: fitted state written to %s", NAME, path)

    def _score_exact(
        self,
        cases: Sequence[Case],
        data: CandidateSet,
        scores: np.ndarray,
        config: Mapping[str, Any],
    ) -> tuple[float, tuple[int, int, int]]:
        """Pooled F1 (and TP, FP, FN) of the painted maps of ``cases`` at the operating
        threshold, scored by the run's evaluator (``config["evaluator"]``, else one built from
        ``rule``/``rule_params``)."""
        from cmbbench.scoring.evaluator import Evaluator

        evaluator = config.get("evaluator") or Evaluator(
            config.get("rule", "overlap"), dict(config.get("rule_params", {}) or {})
        )
        tp = fp = fn = 0
        start = 0
        for case, cands in zip(cases, data.per_case, strict=True):
            s = scores[start : start + len(cands)]
            start += len(cands)
            res = evaluator.evaluate(
                paint_scores(cands, s, case.shape), case, threshold=self.threshold
            )
            tp, fp, fn = tp + res.tp, fp + res.fp, fn + res.fn
            case.release()
        f1 = detection_rates(tp, fp, fn).f1
        return (0.0 if math.isnan(f1) else float(f1)), (tp, fp, fn)

    def score_case(self, case: Case) -> tuple[Candidates, np.ndarray]:
        """Stage-1 candidates of ``case`` and their stage-2 probabilities ``(N,)``."""
        if self.net is None:
            raise CmbbenchError(f"{NAME}: predict() before fit() (or load_config())")
        cands = self.stage1.propose(case)
        scores = score_patches(
            self.net, case_patches(case, cands, self.params), self.params, self._device()
        )
        return cands, scores

    def predict(self, case: Case) -> Prediction:
        """Probability map (float32, the case's shape): every stage-1 candidate's blob painted
        with its stage-2 probability; ``meta["threshold"]`` is the tuned operating point."""
        cands, scores = self.score_case(case)
        prob = paint_scores(cands, scores, case.shape)
        n_kept = int((scores >= self.threshold).sum())
        return Prediction(
            prob=prob,
            meta={
                "threshold": self.threshold,
                "n_candidates": len(cands),
                "n_detections": n_kept,
                "rejection_rate": 1.0 - n_kept / len(cands) if len(cands) else 0.0,
            },
        )


@register_model(
    NAME,
    description=(
        "two-stage: classical_log candidates (LoG floor 0.5, 200/case) + 16x16x8-voxel patch "
        "CNN (recipe steps x 64 patches), threshold tuned on val"
    ),
    kind="detector",
)
def two_stage(**params: Any) -> TwoStageDetector:
    """Build ``two_stage``; keyword arguments override :class:`TwoStageParams` (e.g.
    ``stage1="my_detector"``, ``steps=400``)."""
    return TwoStageDetector(params_from_mapping(params))
