"""Legend labels and styles of the leaderboard plots (cmbbench.leaderboard.plots)."""

from __future__ import annotations

from types import SimpleNamespace

from cmbbench.leaderboard.plots import _LINES, _color, row_labels, short_hardware

XEON = "cpu (Intel(R) Xeon(R) Processor, 2 cores)"
EPYC = "cpu (AMD EPYC, 2 cores)"


def _table(*rows: tuple[str, str, str]) -> SimpleNamespace:
    return SimpleNamespace(
        rows=[SimpleNamespace(model=m, recipe=r, hardware=h) for m, r, h in rows]
    )


def test_short_hardware_drops_trademarks_and_filler():
    assert short_hardware(XEON) == "cpu (Intel Xeon, 2 cores)"
    assert short_hardware("cuda (NVIDIA H200)") == "cuda (NVIDIA H200)"
    assert short_hardware("cpu (Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz, 6 cores)") == (
        "cpu (Intel Core i7-9750H @ 2.60GHz, 6 cores)"
    )


def test_labels_name_only_what_tells_a_models_rows_apart():
    table = _table(
        ("unet3d", "quick", EPYC),  # alone: the bare name
        ("smp", "quick (patch_size=32x32x16)", EPYC),  # same recipe, other hardware
        ("smp", "quick (patch_size=32x32x16)", XEON),
        ("res", "quick", EPYC),  # same hardware, other recipe
        ("res", "quick (steps=40)", EPYC),
        ("two", "quick", EPYC),  # both differ: recipe, then hardware
        ("two", "quick (steps=40)", XEON),
    )
    assert row_labels(table) == [
        "unet3d",
        "smp [cpu (AMD EPYC, 2 cores)]",
        "smp [cpu (Intel Xeon, 2 cores)]",
        "res [quick]",
        "res [quick (steps=40)]",
        "two [quick, cpu (AMD EPYC, 2 cores)]",
        "two [quick (steps=40), cpu (Intel Xeon, 2 cores)]",
    ]


def test_labels_fall_back_to_hardware_when_nothing_differs():
    # two rows alike in all three (recipes told apart by fingerprint upstream): still labelled
    table = _table(("m", "quick [recipe 1a2b]", EPYC), ("m", "quick [recipe 3c4d]", EPYC))
    assert row_labels(table) == ["m [quick [recipe 1a2b]]", "m [quick [recipe 3c4d]]"]
    same = _table(("m", "quick", EPYC), ("m", "quick", EPYC))
    assert row_labels(same) == ["m [cpu (AMD EPYC, 2 cores)]"] * 2


def test_rows_past_the_tenth_differ_in_line_style():
    # 13 rows: colours C0..C9 then C0..C2 again, the repeats dashed
    styles = [(_color(i), _LINES[i // 10 % 3]) for i in range(13)]
    assert len(set(styles)) == 13
    assert styles[10] == ("C0", "--")
