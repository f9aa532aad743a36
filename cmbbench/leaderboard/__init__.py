"""Leaderboards built from run records only: tables (Markdown, CSV, HTML) and plots (PNG).

``build_leaderboard(record_paths, out_dir)`` is the entry point; see ``docs/leaderboards.md``.
Nothing here imports torch.
"""

from __future__ import annotations

from cmbbench.leaderboard.build import build_leaderboard, build_tables

__all__ = ["build_leaderboard", "build_tables"]
