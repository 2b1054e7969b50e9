"""MLflow: a local store beside the run folders by default, or a team's tracking server.

Nested runs are MLflow's own: a sweep's cells and a search's trials carry ``mlflow.parentRunId``. A
resumed run folder continues its run id, so MLflow shows one run with every round once. MLflow refuses a
parameter logged again with another value; a resume that changes one (``--set federated.rounds=N``) logs
the new value as the tag ``resumed.<key>``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path

from .base import Tracker, in_series

PARAMS_PER_CALL, METRICS_PER_CALL, PARAM_CHARS = 100, 1000, 6000
_ONE_AT_A_TIME = threading.Lock()  # a sweep's parallel cells share one SQLite store: its writers take turns


def _serialised(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with _ONE_AT_A_TIME:
            return method(*args, **kwargs)

    return call


def _artifact_location(uri: str) -> str | None:
    """Beside a local SQLite store; None (the server's own artifact store) for a tracking server. MLflow's
    default for a local store is ``./mlruns`` in whatever folder the command was started from."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = self.run_id = None

    @_serialised
    def start(self, run_dir: Path, *, title: str, run_id: str | None, parent_id: str | None, store: Path) -> str:
        # a server that does not answer fails a call in seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines on creating a store, in every run

        store = Path(store).resolve()
        uri = self.uri or f"sqlite:///{store / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = self.client.create_experiment(self.experiment, artifact_location=_artifact_location(uri))
        else:
            exp_id = exp.experiment_id
        tags = {"run_folder": str(Path(run_dir).resolve())}
        if parent_id is not None:
            tags["mlflow.parentRunId"] = parent_id
        self.run_id = self.client.create_run(exp_id, run_name=title, tags=tags).info.run_id
        return self.run_id

    @_serialised
    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        new = {k: v[:PARAM_CHARS] for k, v in params.items() if k not in logged}
        for k, v in params.items():
            if k in logged and logged[k] != v[:PARAM_CHARS]:
                self.client.set_tag(self.run_id, f"resumed.{k}", v[:PARAM_CHARS])
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_CALL])

    @_serialised
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + METRICS_PER_CALL])

    @_serialised
    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    @_serialised
    def last_step(self, prefix: str) -> int | None:
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if in_series(k, prefix)]
        steps = [m.step for k in keys for m in self.client.get_metric_history(self.run_id, k)]
        return max(steps, default=None)

    @_serialised
    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
