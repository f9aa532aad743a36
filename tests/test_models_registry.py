"""The model registry: decorator, create/list/info, unknown names, plug-ins, entry points."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmbbench.errors import CmbbenchError, UnknownNameError
from cmbbench.models import registry
from cmbbench.models.registry import (
    PluginError,
    build_model,
    create_model,
    list_models,
    load_plugin,
    model_info,
    register_model,
    unregister_model,
)


class _Counter:
    """A trivial non-network detector (fit/predict)."""

    def fit(self, train, val, config):
        self.n = len(train)

    def predict(self, case):
        raise NotImplementedError


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for n in names:
        if n in registry._REGISTRY:
            unregister_model(n)


def test_register_bare_and_named_detector(cleanup):
    @register_model
    def reg_test_bare():
        """A bare-decorated detector."""
        return _Counter()

    @register_model("reg_test_named", description="named one", kind="detector")
    def _factory(scale: int = 1):
        return _Counter()

    cleanup += ["reg_test_bare", "reg_test_named"]
    assert {"reg_test_bare", "reg_test_named"} <= set(list_models())
    info = model_info("reg_test_bare")
    assert info.description == "A bare-decorated detector."
    assert info.kind == "auto" and info.source == __name__
    built = build_model("reg_test_named", scale=2)
    assert built.kind == "detector" and built.kwargs == {"scale": 2}
    assert isinstance(create_model("reg_test_bare"), _Counter)


def test_off_board_models_are_listed_with_their_reason(cleanup, monkeypatch):
    from typer.testing import CliRunner

    from cmbbench.cli import app
    from cmbbench.cli._app import console

    @register_model("reg_test_retired", kind="detector", off_board="never finds a CMB")
    def _retired():
        return _Counter()

    cleanup += ["reg_test_retired"]
    assert model_info("reg_test_retired").off_board == "never finds a CMB"
    assert "reg_test_retired" in list_models()
    assert "reg_test_retired" not in list_models(on_board=True)
    # the built-in FPN is retired from the default board; the reference U-Net is on it
    board = list_models(on_board=True)
    assert "smp_fpn_r18" not in board and "unet3d" in board
    assert "quarter-resolution" in model_info("smp_fpn_r18").off_board
    r = CliRunner().invoke(app, ["models", "--board"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == board
    monkeypatch.setattr(console, "width", 400)  # one line per model
    r = CliRunner().invoke(app, ["models"])
    assert "off the default board: never finds a CMB" in r.output


def test_bad_factory_results_and_kwargs(cleanup):
    @register_model("reg_test_bad", kind="network")
    def _bad():
        return _Counter()  # a detector, though declared a network

    @register_model("reg_test_junk")
    def _junk():
        return 42

    cleanup += ["reg_test_bad", "reg_test_junk"]
    with pytest.raises(CmbbenchError, match="registered as kind 'network'"):
        create_model("reg_test_bad")
    with pytest.raises(CmbbenchError, match="returned int"):
        create_model("reg_test_junk")
    with pytest.raises(CmbbenchError, match="rejected arguments"):
        create_model("reg_test_junk", nope=1)


def test_network_with_recipe_overrides(cleanup):
    torch = pytest.importorskip("torch")

    @register_model("reg_test_net", recipe={"patch_size": (16, 16, 16)})
    def _net():
        return torch.nn.Conv3d(1, 2, 1), {"lr": 1e-3}

    cleanup.append("reg_test_net")
    built = build_model("reg_test_net")
    assert built.kind == "network"
    assert built.recipe_overrides == {"patch_size": (16, 16, 16), "lr": 1e-3}


def test_duplicate_name_from_other_factory_is_refused(cleanup):
    @register_model("reg_test_dup")
    def _a():
        return _Counter()

    cleanup.append("reg_test_dup")
    with pytest.raises(CmbbenchError, match="already registered"):

        @register_model("reg_test_dup")
        def _b():
            return _Counter()


def test_unknown_name_lists_known():
    with pytest.raises(UnknownNameError) as err:
        create_model("no_such_model")
    msg = str(err.value)
    assert "no_such_model" in msg and "unet3d" in msg and "smp_unet_r18" in msg


def test_baselines_come_through_the_entry_point():
    for name in ("unet3d", "unet3d_small", "unet3d_res", "unet3d_ds", "smp_unet_r18"):
        assert model_info(name).source == "builtin baselines"
    assert model_info("unet3d").recipe["patch_size"] == (40, 40, 40)
    assert model_info("smp_unet_r18").divisor == (32, 32, 8)
    assert model_info("unet3d").divisor == 8


def test_plugin_file_registers_and_reports_source(tmp_path, cleanup):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from cmbbench import register_model

            class Floor:
                def fit(self, train, val, config): pass
                def predict(self, case): return None

            @register_model("reg_test_plugin_model", description="from a file")
            def make():
                return Floor()
            """
        )
    )
    load_plugin(str(plugin))
    cleanup.append("reg_test_plugin_model")
    info = model_info("reg_test_plugin_model")
    assert info.source == f"plugin {plugin.resolve()}" and info.description == "from a file"
    load_plugin(str(plugin))  # loading twice is a no-op, not a duplicate error


def test_plugin_import_failure_names_plugin_with_traceback(tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("import math\n\ndef helper():\n    return 1 / 0\n\nhelper()\n")
    with pytest.raises(PluginError) as err:
        load_plugin(str(plugin))
    msg = str(err.value)
    assert str(plugin) in msg and "ZeroDivisionError" in msg
    assert "Traceback" in msg and "helper()" in msg  # the original traceback text
    with pytest.raises(PluginError, match=r"no_such_plugin_module_xyz.*not on sys\.path"):
        load_plugin("no_such_plugin_module_xyz")
    with pytest.raises(PluginError, match="file not found"):
        load_plugin(str(tmp_path / "missing.py"))


def _fake_entry_points(tmp_path: Path, monkeypatch, body: str, value: str):
    """Install a module on sys.path and an entry point to it (monkeypatched metadata)."""
    (tmp_path / "ep_pkg_mod.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_pkg_mod", raising=False)
    ep = importlib.metadata.EntryPoint(name="thirdparty", value=value, group="cmbbench.models")
    real = importlib.metadata.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        return [*eps, ep] if kw.get("group") == "cmbbench.models" else eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_entry_point_discovery_module_and_factory(tmp_path, monkeypatch, cleanup):
    body = """
        from cmbbench import register_model

        class D:
            def fit(self, train, val, config): pass
            def predict(self, case): return None

        @register_model("reg_test_ep_decorated")
        def decorated():
            return D()

        def plain_factory():
            '''A factory named by the entry point.'''
            return D()
        """
    _fake_entry_points(tmp_path, monkeypatch, body, "ep_pkg_mod:plain_factory")
    cleanup += ["reg_test_ep_decorated", "thirdparty"]
    names = list_models()
    assert "reg_test_ep_decorated" in names and "thirdparty" in names and "unet3d" in names
    assert model_info("thirdparty").source == "entry point thirdparty"
    assert model_info("thirdparty").description == "A factory named by the entry point."
    assert model_info("reg_test_ep_decorated").source == "entry point thirdparty"


def test_failing_entry_point_is_named(tmp_path, monkeypatch):
    _fake_entry_points(tmp_path, monkeypatch, "raise ImportError('needs libfoo')\n", "ep_pkg_mod")
    with pytest.raises(PluginError) as err:
        list_models()
    msg = str(err.value)
    assert "'thirdparty'" in msg and "needs libfoo" in msg and "Traceback" in msg


def test_registry_and_listing_do_not_import_torch():
    code = (
        "import sys\n"
        "from cmbbench.models.registry import list_models, model_info\n"
        "import cmbbench.models.detector\n"
        "names = list_models()\n"
        "assert 'unet3d' in names, names\n"
        "assert 'torch' not in sys.modules, 'listing models imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


# --- the worked examples of docs/adding-a-model.md, executed ---------------------------

_DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-model.md"


def _doc_example(name: str, tmp_path: Path) -> Path:
    """Write the ```python block that follows ``<!-- example: NAME -->`` to tmp_path/NAME."""
    text = _DOC.read_text()
    marker = f"<!-- example: {name} -->"
    assert marker in text, f"{marker} missing from {_DOC}"
    block = text.split(marker, 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    path = tmp_path / name
    path.write_text(block + "\n")
    return path


def test_doc_example_network_plugin(tmp_path, cleanup):
    torch = pytest.importorskip("torch")
    import numpy as np

    from cmbbench.engine.inference import sliding_window_predict
    from cmbbench.models.detector import check_input_size, check_output_shape

    load_plugin(str(_doc_example("tiny_net.py", tmp_path)))
    cleanup.append("tiny_net")
    info = model_info("tiny_net")
    assert info.description == "two-level 3D U-Net (example plug-in)" and info.divisor == 2
    built = build_model("tiny_net", width=4)
    assert built.kind == "network"
    assert built.recipe_overrides == {"patch_size": (32, 32, 16), "lr": 1e-3}
    check_input_size(info, built.recipe_overrides["patch_size"])
    assert check_output_shape(built.model, (16, 16, 8), name="tiny_net") == "softmax2"
    torch.manual_seed(0)
    img = np.random.default_rng(0).normal(size=(20, 18, 9)).astype(np.float32)
    prob = sliding_window_predict(built.model, img, patch_size=(16, 16, 8), divisor=2)
    assert prob.shape == img.shape and np.isfinite(prob).all()
    assert 0 <= prob.min() and prob.max() <= 1


def test_doc_example_detector_plugin(tmp_path, cleanup):
    import numpy as np

    from cmbbench.cases import Case, CaseData
    from cmbbench.models.detector import Detector

    load_plugin(str(_doc_example("darkest_voxels.py", tmp_path)))
    cleanup.append("darkest_voxels")
    assert model_info("darkest_voxels").kind == "detector"

    def make(case_id: str, seed: int, dot: tuple[int, int, int], dark: float = 100.0) -> Case:
        rng = np.random.default_rng(seed)
        img = (1000 + rng.normal(0, 10, (16, 16, 16))).astype(np.float32)
        label = np.zeros(img.shape, np.uint8)
        img[dot] = dark  # a CMB, tens of standard deviations darker than the tissue
        label[dot] = 1
        return Case(case_id, np.eye(4), img.shape, "mask", lambda: CaseData(img, label))

    det = create_model("darkest_voxels")
    assert isinstance(det, Detector)
    det.fit([make("t1", 1, (3, 4, 5)), make("t2", 2, (9, 9, 9))], [], {})
    test = make("x", 3, (12, 2, 7), dark=0.0)
    pred = det.predict(test)
    # only the CMB voxel (darker than the training CMBs) is below the fitted cut-off
    assert pred.kind == "prob" and np.array_equal(pred.prob > 0, test.label > 0)


def test_cli_models_lists_plugins_and_reports_failures(tmp_path, cleanup):
    from typer.testing import CliRunner

    from cmbbench.cli import app

    good = tmp_path / "cli_plugin.py"
    good.write_text(
        "from cmbbench import register_model\n"
        "class D:\n"
        "    def fit(self, train, val, config): pass\n"
        "    def predict(self, case): return None\n"
        "@register_model('reg_test_cli', description='listed by the CLI', kind='detector')\n"
        "def make():\n"
        "    return D()\n"
    )
    cleanup.append("reg_test_cli")
    result = CliRunner().invoke(app, ["models", "--plugin", str(good)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "unet3d" in rows and "builtin baselines" in rows["unet3d"]
    assert "listed by the CLI" in rows["reg_test_cli"] and "detector" in rows["reg_test_cli"]
    bad = tmp_path / "cli_bad_plugin.py"
    bad.write_text("import no_such_dependency_qq\n")
    result = CliRunner().invoke(app, ["models", "--plugin", str(bad)])
    assert isinstance(result.exception, PluginError)
    assert "cli_bad_plugin.py" in str(result.exception)
    assert "no_such_dependency_qq" in str(result.exception)
