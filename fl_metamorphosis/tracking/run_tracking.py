"""Follow a run folder into MLflow or TensorBoard while the run writes it.

The run folder stays the record: ``TrackedRun`` only reads what the run writes (``metrics.jsonl`` row by
row, then ``summary.json``, report.md and the plots) and copies it to the backend, from the process that
launched the run. Nothing in the training, the ServerApp or the devices knows about tracking, and every
command that writes a run folder (central, simulate, a sweep's cells, a search's trials) is tracked the
same way.

* **Steps.** A row's step is its round (its epoch in a central run, with the method as a prefix when a
  run trains several). ``tracking.json`` in the run folder keeps, per backend, the run id and the last
  step logged of each series, so a resumed run continues the same tracked run and never logs a step twice:
  a row is in ``metrics.jsonl`` only once its round is checkpointed, so a resumed run never redoes it.
* **Nesting.** A sweep or search is a parent run; its cells and trials are runs under it, in its store
  (by default ``mlflow.db`` beside the top run folder: ``runs/mlflow.db`` for ``runs/demo``).
* **Failures.** A backend that fails (an unreachable server, a full disk, a missing package) gets one
  warning, and tracking stops for that run; the run itself, and its own files, go on.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from .base import Tracker, numbers, params_of
from .registry import INSTALL, make_tracker

log = logging.getLogger(__name__)

STATE = "tracking.json"
RUN_FILES = ("report.md", "summary.json", "*.png")


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The whole config as flat ``section.field`` parameters (lists and None as JSON)."""
    return params_of(cfg.experiment_dump())


class TrackedRun:
    """The tracked counterpart of one run folder; a context manager around the run.

    Keyword-only arguments:
        title: the run's name in the backend.
        params: logged once as the run's parameters (default: the config's).
        resume: continue the tracked run that ``tracking.json`` names (a resumed run folder).
        parent: the sweep's or search's tracked run, to nest this one under.
        files: the run folder's files (globs) to log when it ends.
        by_method: a run that trains several methods one after another (``central``): each method's rows are
            their own series, their keys prefixed ``<method>/``.
        poll_s: how often ``metrics.jsonl`` is read while the run goes.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: ExperimentConfig,
        *,
        title: str | None = None,
        params: dict[str, str] | None = None,
        resume: bool = False,
        parent: TrackedRun | None = None,
        files: tuple[str, ...] = RUN_FILES,
        by_method: bool = False,
        poll_s: float = 2.0,
    ):
        self.run_dir, self.tracking = Path(run_dir), cfg.tracking
        self.title = title or self.run_dir.name
        self.params = config_params(cfg) if params is None else params
        self.resume, self.parent, self.files, self.poll_s = resume, parent, files, poll_s
        self.by_method = by_method
        self.tracker: Tracker | None = None
        self.run_id: str | None = None
        self.last_steps: dict[str, int] = {}
        self.final_step: int | None = None  # the step the final figures were logged at, if they were
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> Path:
        """A local backend's folder: beside the top run folder (a sweep's, for its cells)."""
        return self.parent.store if self.parent is not None else self.run_dir.resolve().parent

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def _failed(self, what: str, err: BaseException) -> None:
        log.warning(
            f"tracking ({self.tracking.backend}) failed to {what}: {type(err).__name__}: {err}. The run goes on "
            f"without it; its own files are in {self.run_dir}"
        )
        self.tracker = None

    def __enter__(self) -> TrackedRun:
        if self.tracking.backend == "none":
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state() if self.resume else {}
        try:
            self.tracker = make_tracker(self.tracking)
            parent_id = self.parent.run_id if self.parent is not None and self.parent.active else None
            self.run_id = self.tracker.start(
                self.run_dir, title=self.title, run_id=state.get("run_id"), parent_id=parent_id, store=self.store
            )
            self.last_steps = dict(state.get("last_steps", {}))
            self.final_step = state.get("final_step")
            for series in ({"", *self.last_steps} if state else ()):
                held = self.tracker.last_step(f"{series}/" if series else "")
                self.last_steps[series] = max(self.last_steps.get(series, -1), -1 if held is None else held)
            self._write_state()
            self.tracker.log_params(self.params)
        except ImportError as err:
            self._failed("start", ImportError(f"{err}; install it with {INSTALL}"))
            return self
        except Exception as err:  # noqa: BLE001 - tracking never stops a run
            self._failed("start", err)
            return self
        self._thread = threading.Thread(target=self._follow, name="tracking", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.active:
            return
        self.sync()
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        self.finish(status)

    def _read_state(self) -> dict[str, Any]:
        """This backend's entry of ``tracking.json`` (one per backend: a folder may be in both)."""
        path = self.run_dir / STATE
        state = json.loads(path.read_text()).get(self.tracking.backend, {}) if path.is_file() else {}
        return state if state.get("uri") == self.tracking.uri else {}

    def _write_state(self) -> None:
        path = self.run_dir / STATE
        states = json.loads(path.read_text()) if path.is_file() else {}
        states[self.tracking.backend] = {"uri": self.tracking.uri, "run_id": self.run_id,
                                         "last_steps": self.last_steps, "final_step": self.final_step}  # fmt: skip
        path.write_text(json.dumps(states, indent=1) + "\n")

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.sync()

    def _series(self, row: dict[str, Any]) -> str:
        return str(row["method"]) if self.by_method and "method" in row else ""

    def sync(self) -> None:
        """Log every row of ``metrics.jsonl`` whose step is past its series' last logged one."""
        with self._lock:
            if not self.active or not (self.run_dir / "metrics.jsonl").is_file():
                return
            try:  # not metrics.read_jsonl: that package imports matplotlib, and this runs in every launcher
                lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
                rows = [json.loads(line) for line in lines if line.strip()]
            except (OSError, ValueError):
                return  # a row being written: the next pass reads it whole
            try:
                for row in rows:
                    step = row.get("round", row.get("epoch"))
                    series = self._series(row)
                    if not isinstance(step, int) or step <= self.last_steps.get(series, -1):
                        continue
                    prefix = f"{series}/" if series else ""
                    skip = {"round", "epoch", "method"}
                    self.tracker.log_metrics(step, numbers({k: v for k, v in row.items() if k not in skip}, prefix))
                    self.last_steps[series] = step
                    self._write_state()
            except Exception as err:  # noqa: BLE001 - tracking never stops a run
                self._failed("log a round", err)

    def finish(self, status: str) -> None:
        """Log the run's final figures and files and close the tracked run."""
        with self._lock:
            if not self.active:
                return
            try:
                summary_file = self.run_dir / "summary.json"
                step = max(self.last_steps.values(), default=0)
                # once per step: tracking a finished folder again logs no figure twice
                if summary_file.is_file() and (self.final_step is None or step > self.final_step):
                    figures = json.loads(summary_file.read_text()).get("methods", {})
                    if len(figures) == 1:
                        figures = next(iter(figures.values()))
                    self.tracker.log_metrics(step, numbers(figures, "final."))
                    self.final_step = step
                for pattern in self.files:
                    for path in sorted(self.run_dir.glob(pattern)):
                        self.tracker.log_file(path)
                self.tracker.end(status)
                self._write_state()
            except Exception as err:  # noqa: BLE001 - tracking never stops a run
                self._failed("log the run's results", err)
