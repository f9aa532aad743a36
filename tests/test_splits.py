"""Deterministic stratified splits and split files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest

from cmbbench.datasets.splits import (
    count_bin,
    load_split_file,
    make_splits,
    resolve_split,
    save_split_file,
    select,
)
from cmbbench.errors import InputError, UnknownNameError


@dataclass
class _C:
    case_id: str


def _ids(n: int) -> list[str]:
    return [f"sub-{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (1, "1"),
        (2, "2-4"),
        (4, "2-4"),
        (5, "5-10"),
        (10, "5-10"),
        (11, ">10"),
        (300, ">10"),
    ],
)
def test_count_bin(n: int, expected: str) -> None:
    assert count_bin(n) == expected


def test_count_bin_negative() -> None:
    with pytest.raises(ValueError, match="-1"):
        count_bin(-1)


def test_same_seed_same_split_and_order_independent() -> None:
    ids = _ids(50)
    strata = [f"p{i % 3}|{count_bin(i % 7)}" for i in range(50)]
    a = make_splits(ids, strata, seed=3)
    b = make_splits(list(reversed(ids)), list(reversed(strata)), seed=3)
    assert a == b
    assert make_splits(ids, strata, seed=4) != a


def test_split_is_stable_across_processes() -> None:
    # guards against Python's salted hash() sneaking in: a fresh interpreter gets the same split
    code = (
        "import json;from cmbbench.datasets.splits import make_splits;"
        "ids=[f'c{i}' for i in range(40)];"
        "print(json.dumps(make_splits(ids,[f's{i%4}' for i in range(40)],seed=7)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    ids = [f"c{i}" for i in range(40)]
    assert json.loads(out) == make_splits(ids, [f"s{i % 4}" for i in range(40)], seed=7)


def test_partition_and_fractions() -> None:
    ids = _ids(100)
    s = make_splits(ids, seed=0)
    # 100 cases at 0.6/0.2/0.2 -> exactly 60/20/20
    assert [len(s[k]) for k in ("train", "val", "test")] == [60, 20, 20]
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(ids)


def test_every_stratum_spread_across_splits() -> None:
    # 4 strata of 10, 5, 3 and 7 cases: each has >= 3 cases so every split gets >= 1
    sizes = {"A|0": 10, "A|1": 5, "B|2-4": 3, "B|>10": 7}
    ids, strata = [], []
    for lab, n in sizes.items():
        for i in range(n):
            ids.append(f"{lab}-{i}")
            strata.append(lab)
    s = make_splits(ids, strata, seed=1)
    where = {cid: name for name, v in s.items() for cid in v}
    for lab, n in sizes.items():
        got = Counter(where[c] for c, s_ in zip(ids, strata, strict=True) if s_ == lab)
        assert set(got) == {"train", "val", "test"}, (lab, got)
        # within one case of the ideal share per split
        for name, frac in zip(("train", "val", "test"), (0.6, 0.2, 0.2), strict=True):
            assert abs(got[name] - n * frac) <= 1.0 + 1e-9, (lab, name, got)
    # overall: 25 cases -> ideal 15/5/5; carried rounding keeps totals within one
    assert all(abs(len(s[k]) - t) <= 1 for k, t in (("train", 15), ("val", 5), ("test", 5)))


def test_singleton_strata_reach_test() -> None:
    # 30 strata of one case each: the carried deficit must send some of them to val and test
    ids = _ids(30)
    s = make_splits(ids, [f"s{i}" for i in range(30)], seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [18, 6, 6]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fractions"):
        make_splits(_ids(5), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="strata"):
        make_splits(_ids(5), ["a"] * 4)
    with pytest.raises(InputError, match="sub-001"):
        make_splits(["sub-001", "sub-002", "sub-001"])


def test_split_file_round_trip(tmp_path) -> None:
    s = make_splits(_ids(10), seed=2)
    p = save_split_file(s, tmp_path / "split.json", meta={"seed": 2})
    assert load_split_file(p) == s
    assert json.loads(p.read_text())["_meta"] == {"seed": 2}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"train": "sub-1"}', "list of case-id strings"),
        ('{"train": [1]}', "list of case-id strings"),
        ('{"train": ["a"], "test": ["a"]}', "'a' appears in both 'train' and split 'test'"),
        ('{"train": ["a", "a"]}', "twice"),
        ('{"_meta": {}}', "no splits"),
    ],
)
def test_malformed_split_files(tmp_path, content: str, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        load_split_file(p)
    assert str(p) in str(err.value)


def test_missing_split_file(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_split_file(tmp_path / "nope.json")


def test_select() -> None:
    cases = [_C(c) for c in ("a", "b", "c", "d")]
    sd = {"train": ["c", "a"], "val": ["b"], "test": ["d"]}
    assert [c.case_id for c in select(cases, sd, "train")] == ["a", "c"]  # dataset order
    with pytest.raises(UnknownNameError, match="known splits: test, train, val"):
        select(cases, sd, "dev")
    with pytest.raises(InputError, match="not in the dataset: zz"):
        select(cases, {"train": ["a", "zz"]}, "train")


def test_resolve_split_is_lazy(tmp_path) -> None:
    cases = [_C(f"c{i}") for i in range(10)]
    calls = []

    def strata(cs):
        calls.append(1)
        return ["x"] * len(cs)

    assert len(resolve_split(cases, None, strata=strata)) == 10
    assert not calls  # no split requested -> strata never computed
    test = resolve_split(cases, "test", strata=strata, seed=0)
    assert calls and len(test) == 2
    p = save_split_file({"train": ["c1"], "test": ["c2", "c3"]}, tmp_path / "s.json")
    calls.clear()
    assert [c.case_id for c in resolve_split(cases, "test", split_file=p, strata=strata)] == [
        "c2",
        "c3",
    ]
    assert not calls
