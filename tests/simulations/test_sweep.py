"""The sweep: its grid expands as configured, a bad cell is refused before anything runs, its report pools
seeds and answers per scenario, and an interrupted sweep resumes without redoing finished cells."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_OVERRIDES
from mlflow.tracking import MlflowClient

from fl_metamorphosis.config import ConfigError
from fl_metamorphosis.deployment.flower_processes import processes_of
from fl_metamorphosis.metrics.sweep_report import attack_costs, cell_figures, pool_settings, recommend
from simulations.sweep_config import expand, read_sweep

SWEEP = """
seeds = [1, 2]
set = {tiny}

[[block]]
name = "clean"
partitionings = ["iid", "dirichlet:0.1"]
strategies = [{{ name = "fedavg" }}, {{ name = "fedprox", proximal_mu = [0.01, 0.1] }}]

[[block]]
name = "attacked"
attacks = ["none", "sign_flip:0.34"]
budgets = [4.0]
strategies = [{{ name = "fedavg" }}, {{ name = "fedmedian" }}]
"""


def _write(tmp_path, text=SWEEP, **fmt):
    path = tmp_path / "sweep.toml"
    path.write_text(text.format(tiny=json.dumps([*TINY_OVERRIDES, "federated.num_devices=3"]), **fmt))
    return path


def test_the_grid_expands_as_configured(tmp_path):
    sweep, base = read_sweep(_write(tmp_path))
    cells = expand(sweep, base)
    # clean: (fedavg + 2 fedprox) x 2 partitionings x 2 seeds; attacked: 2 strategies x 2 attacks x 2 seeds
    assert len(cells) == 3 * 2 * 2 + 2 * 2 * 2
    by_key = {c.key: c for c in cells}
    prox = by_key["fedprox_proximal_mu=0.1_dirichlet-0.1_seed2"]
    fed = prox.cfg.federated
    assert (fed.strategy.name, fed.strategy.proximal_mu, fed.partitioning, fed.dirichlet_alpha) == (
        "fedprox", 0.1, "dirichlet", 0.1,
    )  # fmt: skip
    assert prox.cfg.train.seed == 2 and fed.poisoning.attack == "none"
    attacked = by_key["fedmedian_iid_eps=4_sign_flip-0.34_seed1"].cfg
    assert (attacked.federated.poisoning.attack, attacked.federated.poisoning.share) == ("sign_flip", 0.34)
    assert attacked.dp_sgd.target_epsilon == 4.0 and attacked.federated.device_epsilon_budget == 4.0
    assert {c.setting for c in cells if c.seed == 1} == {c.setting for c in cells if c.seed == 2}


def test_two_blocks_asking_for_the_same_experiment_share_one_cell(tmp_path):
    text = SWEEP.replace("budgets = [4.0]\n", "")
    cells = expand(*read_sweep(_write(tmp_path, text)))
    shared = [c for c in cells if c.key == "fedavg_iid_seed1"]
    assert len(shared) == 1 and shared[0].blocks == ("clean", "attacked")


@pytest.mark.parametrize(
    "change, message",
    [
        (("proximal_mu = [0.01, 0.1]", "mu = [0.01]"), "unknown parameter 'mu'"),
        (('"dirichlet:0.1"', '"dirichlet-0.1"'), "partitioning 'dirichlet-0.1'"),
        (('"sign_flip:0.34"', '"sign_flip"'), "give the share of attacking devices"),
        (('name = "fedmedian"', 'name = "krum", num_malicious_nodes = 3'), "cell krum_num_malicious_nodes=3"),
        (("seeds = [1, 2]", "seeds = [1, 1]"), "distinct seeds"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_cell_runs_naming_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        expand(*read_sweep(_write(tmp_path, SWEEP.replace(*change))))


def _cell(setting, seed, acc, attack="none", strategy="fedavg"):
    curve = [{"round": 1, "accuracy": acc / 2}, {"round": 2, "accuracy": acc}]
    figures = {
        "mean_accuracy": acc,
        "curve": curve,
        "epsilon": 3.0,
        "cross_task_attack": {"left->right": 0.2},
        "cross_task_chance": {"left->right": 0.1},
        "ssim": {"left": 0.5},
    }
    return {
        "setting": setting, "blocks": ["b"], "strategy": strategy, "params": (), "partitioning": "iid",
        "budget": None, "attack": attack, "seed": seed, "figures": figures,
    }  # fmt: skip


def test_the_report_pools_seeds_recommends_and_prices_attacks():
    cells = [
        _cell("fedavg_iid", 1, 0.80), _cell("fedavg_iid", 2, 0.70),
        _cell("fedmedian_iid", 1, 0.75, strategy="fedmedian"), _cell("fedmedian_iid", 2, 0.72, strategy="fedmedian"),
        _cell("fedavg_iid_flip", 1, 0.20, "sign_flip:0.2"), _cell("fedavg_iid_flip", 2, 0.30, "sign_flip:0.2"),
        _cell("fedmedian_iid_flip", 1, 0.70, "sign_flip:0.2", "fedmedian"),
        _cell("fedmedian_iid_flip", 2, 0.68, "sign_flip:0.2", "fedmedian"),
    ]  # fmt: skip
    settings = pool_settings(cells)
    fedavg = next(s for s in settings if s["setting"] == "fedavg_iid")
    assert fedavg["accuracy"]["mean"] == pytest.approx(0.75) and fedavg["curve"] == pytest.approx([0.375, 0.75])
    answers = {a["scenario"]: a for a in recommend(settings)}
    clean, flipped = answers["iid, no attack"], answers["iid, sign_flip:0.2"]
    assert clean["best"] == "fedavg_iid" and clean["runner_up"] == "fedmedian_iid" and not clean["separated"]
    assert flipped["best"] == "fedmedian_iid_flip" and flipped["separated"]  # 0.68 > 0.30
    alone = recommend(pool_settings([_cell("a_iid", 1, 0.9), _cell("b_iid", 1, 0.1, strategy="b")]))
    assert not alone[0]["separated"]  # one seed each: nothing to tell them apart with
    costs = {r["strategy"]: r["cost"] for r in attack_costs(settings)}
    assert costs == pytest.approx({"fedavg": 0.75 - 0.25, "fedmedian": 0.735 - 0.69})


INTERRUPTED = """
seeds = [1]
set = {tiny}
[[block]]
name = "two cells"
strategies = [{{ name = "fedavg" }}, {{ name = "fedmedian" }}]
"""


@pytest.mark.slow(seconds=105)
def test_an_interrupted_sweep_resumes_without_redoing_finished_cells(tmp_path):
    # no audit: resuming and reusing cells is the subject, and a sweep of unaudited cells must reuse them too
    tiny = [*TINY_OVERRIDES, "federated.rounds=3", "audit.enabled=false"]
    config = _write(tmp_path, INTERRUPTED.replace("{tiny}", json.dumps(tiny)))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "metamorphosis_cli", "sweep", "--config", str(config), "--out", str(out)]
    cmd += ["--track", "mlflow"]  # every cell a run under the sweep's, across the interruption
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    second = out / "cells" / "fedmedian_iid_seed1" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (second.exists() and second.read_text().strip()):
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.5)
    # the sweep killed outright during the second cell: nothing of it cleans up. Its warm runtime's runner
    # sees its launcher gone and stops, and Ray with it: nothing is left to finish the cell meanwhile
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    runtime = (out / ".runtime").resolve()
    deadline = time.monotonic() + 60
    while processes_of(runtime) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(runtime) == []
    first = out / "cells" / "fedavg_iid_seed1" / "summary.json"
    finished_at = first.stat().st_mtime_ns
    assert json.loads((out / "sweep.json").read_text())["cells_done"] == 1

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert "reusing the finished run" in log and "resuming the interrupted run" in log
    assert first.stat().st_mtime_ns == finished_at  # the finished cell was not run again
    report = json.loads((out / "sweep.json").read_text())
    assert report["cells_done"] == 2 and not report["failed"]
    rows = [json.loads(line) for line in second.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]  # each round once: the resumed cell did not start over
    assert (out / "sweep.md").read_text().count("| iid, no attack |") >= 2
    parent = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the sweep's store holds its cells
    for cell in ("fedavg_iid_seed1", "fedmedian_iid_seed1"):
        run_id = json.loads((out / "cells" / cell / "tracking.json").read_text())["mlflow"]["run_id"]
        tracked = client.get_run(run_id)
        assert tracked.data.tags["mlflow.parentRunId"] == parent and tracked.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "epsilon_max")
        assert sorted(m.step for m in history) == [1, 2, 3]  # the resumed cell: each round once


def test_the_report_plots_accuracy_against_simulated_time_when_the_cells_ran_on_a_fleet(tmp_path):
    from simulations.sweep import write_report
    from simulations.sweep_config import SweepConfig

    cells = [_cell("fedavg_iid", 1, 0.8), _cell("fedavg_iid", 2, 0.7), _cell("fedmedian_iid", 1, 0.6, strategy="m")]
    for cell in cells:
        for i, point in enumerate(cell["figures"]["curve"], 1):
            point["simulated_seconds"] = 40.0 * i
    report = write_report(tmp_path, SweepConfig(), cells, failed={})
    assert report["plots"] == ["sweep_rounds.png", "sweep_final.png", "sweep_simulated_time.png"]
    assert all((tmp_path / p).stat().st_size > 0 for p in report["plots"])
    assert report["settings"][0]["simulated_seconds"] == [40.0, 80.0]
    assert "| iid, no attack | fedavg |" in (tmp_path / "sweep.md").read_text()


def test_a_sweep_run_without_the_audit_still_gets_its_report(tmp_path):
    from simulations.sweep import write_report
    from simulations.sweep_config import SweepConfig

    def unaudited(acc):  # what the ServerApp writes with audit.enabled = false
        history = [{"round": 1, "test_acc.left": acc / 2, "test_acc.right": acc / 2},
                   {"round": 2, "test_acc.left": acc, "test_acc.right": acc - 0.1}]  # fmt: skip
        return {"summary_version": 2, "command": "simulate", "tasks": ["left", "right"], "history": history,
                "audited": False, "dp_sgd": {"epsilon": 4.0}, "device_privacy": {}}  # fmt: skip

    cells = []
    for seed, acc in ((1, 0.8), (2, 0.6)):
        cell = _cell("fedavg_iid", seed, acc)
        cell["figures"] = cell_figures(unaudited(acc))
        cells.append(cell)
    assert cells[0]["figures"]["accuracy"] == {"left": 0.8, "right": pytest.approx(0.7)}  # the last round's
    assert cells[0]["figures"]["epsilon"] == 4.0 and cells[0]["figures"]["cross_task_attack"] == {}
    report = write_report(tmp_path, SweepConfig(), cells, failed={})
    (setting,) = report["settings"]
    assert setting["accuracy"]["mean"] == pytest.approx(0.65) and setting["ssim"] is None
    markdown = (tmp_path / "sweep.md").read_text()
    assert "| iid, no attack | fedavg | 0.650 |" in markdown and "not audited" in markdown
    assert all((tmp_path / p).stat().st_size > 0 for p in report["plots"])
