"""``metamorphosis simulate`` through ``flwr run``: a tiny real simulation, and a crashing ServerApp."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES
from inprocess_grid import InProcessGrid
from mlflow.tracking import MlflowClient

from clients.client_app import app as client_app
from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.flower_processes import RunFailed, processes_of
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from metamorphosis_cli.main import main
from server.round_loop import run_federated
from simulations.simulate import simulate

pytestmark = pytest.mark.slow

SIM_TINY = TINY_OVERRIDES


@pytest.mark.slow(seconds=35)
def test_simulate_three_devices_two_rounds_writes_the_run_folder(tmp_path, capsys):
    # a deep run folder: Ray's socket paths must not grow with it (AF_UNIX paths stop at 107 bytes)
    out = tmp_path / ("deep-run-folder-" * 4) / "sim"
    args = ["simulate", "--out", str(out), "--track", "mlflow"]
    with socket.socket() as s:  # a tracking server that does not answer: one warning, and the whole run
        s.bind(("127.0.0.1", 0))
        args += ["--set", f"tracking.uri=http://127.0.0.1:{s.getsockname()[1]}"]
    for item in SIM_TINY:
        args += ["--set", item]
    assert main(args) == 0
    assert capsys.readouterr().err.count("warning: tracking (mlflow) failed") == 1
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
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "initial.ckpt",
        "round_001.ckpt",
        "round_002.ckpt",
    ]
    assert processes_of((out / ".flwr").resolve()) == []  # SuperLink, simulation and Ray all stopped


@pytest.mark.slow(seconds=15)
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
        resume = false
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
    with pytest.raises(RunFailed, match="deliberate ServerApp failure|finished:failed"):
        simulate(cfg, out, echo=lambda _line: None, app_dir=app)
    assert processes_of((out / ".flwr").resolve()) == []
    assert os.path.getsize(Path(out) / "flower.log") > 0


RESUMED = [*SIM_TINY, "federated.rounds=4", "audit.enabled=false"]  # the killed and resumed run's settings


def _simulate_args(out, *extra):
    args = ["simulate", "--out", str(out)]
    for item in [*RESUMED, *extra]:
        args += ["--set", item]
    return args


@pytest.mark.slow(seconds=70)
def test_a_simulation_killed_after_round_2_resumes_to_the_uninterrupted_figures(tmp_path):
    out = tmp_path / "killed"
    launcher = subprocess.Popen(  # tracked in MLflow: the resumed run must continue its tracked run
        [sys.executable, "-m", "metamorphosis_cli", *_simulate_args(out), "--track", "mlflow"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "round_002.ckpt").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run died before round 2"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGKILL)  # no clean-up of any kind: its SuperLink and Ray go on running
    launcher.wait()
    assert (out / "summary.json").exists() is False
    assert main(["simulate", "--resume", str(out)]) == 0  # stops the orphans first, then goes on
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # one row per round: no duplicate, no gap
    assert processes_of((out / ".flwr").resolve()) == []  # nothing of either launch left behind
    # one tracked run (the resume took --track from the run's config), each round once, as metrics.jsonl
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    history = client.get_metric_history(run_id, "epsilon_max")
    assert sorted((m.step, m.value) for m in history) == [(r["round"], r["epsilon_max"]) for r in rows]

    # the same run uninterrupted, through the same ServerApp loop and ClientApp in this process (a cold
    # simulation of it cost this test a third of its time)
    cfg, whole = build_config(None, RESUMED), tmp_path / "whole"
    grid = InProcessGrid(client_app, 3, whole / "devices", policy=DevicePolicy.from_config(cfg))
    run_federated(grid, cfg, whole, audit=False)
    resumed_summary = json.loads((out / "summary.json").read_text())
    assert resumed_summary["resumed_from_round"] >= 2  # from a checkpoint, not from scratch
    resumed = resumed_summary["device_privacy"]
    uninterrupted = json.loads((whole / "summary.json").read_text())["device_privacy"]
    assert len(resumed) == 3
    for device, figures in uninterrupted.items():  # each device's epsilon: exactly the same
        assert resumed[device]["epsilon"] == figures["epsilon"] and resumed[device]["steps"] == figures["steps"]
    assert rows[-1]["epsilon_max"] == read_jsonl(whole / "metrics.jsonl")[-1]["epsilon_max"]


def test_resume_refuses_a_change_to_a_setting_the_finished_rounds_used(tmp_path, capsys):
    (tmp_path / "config.json").write_text(build_config(None, SIM_TINY).model_dump_json())
    assert main(["simulate", "--resume", str(tmp_path), "--set", "dp_sgd.target_epsilon=4"]) == 2
    assert "cannot change on --resume" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(tmp_path / "absent")]) == 2
