"""Properties of score_case over seeded random cases, and the fast implementation against a
slow reference written here (scipy.ndimage.label, per-component loops, brute-force matching)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from cmbbench.scoring.case import score_case
from cmbbench.scoring.components import foreground_indices, label_mask

SEEDS = range(40)
STRUCT = {c: ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[c]) for c in (6, 18, 26)}


def random_case(seed: int, shape=(10, 11, 9)):
    """Ground truth: up to 5 small boxes; prediction: some of them jittered, plus noise."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.float32)
    for _ in range(rng.integers(0, 6)):
        lo = rng.integers(0, np.array(shape) - 1)
        hi = np.minimum(lo + rng.integers(1, 3, size=3), shape)
        gt[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        if rng.random() < 0.7:
            lo2 = np.clip(lo + rng.integers(-1, 2, size=3), 0, np.array(shape) - 1)
            hi2 = np.minimum(lo2 + rng.integers(1, 3, size=3), shape)
            pred[lo2[0] : hi2[0], lo2[1] : hi2[1], lo2[2] : hi2[2]] = rng.uniform(0.5, 1.0)
    for _ in range(rng.integers(0, 4)):
        p = rng.integers(0, shape)
        pred[p[0], p[1], p[2]] = rng.uniform(0.0, 1.0)
    spacing = tuple(float(v) for v in rng.choice([0.5, 1.0, 2.0], size=3))
    return pred, gt, spacing


# ------------------------------------------------------------------ slow reference
def ref_components(mask: np.ndarray, conn: int, spacing):
    """Components by scipy.ndimage.label, one full-volume mask per component."""
    lab, n = ndi.label(mask, structure=STRUCT[conn])
    comps = []
    for k in range(1, n + 1):
        m = lab == k
        idx = np.argwhere(m)
        comps.append({"mask": m, "size": int(m.sum()), "centre": idx.mean(axis=0)})
    return comps


def best_matching(n_pred, n_gt, cand: dict, better):
    """Brute force over all one-to-one matchings of candidate pairs: the best by
    ``better(key_a, key_b)`` where key = (n pairs, total weight)."""
    best = (0, 0.0)
    gts = list(range(n_gt))

    def rec(i, used, count, total):
        nonlocal best
        if i == n_pred:
            if better((count, total), best):
                best = (count, total)
            return
        rec(i + 1, used, count, total)
        for g in gts:
            if g not in used and (i, g) in cand:
                rec(i + 1, used | {g}, count + 1, total + cand[(i, g)])

    rec(0, frozenset(), 0, 0.0)
    return best


def ref_score(pred, gt, spacing, rule, conn=26, max_d=3.0, thr=0.5):
    pm = pred >= thr
    pc, gc = ref_components(pm, conn, spacing), ref_components(gt != 0, conn, spacing)
    sp = np.asarray(spacing)
    if rule == "valdo":
        tp = 0
        claimed: dict[int, list[tuple[float, int]]] = {}
        for i, p in enumerate(pc):
            if not gc:
                continue
            d = [float(np.linalg.norm((p["centre"] - g["centre"]) * sp)) for g in gc]
            j = int(np.argmin(d))
            if d[j] < max_d:
                claimed.setdefault(j, []).append((d[j], i))
        for claims in claimed.values():
            dmin = min(c[0] for c in claims)
            tp += sum(1 for c in claims if c[0] == dmin)
        return tp, len(pc) - tp, len(gc) - len(claimed), None
    cand = {}
    for i, p in enumerate(pc):
        for j, g in enumerate(gc):
            if rule == "overlap":
                ov = int(np.sum(p["mask"] & g["mask"]))
                if ov >= 1:
                    cand[(i, j)] = ov
            else:
                d = float(np.linalg.norm((p["centre"] - g["centre"]) * sp))
                if d <= max_d:
                    cand[(i, j)] = d
    if rule == "overlap":
        count, total = best_matching(len(pc), len(gc), cand, lambda a, b: a > b)
    else:
        count, total = best_matching(
            len(pc),
            len(gc),
            cand,
            lambda a, b: (a[0], -a[1]) > (b[0], -b[1]) or (b == (0, 0.0) and a[0] > 0),
        )
    return count, len(pc) - count, len(gc) - count, total


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("conn", [6, 26])
def test_labelling_matches_scipy(seed, conn):
    pred, gt, _ = random_case(seed)
    mask = (pred > 0) | (gt > 0)
    ref, n = ndi.label(mask, structure=STRUCT[conn])
    flat = foreground_indices(mask)
    for method in ("sparse", "cc3d"):
        c = label_mask(mask, conn, method=method)
        assert c.n == n
        # same partition and the same (scipy raster) order of ids
        assert np.array_equal(c.label + 1, ref.reshape(-1)[flat])
        for k in range(n):
            assert c.sizes[k] == np.sum(ref == k + 1)
            assert np.allclose(c.centre_vox[k], np.argwhere(ref == k + 1).mean(axis=0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["overlap", "distance", "valdo"])
def test_fast_equals_reference(seed, rule):
    pred, gt, spacing = random_case(seed)
    kw = {} if rule == "overlap" else {"max_distance_mm": 3.0}
    r = score_case(pred, gt, spacing=spacing, rule=rule, **kw)
    tp, fp, fn, total = ref_score(pred, gt, spacing, rule)
    assert (r.tp, r.fp, r.fn) == (tp, fp, fn)
    if rule == "overlap":
        assert sum(p.overlap_voxels for p in r.pairs) == total
    elif rule == "distance":
        assert sum(p.distance_mm for p in r.pairs) == pytest.approx(total)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["overlap", "distance", "point"])
def test_count_invariants(seed, rule):
    pred, gt, spacing = random_case(seed)
    r = score_case(
        pred, gt, spacing=spacing, rule=rule, max_distance_mm=None if rule == "overlap" else 2.5
    )
    assert r.tp + r.fn == r.n_gt
    assert r.tp + r.fp == r.n_pred
    assert len(r.pairs) == r.tp == sum(p.matched for p in r.pred) == sum(g.matched for g in r.gt)
    assert len({p.pred_id for p in r.pairs}) == len({p.gt_id for p in r.pairs}) == r.tp


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["overlap", "distance", "valdo", "point"])
def test_perfect_prediction(seed, rule):
    _, gt, spacing = random_case(seed)
    r = score_case(
        gt.copy(),
        gt,
        spacing=spacing,
        rule=rule,
        max_distance_mm=None if rule == "overlap" else 0.5,
    )
    assert r.fp == 0 and r.tp == r.n_gt and r.fn == 0
    if r.n_gt:
        assert r.recall == 1.0
        assert all(p.dice == 1.0 for p in r.pairs) or rule == "point"


@pytest.mark.parametrize("seed", range(20))
def test_relabelling_and_flipping_change_nothing(seed):
    pred, gt, spacing = random_case(seed)
    # instance ids permuted: same counts, same matched structure
    lab, n = ndi.label(gt, structure=STRUCT[26])
    perm = np.random.default_rng(seed).permutation(n) + 1
    relab = np.where(lab > 0, np.concatenate([[0], perm])[lab], 0)
    a = score_case(pred, lab, spacing=spacing, gt_kind="instance")
    b = score_case(pred, relab, spacing=spacing, gt_kind="instance")
    assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn)
    mapping = dict(zip(range(1, n + 1), perm, strict=True))
    assert sum(p.overlap_voxels for p in a.pairs) == sum(p.overlap_voxels for p in b.pairs)
    assert {int(mapping[g.id]): (g.voxels, g.centre_mm) for g in a.gt} == {
        g.id: (g.voxels, g.centre_mm) for g in b.gt
    }
    # flipping every axis reorders components (other ids) but not the counts
    for rule in ("overlap", "distance", "valdo"):
        kw = {} if rule == "overlap" else {"max_distance_mm": 3.0}
        c = score_case(pred, gt, spacing=spacing, rule=rule, **kw)
        d = score_case(
            pred[::-1, ::-1, ::-1], gt[::-1, ::-1, ::-1], spacing=spacing, rule=rule, **kw
        )
        assert (c.tp, c.fp, c.fn) == (d.tp, d.fp, d.fn)


def test_sparse_threshold_choice_is_consistent():
    # a dense random foreground takes the cc3d path, a sparse one the sparse path; both agree
    rng = np.random.default_rng(0)
    dense = rng.random((20, 20, 20)) < 0.3
    for conn in (6, 18, 26):
        a = label_mask(dense, conn)
        b = label_mask(dense, conn, method="sparse")
        assert a.n == b.n and np.array_equal(a.label, b.label)
    assert math.isclose(label_mask(dense, 26).sizes.sum(), dense.sum())
