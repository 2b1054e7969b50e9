"""Tracking follows a run folder into MLflow and TensorBoard: what the libraries' own readers give back is
what metrics.jsonl holds, a resumed run logs no step twice, runs nest, and a failing backend costs one
warning and nothing of the run."""

import json
import logging
import socket

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.tracking import TrackedRun, config_params  # noqa: E402
from fl_metamorphosis.tracking.base import numbers  # noqa: E402


def _row(r: int) -> dict:
    return {
        "method": "metamorphosis", "round": r, "aggregated": True, "test_acc.left": 0.5 + r / 100,
        "test_acc.right": 0.4 + r / 50, "epsilon_max": 1.5 * r, "released_rows": {"left": 198 + r, "right": 190},
        "withheld": {"left": 0, "right": r % 2}, "released_noise": {"left": 1.0}, "note": "text is not a metric",
        "seconds": 2.25 * r,
    }  # fmt: skip


def _write_rows(run, rows) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finish_files(run) -> None:
    summary = {"methods": {"metamorphosis": {"tasks": {"left": {"accuracy": 0.81}},
                                             "cross_task_attack": {"left->right": {"accuracy": 0.12}}}}}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "report.md").write_text("# report\n")
    plt.figure(figsize=(1, 1))
    plt.savefig(run / "rounds.png")
    plt.close()


def _cfg(backend: str, **tracking):
    return build_config(None, [f"tracking.backend={backend}", *(f"tracking.{k}={v}" for k, v in tracking.items())])


def _expected(rows) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in numbers({k: v for k, v in row.items() if k not in ("round", "method")}).items():
            series.setdefault(key, {})[row["round"]] = value
    return series


def _mlflow(run):
    client = MlflowClient(f"sqlite:///{run.parent / 'mlflow.db'}")
    return client, json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]


def _mlflow_series(client, run_id) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("final.")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _tensorboard_series(run) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {t: sorted((e.step, e.value) for e in events.Scalars(t)) for t in events.Tags()["scalars"]}


def test_mlflow_holds_the_config_every_round_and_the_results_as_metrics_jsonl_does(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg("mlflow")
    rows = [_row(r) for r in (1, 2, 3)]
    with TrackedRun(run, cfg, poll_s=0.05) as tracked:
        _write_rows(run, rows[:2])  # the run writes its rows while the tracker follows
        tracked.sync()
        _write_rows(run, rows)
        _finish_files(run)
    client, run_id = _mlflow(run)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.params == config_params(cfg)
    series = _mlflow_series(client, run_id)
    expected = _expected(rows)
    assert set(series) == set(expected) and "withheld.right" in series and "note" not in series
    for key, by_round in expected.items():
        assert series[key] == sorted(by_round.items()), key
    assert got.data.metrics["final.tasks.left.accuracy"] == 0.81
    assert got.data.metrics["final.cross_task_attack.left_to_right.accuracy"] == 0.12
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.md", "summary.json", "rounds.png"}


def test_a_given_sqlite_store_keeps_its_artifacts_beside_it_not_in_the_working_folder(tmp_path, monkeypatch):
    """MLflow's default artifact root for a local store is ./mlruns wherever the command was started."""
    run, elsewhere = tmp_path / "run", tmp_path / "cwd"
    run.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "team" / "store.db"
    store.parent.mkdir()
    with TrackedRun(run, _cfg("mlflow", uri=f"sqlite:///{store}"), poll_s=0.05):
        _write_rows(run, [_row(1)])
        _finish_files(run)
    assert list(elsewhere.iterdir()) == []
    assert (store.parent / "mlartifacts").is_dir() and any((store.parent / "mlartifacts").rglob("report.md"))


def test_tensorboard_event_files_hold_every_round_as_metrics_jsonl_does(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row(r) for r in (1, 2, 3)]
    _write_rows(run, rows)
    with TrackedRun(run, _cfg("tensorboard"), poll_s=0.05):
        _finish_files(run)
    series = _tensorboard_series(run)
    for key, by_round in _expected(rows).items():
        assert [s for s, _ in series[key]] == sorted(by_round), key
        assert [v for _, v in series[key]] == pytest.approx([by_round[s] for s in sorted(by_round)], rel=1e-6)
    assert series["final.tasks.left.accuracy"] == [(3, pytest.approx(0.81))]


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_resumed_run_continues_its_tracked_run_and_logs_no_step_twice(tmp_path, backend):
    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg(backend)
    with pytest.raises(KeyboardInterrupt), TrackedRun(run, cfg, poll_s=0.05) as first:
        _write_rows(run, [_row(1), _row(2)])
        first.sync()
        raise KeyboardInterrupt  # the launcher stopped after round 2
    states = json.loads((run / "tracking.json").read_text())
    state = states[backend]
    # killed after logging round 2 and before noting it: the backend holds it, the state does not
    state["last_steps"] = {"": 1}
    (run / "tracking.json").write_text(json.dumps(states))
    rows = [_row(r) for r in (1, 2, 3, 4)]
    with TrackedRun(run, cfg, resume=True, poll_s=0.05) as resumed:
        _write_rows(run, rows)  # the resumed run rewrites metrics.jsonl from its checkpoint, then goes on
        _finish_files(run)
    assert resumed.run_id == state["run_id"]  # the same tracked run
    if backend == "mlflow":
        client, run_id = _mlflow(run)
        assert client.get_run(run_id).info.status == "FINISHED"
        series = _mlflow_series(client, run_id)
    else:
        series = {k: v for k, v in _tensorboard_series(run).items() if not k.startswith("final.")}
    for key in _expected(rows):
        assert [s for s, _ in series[key]] == [1, 2, 3, 4], key


def test_runs_nest_under_their_parent(tmp_path):
    cfg = _cfg("mlflow")
    (tmp_path / "sweep" / "cells" / "a").mkdir(parents=True)
    with TrackedRun(tmp_path / "sweep", cfg, title="sweep") as parent:
        with TrackedRun(tmp_path / "sweep" / "cells" / "a", cfg, parent=parent, params={"trial.x": "1"}):
            pass
    # one store, beside the sweep's folder, holds the sweep and its cells
    cell_client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cell_id = json.loads((tmp_path / "sweep" / "cells" / "a" / "tracking.json").read_text())["mlflow"]["run_id"]
    assert cell_client.get_run(cell_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert cell_client.get_run(cell_id).data.params == {"trial.x": "1"}


def test_an_unreachable_tracking_server_costs_one_warning_and_nothing_of_the_run(tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row(r) for r in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="fl_metamorphosis.tracking"):
        with TrackedRun(run, _cfg("mlflow", uri=f"http://127.0.0.1:{port}"), poll_s=0.05) as tracked:
            _write_rows(run, rows)
            tracked.sync()
            _finish_files(run)
    warnings = [r for r in caplog.records if r.name.startswith("fl_metamorphosis.tracking")]
    assert len(warnings) == 1 and "The run goes on without it" in warnings[0].getMessage()
    assert not tracked.active
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "summary.json").exists() and (run / "report.md").exists()


def test_the_track_command_logs_a_finished_run_once_per_backend(tmp_path, capsys):
    from metamorphosis_cli.main import main

    run = tmp_path / "demo"
    run.mkdir()
    (run / "config.json").write_text(build_config(None, ['methods=["metamorphosis"]']).model_dump_json())
    rows = [_row(r) for r in (1, 2, 3)]
    _write_rows(run, rows)
    _finish_files(run)
    assert main(["track", str(run), "--to", "mlflow"]) == 0
    assert main(["track", str(run), "--to", "tensorboard"]) == 0
    assert main(["track", str(run), "--to", "mlflow"]) == 0  # again: the same run, nothing logged twice
    assert set(json.loads((run / "tracking.json").read_text())) == {"mlflow", "tensorboard"}
    client, run_id = _mlflow(run)
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert _mlflow_series(client, run_id)["epsilon_max"] == [(r["round"], r["epsilon_max"]) for r in rows]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "final.tasks.left.accuracy")] == [(3, 0.81)]
    assert [s for s, _ in _tensorboard_series(run)["epsilon_max"]] == [1, 2, 3]
    assert main(["track", str(tmp_path / "absent"), "--to", "mlflow"]) == 2
    assert "no config.json" in capsys.readouterr().err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["track", str(run), "--to", "mlflow", "--uri", f"http://127.0.0.1:{port}"]) == 1
    said = capsys.readouterr().err
    assert said.count("warning: tracking (mlflow) failed to start") == 1 and "The run goes on without it" in said
