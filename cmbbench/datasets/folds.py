"""k-fold cross-validation folds: deterministic, stratified, saved as a split file.

:func:`make_folds` deals the cases of each stratum (e.g. ``f"{cohort}|{count_bin(n_cmb)}"``)
over ``k`` folds after a sha256-seeded shuffle, carrying the deal across strata so that fold
sizes differ by at most one case; the result depends only on the (id, stratum) pairs and the
seed. A fold file is an ordinary split file (:mod:`cmbbench.datasets.splits`) whose splits
are named ``fold-0`` ... ``fold-<k-1>``, so ``--split-file`` reuses it. :func:`fold_splits`
gives the train / val / test of one fold: the fold is the test part, and the other folds are
split into train and a validation cut (stratified the same way), so that a fold's model and
its tuned post-processing never see its test cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from cmbbench.datasets.splits import SplitDef, make_splits, shuffled_strata
from cmbbench.errors import InputError

FOLD_PREFIX = "fold-"
#: the share of a fold's training part held out to validate (checkpoint choice) and tune
DEFAULT_VAL_FRACTION = 0.2


def fold_name(i: int) -> str:
    """``fold-<i>``: the split name of fold ``i`` in a fold file."""
    return f"{FOLD_PREFIX}{int(i)}"


def make_folds(
    case_ids: Sequence[str], strata: Sequence[str] | None = None, *, k: int, seed: int = 0
) -> SplitDef:
    """``{"fold-0": [...], ..., "fold-<k-1>": [...]}``: ``k`` disjoint, stratified folds
    covering ``case_ids`` (each list sorted). A fold count below 2 or above the number of
    cases is an :class:`InputError` with the numbers."""
    ids = [str(c) for c in case_ids]
    if int(k) != k or k < 2:
        raise InputError(f"k-fold cross-validation needs at least 2 folds; received {k}")
    if k > len(ids):
        raise InputError(
            f"{k} folds need at least {k} cases; the dataset has {len(ids)}: use --folds "
            f"{max(2, len(ids))} or fewer"
        )
    if len(set(ids)) != len(ids):
        raise InputError("duplicate case ids: folds need one id per case")
    labels = ["all"] * len(ids) if strata is None else [str(s) for s in strata]
    if len(labels) != len(ids):
        raise ValueError(f"got {len(ids)} case ids but {len(labels)} strata labels")
    folds: list[list[str]] = [[] for _ in range(k)]
    deal = 0  # the next fold to deal to, carried across strata: sizes differ by <= 1
    strata_ = shuffled_strata(ids, labels, seed, order_key="folds-strata-order", key="folds")
    for members in strata_:
        for cid in members:
            folds[deal % k].append(cid)
            deal += 1
    return {fold_name(i): sorted(f) for i, f in enumerate(folds)}


def folds_of(split_def: SplitDef) -> list[list[str]]:
    """The folds of a fold file's split definition, in fold order (``fold-0`` first); an
    :class:`InputError` when it names no folds or misses one."""
    names = sorted(
        (n for n in split_def if n.startswith(FOLD_PREFIX)),
        key=lambda n: int(n[len(FOLD_PREFIX) :]) if n[len(FOLD_PREFIX) :].isdigit() else -1,
    )
    if not names:
        raise InputError(
            "this split file defines no folds (expected splits named fold-0, fold-1, ...); "
            f"it has {', '.join(sorted(split_def))}"
        )
    expected = [fold_name(i) for i in range(len(names))]
    if names != expected:
        raise InputError(f"fold names must be {', '.join(expected)}; found {', '.join(names)}")
    return [list(split_def[n]) for n in names]


def fold_splits(
    folds: Sequence[Sequence[str]],
    i: int,
    strata: dict[str, str] | None = None,
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SplitDef:
    """``{"train", "val", "test"}`` of fold ``i``: the fold is the test part; the other folds'
    cases are split into train and a ``val_fraction`` validation cut, stratified by
    ``strata`` (``{case id: label}``), deterministically from ``seed`` and ``i``."""
    if not 0 <= i < len(folds):
        raise InputError(
            f"fold {i} does not exist: there are {len(folds)} folds (0-{len(folds) - 1})"
        )
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1); received {val_fraction}")
    rest = [c for j, f in enumerate(folds) if j != i for c in f]
    labels = None if strata is None else [strata.get(c, "all") for c in rest]
    cut = make_splits(
        rest, labels, seed=seed * 1000 + i, fractions=(1 - val_fraction, val_fraction, 0)
    )
    if not cut["train"] or not cut["val"]:
        raise InputError(
            f"fold {i}: its {len(rest)} training cases are too few for a train part and a "
            "validation cut; use fewer folds"
        )
    return {"train": cut["train"], "val": cut["val"], "test": sorted(folds[i])}
