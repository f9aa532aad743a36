"""Board notes (``notes.toml`` beside the run records) under the tables of their rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_leaderboard import write_records

from cmbbench.errors import InputError
from cmbbench.leaderboard import build_leaderboard, build_tables
from cmbbench.leaderboard.notes import BoardNote, load_notes, notes_for
from cmbbench.leaderboard.store import GroupKey

NOTES = """
[[note]]
model = "weak_net"
text = \"\"\"Trails at this budget:
  a budget effect.\"\"\"

[[note]]
model = "good_net"
track = "full / gpu"
text = "Trained for 10 minutes."

[[note]]
model = "good_net"
version = "2"
text = "Only one seed so far."

[[note]]
model = "not_on_any_table"
text = "Never printed."
"""


def _key(version: str = "1", track: str = "quick / cpu") -> GroupKey:
    return GroupKey("synthetic", version, "test", "overlap", "{}", track)


def test_a_note_applies_to_its_model_version_and_track() -> None:
    anywhere = BoardNote("m", "t")
    assert anywhere.applies(_key(), "m") and not anywhere.applies(_key(), "other")
    on_gpu = BoardNote("m", "t", track="full / gpu")
    assert on_gpu.applies(_key(track="full / gpu"), "m") and not on_gpu.applies(_key(), "m")
    on_v2 = BoardNote("m", "t", version="2")
    assert on_v2.applies(_key("2"), "m") and not on_v2.applies(_key("1"), "m")
    notes = [BoardNote("b", "second"), BoardNote("a", "first"), BoardNote("b", "third")]
    # row order, a model's notes in file order, a model twice in the rows printed once
    assert notes_for(_key(), ["a", "b", "a"], notes) == [
        ("a", "first"),
        ("b", "second"),
        ("b", "third"),
    ]


def test_notes_are_printed_under_the_tables_of_their_rows(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_records(records)
    (records / "notes.toml").write_text(NOTES, encoding="utf-8")
    tables = {(t.key.version, t.key.track): t for t in build_tables([records], n_bootstrap=50)}
    # the TOML's line break inside the text becomes one space
    assert tables[("1", "quick / cpu")].notes == [
        ("weak_net", "Trails at this budget: a budget effect.")
    ]
    assert tables[("1", "full / gpu")].notes == [("good_net", "Trained for 10 minutes.")]
    assert tables[("2", "quick / cpu")].notes == [("good_net", "Only one seed so far.")]

    out = tmp_path / "board"
    build_leaderboard([records], out, n_bootstrap=50)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert md.count("**Notes** on rows of this table:") == 3
    assert "- `weak_net`: Trails at this budget: a budget effect." in md
    assert "Never printed" not in md
    page = (out / "leaderboard.html").read_text(encoding="utf-8")
    assert "<li><code>good_net</code>: Trained for 10 minutes.</li>" in page
    assert "notes" not in (out / "leaderboard.csv").read_text(encoding="utf-8").lower()


def test_a_board_without_notes_has_no_notes_section(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_records(records)
    build_leaderboard([records], tmp_path / "board", n_bootstrap=50)
    assert "**Notes**" not in (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[note]]\nmodel = 'm'\ntext = \n", "cannot read the board notes"),
        ("[[note]]\nmodel = 'm'\n", "entry 1: 'text' (a non-empty string) is required"),
        ("[[note]]\ntext = 't'\n", "entry 1: 'model' (a non-empty string) is required"),
        ("[[note]]\nmodel = 'm'\ntext = 't'\nseed = 1\n", "entry 1: unknown key(s) ['seed']"),
        (
            "[[note]]\nmodel = 'm'\ntext = 't'\nversion = 2.0\n",
            "'version' must be a string, got float",
        ),
        ("[notes]\nmodel = 'm'\n", "unknown table(s) ['notes']"),
        ("note = 'x'\n", "must be an array of tables"),
    ],
)
def test_bad_notes_name_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "notes.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_notes(path)
    assert problem in str(err.value) and str(path) in str(err.value)
