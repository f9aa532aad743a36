"""Train / val / test splits: deterministic stratified splitting and split files.

A split definition is a ``dict`` mapping split names to lists of case ids, stored as JSON
(``{"train": [...], "val": [...], "test": [...]}``; top-level keys starting with ``_`` are
metadata and ignored). :func:`make_splits` builds one deterministically from a seed,
stratified by labels such as ``f"{cohort}|{count_bin(n_cmb)}"``, so that every stratum is
spread across the splits and the overall fractions hold. The randomness comes from a
sha256-derived :class:`numpy.random.SeedSequence` (never Python's salted ``hash()``), so a
split is identical across processes, machines and input orders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cmbbench.errors import InputError, UnknownNameError

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)

SplitDef = dict[str, list[str]]
_C = TypeVar("_C")


def count_bin(n_cmb: int) -> str:
    """Bin a per-case CMB count for stratification: ``"0"``, ``"1"``, ``"2-4"``, ``"5-10"``, ``">10"``."""
    n = int(n_cmb)
    if n < 0:
        raise ValueError(f"CMB count must be >= 0, got {n_cmb}")
    if n <= 1:
        return str(n)
    if n <= 4:
        return "2-4"
    if n <= 10:
        return "5-10"
    return ">10"


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"cmbbench.splits|{int(seed)}|{key}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def shuffled_strata(
    ids: Sequence[str], labels: Sequence[str], seed: int, *, order_key: str, key: str
) -> list[list[str]]:
    """The case ids grouped by stratum label, the strata in a seeded order (stream
    ``order_key``) and each stratum's ids shuffled (stream ``f"{key}|{label}"``); depends
    only on the set of (id, label) pairs and ``seed``."""
    groups: dict[str, list[str]] = {}
    for cid, lab in zip(ids, labels, strict=True):
        groups.setdefault(lab, []).append(cid)
    order = sorted(groups)
    order = [order[i] for i in _rng(seed, order_key).permutation(len(order))]
    out = []
    for lab in order:
        members = sorted(groups[lab])
        out.append([members[i] for i in _rng(seed, f"{key}|{lab}").permutation(len(members))])
    return out


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(list(fractions), dtype=np.float64)
    if (
        f.shape != (len(SPLIT_NAMES),)
        or np.any(f < 0)
        or not math.isclose(f.sum(), 1.0, abs_tol=1e-6)
    ):
        raise ValueError(
            f"fractions must be {len(SPLIT_NAMES)} non-negative numbers summing to 1 "
            f"(for {', '.join(SPLIT_NAMES)}), got {tuple(fractions)}"
        )
    return f / f.sum()


def _apportion(n: int, f: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Counts per split for a stratum of ``n`` cases.

    Floors of ``n * f``; when the stratum has at least one case per non-empty split every
    such split gets at least one; leftover cases go to the splits with the largest
    fractional remainder plus the deficit carried over from earlier strata, so the overall
    fractions hold even when every stratum is tiny.
    """
    ideal = n * f
    counts = np.floor(ideal + 1e-9).astype(np.int64)
    nonzero = f > 0
    if n >= int(nonzero.sum()):
        counts = np.where(nonzero, np.maximum(counts, 1), counts)
        while counts.sum() > n:  # the minimum of one pushed us over: take from the largest
            counts[int(np.argmax(counts))] -= 1
    for _ in range(n - int(counts.sum())):
        priority = np.where(nonzero, ideal - counts + carry, -np.inf)
        counts[int(np.argmax(priority))] += 1  # argmax: ties go to the earlier split
    return counts


def make_splits(
    case_ids: Sequence[str],
    strata: Sequence[str] | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> SplitDef:
    """Split ``case_ids`` into ``{"train", "val", "test"}`` deterministically.

    ``strata[i]`` is the stratum label of ``case_ids[i]`` (e.g. ``"3T|2-4"``); each stratum is
    shuffled and spread over the splits in proportion to ``fractions`` (a stratum with at
    least three cases gets at least one case in every split with a non-zero fraction), and
    rounding deficits are carried across strata so the overall sizes match ``fractions``
    to within one case per split. The result depends only on the set of (id, stratum) pairs
    and ``seed`` — not on input order. Each list is sorted.
    """
    ids = [str(c) for c in case_ids]
    f = _check_fractions(fractions)
    if strata is None:
        labels = ["all"] * len(ids)
    else:
        labels = [str(s) for s in strata]
        if len(labels) != len(ids):
            raise ValueError(f"got {len(ids)} case ids but {len(labels)} strata labels")
    seen: set[str] = set()
    dups = sorted({c for c in ids if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if dups:
        raise InputError(f"duplicate case ids: {', '.join(dups[:10])}")

    out: SplitDef = {name: [] for name in SPLIT_NAMES}
    carry = np.zeros(len(SPLIT_NAMES))
    for members in shuffled_strata(ids, labels, seed, order_key="strata-order", key="stratum"):
        counts = _apportion(len(members), f, carry)
        carry += len(members) * f - counts
        start = 0
        for name, k in zip(SPLIT_NAMES, counts, strict=True):
            out[name].extend(members[start : start + int(k)])
            start += int(k)
    return {name: sorted(v) for name, v in out.items()}


def _validate(data: Any, source: str) -> SplitDef:
    if not isinstance(data, dict):
        raise InputError(
            f"a split file must be a JSON object mapping split names to lists of case ids, "
            f"got {type(data).__name__}",
            path=source,
        )
    split_def: SplitDef = {}
    owner: dict[str, str] = {}
    for name, ids in data.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue  # metadata
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise InputError(
                f"split {name!r} must be a list of case-id strings, got {ids!r:.80}", path=source
            )
        for cid in ids:
            if cid in owner:
                where = "twice in" if owner[cid] == name else f"in both {owner[cid]!r} and"
                raise InputError(f"case id {cid!r} appears {where} split {name!r}", path=source)
            owner[cid] = name
        split_def[name] = list(ids)
    if not split_def:
        raise InputError(
            f"no splits defined (expected keys such as {', '.join(SPLIT_NAMES)})", path=source
        )
    return split_def


def load_split_file(path: str | os.PathLike[str]) -> SplitDef:
    """Read a JSON split file ``{"train": [...], "val": [...], "test": [...]}``.

    Any split names are allowed; keys starting with ``_`` are metadata and skipped. Raises
    :class:`InputError` naming the file when it is missing, not JSON, not an object of
    string lists, or when a case id appears twice (within or across splits).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("split file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"unreadable split file ({err})", path=str(p)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"split file is not valid JSON ({err})", path=str(p)) from None
    return _validate(data, str(p))


def save_split_file(
    split_def: dict[str, Sequence[str]],
    path: str | os.PathLike[str],
    *,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``split_def`` as JSON to ``path`` atomically (validated first); ``meta`` goes under ``"_meta"``."""
    from cmbbench.io import write_json_atomic

    data: dict[str, Any] = {k: list(v) for k, v in split_def.items()}
    _validate(data, str(path))
    if meta:
        data["_meta"] = dict(meta)
    return write_json_atomic(path, data)


def select(cases: Sequence[_C], split_def: dict[str, Sequence[str]], split: str) -> list[_C]:
    """The cases of ``split`` (in dataset order).

    Raises :class:`UnknownNameError` listing the valid split names for an unknown ``split``,
    and :class:`InputError` naming the ids of the split that the dataset does not have.
    """
    if split not in split_def:
        raise UnknownNameError("split", split, [k for k in split_def if not k.startswith("_")])
    wanted = list(split_def[split])
    by_id = {getattr(c, "case_id"): c for c in cases}  # noqa: B009  (duck-typed Case)
    missing = [cid for cid in wanted if cid not in by_id]
    if missing:
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise InputError(
            f"split {split!r} names {len(missing)} case id(s) not in the dataset: "
            f"{', '.join(missing[:10])}{more}"
        )
    keep = set(wanted)
    return [c for c in cases if getattr(c, "case_id") in keep]  # noqa: B009


def resolve_split(
    cases: Sequence[_C],
    split: str | None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    strata: Callable[[Sequence[_C]], Sequence[str]] | None = None,
) -> list[_C]:
    """Apply ``split`` to ``cases`` the way every loader does.

    ``split=None`` returns all cases (and computes nothing). Otherwise the split comes from
    ``split_file`` when given, else from :func:`make_splits` with ``strata(cases)`` labels —
    ``strata`` is only called here, so a loader whose strata need every label read (to count
    CMBs) pays that cost only when a split is requested without a split file.
    """
    if split is None:
        return list(cases)
    if split_file is not None:
        split_def = load_split_file(split_file)
    else:
        labels = strata(cases) if strata is not None else None
        split_def = make_splits([getattr(c, "case_id") for c in cases], labels, seed=seed)  # noqa: B009
    return select(cases, split_def, split)
