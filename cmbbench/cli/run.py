"""`cmbbench` commands of the run group (registered on the shared app)."""

from __future__ import annotations

from cmbbench.cli._app import app  # noqa: F401
