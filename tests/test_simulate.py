"""``metamorphosis simulate`` through ``flwr run``: a tiny real simulation, and a crashing ServerApp."""

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.cli import main
from fl_metamorphosis.config import build_config
from fl_metamorphosis.metrics import read_jsonl
from simulations.simulate import SimulationFailed, processes_of, simulate

pytestmark = pytest.mark.slow

SIM_TINY = TINY_OVERRIDES


def test_simulate_three_devices_two_rounds_writes_the_run_folder(tmp_path):
    # a deep run folder: Ray's socket paths must not grow with it (AF_UNIX paths stop at 107 bytes)
    out = tmp_path / ("deep-run-folder-" * 4) / "sim"
    args = ["simulate", "--out", str(out)]
    for item in SIM_TINY:
        args += ["--set", item]
    assert main(args) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sampled"] == 3 and r["answered"] == 3 for r in rows)
    assert rows[0]["epsilon_max"] < rows[1]["epsilon_max"] <= 8.0 + 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "simulate" and summary["federated"]["devices"] == 3
    m = summary["methods"]["metamorphosis"]
    assert 0 <= m["tasks"]["left"]["accuracy"] <= 1 and "left->right" in m["cross_task_attack"]
    devices = summary["federated"]["device_privacy"]
    assert m["dp_sgd"]["epsilon"] == max(d["epsilon"] for d in devices.values())
    assert all(d["rounds_trained"] == 2 for d in devices.values())
    for name in ("report.md", "rounds.png", "attacks.png", "reconstruction_grid.png", "flower.log"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_001.ckpt", "round_002.ckpt"]
    assert processes_of((out / ".flwr").resolve()) == []  # SuperLink, simulation and Ray all stopped


def test_a_crashing_server_app_fails_the_command_and_leaves_no_process(tmp_path):
    app = tmp_path / "crashapp"
    (app / "crashapp").mkdir(parents=True)
    (app / "crashapp" / "__init__.py").write_text("")
    (app / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "crashapp"
        version = "0.1.0"
        license = "Apache-2.0"
        dependencies = ["flwr[simulation]>=1.42.0"]
        [tool.flwr.app]
        publisher = "test"
        [tool.flwr.app.components]
        serverapp = "crashapp.apps:server"
        clientapp = "crashapp.apps:client"
        [tool.flwr.app.config]
        config-path = ""
        out-dir = ""
    """)
    )
    (app / "crashapp" / "apps.py").write_text(
        textwrap.dedent("""
        from flwr.clientapp import ClientApp
        from flwr.serverapp import ServerApp

        client = ClientApp()
        server = ServerApp()

        @server.main()
        def main(grid, context):
            raise RuntimeError("deliberate ServerApp failure")
    """)
    )
    out = tmp_path / "run"
    cfg = build_config(None, SIM_TINY)
    with pytest.raises(SimulationFailed, match="deliberate ServerApp failure|finished:failed"):
        simulate(cfg, out, echo=lambda _line: None, app_dir=app)
    assert processes_of((out / ".flwr").resolve()) == []
    assert os.path.getsize(Path(out) / "flower.log") > 0
