"""Exception types. Every error about user input names the case or file and the problem."""

from __future__ import annotations


class CmbbenchError(Exception):
    """Base class of every error cmbbench raises on purpose."""


class InputError(CmbbenchError, ValueError):
    """Bad input data: names the case (or file) and the problem.

    ``str(err)`` is a single line, suitable for a CLI's stderr.
    """

    def __init__(self, problem: str, *, case: str | None = None, path: str | None = None):
        self.problem = problem
        self.case = case
        self.path = str(path) if path is not None else None
        where = []
        if case is not None:
            where.append(f"case {case!r}")
        if self.path is not None:
            where.append(f"file {self.path}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + problem)


class UnknownNameError(CmbbenchError, KeyError):
    """An unknown registry name (model, dataset, rule); the message lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, list(known)
        msg = f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known)) or '(none)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])
