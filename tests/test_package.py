"""The package imports silently and fast, without torch, and the CLI answers --version."""

import subprocess
import sys

from typer.testing import CliRunner

import cmbbench
from cmbbench.cli import app


def test_import_is_silent_and_torch_free():
    code = (
        "import sys, cmbbench, cmbbench.scoring.records\n"
        "assert 'torch' not in sys.modules, 'importing cmbbench imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""


def test_version_command():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"cmbbench {cmbbench.__version__}"


def test_unknown_attribute():
    import pytest

    with pytest.raises(AttributeError):
        cmbbench.no_such_thing  # noqa: B018
