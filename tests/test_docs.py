"""The documentation's examples, checked against the code.

* Every ``cmbbench ...`` command line in a shell block of ``README.md`` and ``docs/*.md``
  must parse against the real CLI: the sub-command exists, every option exists and every
  value converts to the option's type (nothing is run).
* Every ```python block of the docs is executed on small data that the test builds: the
  tiny synthetic preset instead of the default one, fixture trees with the real VALDO /
  nnU-Net layouts instead of the user's folders (see ``_PYTHON_SETUP``). A block that needs
  a trained network is marked in the Markdown with ``<!-- docs-test: skip REASON -->`` just
  before it and is covered by the named test instead.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]

_BLOCK = re.compile(
    r"(<!--(?P<note>[^>]*)-->\s*\n)?```(?P<lang>[A-Za-z]*)\n(?P<body>.*?)\n```", re.S
)
_SHELL = {"", "bash", "console", "sh", "shell"}
# shell variables used in examples, and a value of the right type for each
_VARS = {"model": "unet3d", "seed": "0", "nnUNet_raw": "nnunet_raw"}


def _blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, body, preceding HTML comment)`` for every fenced block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(m["lang"], m["body"], (m["note"] or "").strip()) for m in _BLOCK.finditer(text)]


def _command_lines(body: str) -> list[str]:
    """The ``cmbbench`` invocations of a shell block, continuations joined, prompts removed."""
    lines, current = [], ""
    for raw in body.splitlines():
        line = re.sub(r"^\s*(\$|>)\s?", "", raw)
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    out = []
    for line in lines:
        line = line.strip()
        for var, value in _VARS.items():
            line = line.replace(f"${var}", value)
        line = line.replace("$(which cmbbench)", "cmbbench")
        # `torchrun ... -m cmbbench.cli run ...` / `torchrun ... cmbbench run ...`
        line = re.sub(r"^torchrun .*?(-m cmbbench\.cli|cmbbench) ", "cmbbench ", line)
        if line.startswith("cmbbench ") or line == "cmbbench":
            assert "$" not in line.split("#")[0], f"unknown shell variable in: {line}"
            out.append(line)
    return out


_COMMANDS = [
    pytest.param(line, id=f"{path.name}:{line[:60]}")
    for path in DOCS
    for lang, body, _ in _blocks(path)
    if lang in _SHELL
    for line in _command_lines(body)
]


def test_docs_show_commands():
    assert len(_COMMANDS) >= 20, "the docs should show the CLI"


def _parse(argv: list[str]) -> click.Context:
    """Parse ``argv`` (without the program name) down to the leaf command; raise on errors."""
    import typer.main

    from cmbbench.cli import app

    cmd: click.Command = typer.main.get_command(app)
    ctx = cmd.make_context("cmbbench", list(argv))
    while isinstance(cmd, click.Group):
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = ctx.protected_args
        rest = [*protected, *ctx.args]
        assert rest, "a group was called without a sub-command"
        _, sub, sub_args = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"unknown sub-command in {argv}"
        cmd, ctx = sub, sub.make_context(sub.name, sub_args, parent=ctx)
    return ctx


@pytest.mark.parametrize("line", _COMMANDS)
def test_docs_command_parses(line: str):
    argv = shlex.split(line, comments=True)[1:]
    if argv in ([], ["--help"], ["--version"]):
        return
    try:
        _parse(argv)
    except click.exceptions.Exit:  # an eager option such as --help
        pass
    except click.UsageError as err:
        pytest.fail(f"documented command does not parse: {line}\n{err.format_message()}")


# --- python blocks -----------------------------------------------------------------------


def _tiny_synthetic(code: str) -> str:
    """Examples load the default synthetic preset (120 subjects); tests use ``tiny``."""
    code = re.sub(r'load_dataset\("synthetic"\)', 'load_dataset("synthetic", preset="tiny")', code)
    code = re.sub(
        r'load_dataset\("synthetic", split=',
        'load_dataset("synthetic", preset="tiny", split=',
        code,
    )
    return code.replace('preset="quick"', 'preset="tiny"')


def _valdo_root(tmp: Path) -> str:
    from fixture_trees import write_valdo_tree

    root = tmp / "VALDO" / "Task2"
    write_valdo_tree(root, {"sub-101": 2, "sub-102": 0, "sub-221": 1, "sub-301": 3, "sub-302": 1})
    return root.as_posix()


def _score_folders(tmp: Path) -> None:
    """preds/ and labels/ with two cases (what scoring.md's example reads)."""
    from fixture_trees import las_affine, write_nifti

    rng = np.random.default_rng(0)
    for case in ("case_001", "case_002"):
        gt = np.zeros((24, 24, 8), np.uint8)
        gt[4:6, 4:6, 2] = 1
        gt[15:17, 10:12, 5] = 1
        pred = np.where(gt > 0, 0.9, 0.0) + 0.2 * rng.random(gt.shape)
        aff = las_affine((1.0, 1.0, 3.0))
        write_nifti(tmp / "labels" / f"{case}.nii.gz", gt, aff)
        write_nifti(tmp / "preds" / f"{case}.nii.gz", pred.clip(0, 1).astype(np.float32), aff)


def _write_record(path: Path) -> None:
    """A real run record: the classical floor on the tiny synthetic preset (seconds)."""
    import cmbbench

    cmbbench.run(
        "classical_log", "synthetic", dataset_options={"preset": "tiny"}, out=path.parent,
        n_bootstrap=50,
    )  # fmt: skip
    assert path.is_file()


def _python_blocks() -> list[pytest.param]:
    params = []
    for path in DOCS:
        for i, (lang, body, note) in enumerate(_blocks(path)):
            if lang != "python":
                continue
            pid = f"{path.name}:block{i}"
            if note.startswith("docs-test: skip"):
                params.append(pytest.param(path, body, id=pid, marks=pytest.mark.skip(note)))
            else:
                params.append(pytest.param(path, body, id=pid))
    return params


@pytest.mark.parametrize(("path", "code"), _python_blocks())
def test_docs_python_block_runs(path: Path, code: str, tmp_path: Path, monkeypatch) -> None:
    if path.name in ("adding-a-model.md", "leaderboards.md"):
        pytest.skip("executed with its own data in test_models_registry.py / test_leaderboard.py")
    monkeypatch.setenv("CMBBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    code = _tiny_synthetic(code)
    if "/data/VALDO/Task2" in code or "ROOT" in code:
        code = code.replace("/data/VALDO/Task2", _valdo_root(tmp_path))
    if "preds/" in code and "labels/" in code:
        _score_folders(tmp_path)
    for rel in re.findall(r'"(runs/[^"]+/record\.json)"', code):
        _write_record(tmp_path / rel)
    if "import cmbbench" not in code:
        code = "import cmbbench\n" + code
    namespace: dict = {"ROOT": (tmp_path / "VALDO" / "Task2").as_posix()}
    exec(compile(code, str(path), "exec"), namespace)
