"""Two processes under torchrun (gloo on CPU): DDP training, sharded evaluation, one record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    script = tmp_path / "ddp_run.py"
    out = tmp_path / "run"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            import torch
            torch.set_num_threads(1)
            from cmbbench.models.registry import load_plugin
            from cmbbench.engine.run import run
            load_plugin({PLUGIN!r})
            rec = run("engine_tiny", "engine-cubes", preset="tiny", device="cpu", out={str(out)!r},
                      overrides={{"steps": 6, "val_every": 3, "checkpoint_every": 3}}, n_bootstrap=20)
            rank = os.environ["RANK"]
            with open(os.path.join({str(tmp_path)!r}, f"rank{{rank}}.json"), "w") as fh:
                json.dump({{"n_cases": len(rec.cases), "world": rec.environment["world_size"],
                           "f1": rec.metrics["headline"]["f1_micro"]["value"]}}, fh)
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # both ranks return the same record: all 3 test cases (sharded 2 + 1, gathered), world size 2
    assert ranks[0] == ranks[1]
    assert ranks[0]["n_cases"] == 3 and ranks[0]["world"] == 2
    record = json.loads((out / "record.json").read_text())
    assert [c["case_id"] for c in record["cases"]] == ["cube20", "cube21", "cube22"]
    assert record["training"]["steps"] == 6
    assert [v["step"] for v in record["training"]["validations"]] == [3, 6]
