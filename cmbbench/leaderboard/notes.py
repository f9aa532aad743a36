"""Board notes: what a reader of a table must know about a row that its numbers cannot say.

A records folder may hold a ``notes.toml`` beside the run records; every note applies to one
model, optionally only on one dataset version or one track, and is printed under each table
that has a row of that model (Markdown and HTML; the CSV stays numbers)::

    [[note]]
    model = "smp_unet_r18"
    track = "quick / cpu"          # optional: only tables of this track
    version = "2.0"                # optional: only tables of this dataset version
    text = "Below the floor at 800 CPU steps: a budget effect (docs/training.md)."

The notes are text written by the people who ran the track (a budget effect, a retired
model, a deterministic fit whose seeds are one run three times); nothing of a table's
numbers comes from them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmbbench.errors import InputError
from cmbbench.leaderboard.store import GroupKey

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, as a package (a dependency on 3.10)
    import tomli as tomllib

NOTES_FILE = "notes.toml"
_FIELDS = {"model", "text", "version", "track"}


@dataclass(frozen=True)
class BoardNote:
    """One note: ``text`` under every table with a row of ``model`` (of dataset ``version``
    and ``track`` when they are given)."""

    model: str
    text: str
    version: str | None = None
    track: str | None = None

    def applies(self, key: GroupKey, model: str) -> bool:
        """True for a row of ``model`` in the table ``key``."""
        return (
            self.model == model
            and self.version in (None, key.version)
            and self.track in (None, key.track)
        )


def find_notes_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every ``notes.toml`` named by ``paths`` (files as given, folders searched
    recursively), sorted."""
    found: set[Path] = set()
    for p in (Path(x) for x in paths):
        if p.is_dir():
            found.update(f for f in p.rglob(NOTES_FILE) if f.is_file())
        elif p.is_file() and p.name == NOTES_FILE:
            found.add(p)
    return sorted(found, key=lambda f: f.as_posix())


def load_notes(path: Path) -> list[BoardNote]:
    """The notes of one ``notes.toml``; an :class:`InputError` naming the file and the entry
    for a file that is not TOML, an entry without ``model`` or ``text``, a value that is not
    a string, or an unknown key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"cannot read the board notes: {err}", path=str(path)) from None
    unknown = set(data) - {"note"}
    if unknown:
        raise InputError(
            f"board notes: unknown table(s) {sorted(unknown)}; expected [[note]] entries",
            path=str(path),
        )
    entries = data.get("note", [])
    if not isinstance(entries, list):
        raise InputError(
            "board notes: 'note' must be an array of tables ([[note]])", path=str(path)
        )
    notes = []
    for i, entry in enumerate(entries, start=1):
        where = f"board notes, entry {i}"
        extra = set(entry) - _FIELDS
        if extra:
            raise InputError(
                f"{where}: unknown key(s) {sorted(extra)} (expected: {', '.join(sorted(_FIELDS))})",
                path=str(path),
            )
        for key in ("model", "text"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise InputError(
                    f"{where}: '{key}' (a non-empty string) is required", path=str(path)
                )
        for key in ("version", "track"):
            if key in entry and not isinstance(entry[key], str):
                raise InputError(
                    f"{where}: '{key}' must be a string, got {type(entry[key]).__name__}",
                    path=str(path),
                )
        notes.append(
            BoardNote(
                model=entry["model"],
                text=" ".join(entry["text"].split()),
                version=entry.get("version"),
                track=entry.get("track"),
            )
        )
    return notes


def find_and_load_notes(paths: Iterable[str | os.PathLike[str]]) -> list[BoardNote]:
    """The notes of every ``notes.toml`` under ``paths``, in file order."""
    return [n for f in find_notes_files(paths) for n in load_notes(f)]


def notes_for(
    key: GroupKey, models: Sequence[str], notes: Sequence[BoardNote]
) -> list[tuple[str, str]]:
    """``(model, text)`` of the notes that apply to the rows ``models`` of table ``key``, in
    row order (a model's notes in file order)."""
    out: list[tuple[str, str]] = []
    for model in dict.fromkeys(models):
        out += [(model, n.text) for n in notes if n.applies(key, model)]
    return out
