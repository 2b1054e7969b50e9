"""A warm runtime: one start-up for every run of a sweep, a comparison or a search.

A cold ``simulate`` pays, for each run, a SuperLink, a ``flwr-simulation`` process, a Ray instance and the
torch and Opacus imports of the ServerApp and of every device actor. A sweep of seventy cells paid that
seventy times. ``WarmRuntime`` starts ``slots`` runners (``warm_runner.py``) once; each has imported the
App and holds a Ray instance, and runs Flower's simulation engine for one run after another: the call
that ``flwr-simulation`` makes for each run of a SuperLink, made in a process that stays.

Why not ``flwr run`` against a SuperLink that stays up (Flower 1.42 can: ``flower-superlink
--simulation``, ``RAY_ADDRESS`` for a Ray that stays up)? The SuperLink would still start a new
``flwr-simulation`` process for each run, which imports Flower, torch and the App again, and Flower's Ray
backend starts new device actors for each run, each importing torch, Opacus and the device app. What stays
warm here is what costs: the imports of the ServerApp's side, the Ray instance, the device actors
(``kept_actors.py``) and the launch. Each run keeps its own run folder and its own devices' state folders
(``out/devices/<partition-id>``); what a device receives or releases does not change (docs/federated.md).

Runs side by side (a sweep's ``parallel``) use one slot each, each slot its own Ray instance with its share of
the cores, as cold cells get. Every process of the runtime carries ``FLWR_HOME=<home>`` in its environment:
``close()`` (the sweep ends, fails or is interrupted) stops them, a runner whose launcher was killed stops
itself (it watches its parent), and a new runtime in the same ``home`` first stops what a killed one left.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.deployment.flower_processes import RunFailed, relay, stop_processes
from fl_metamorphosis.environment import cores_from_env

from .simulate import APP_DIR, flower_env  # the cold launcher's environment, so both run alike
from .warm_runner import DONE_MARK, FRESH_ACTORS, READY


class _Runner:
    """One slot: a ``warm_runner`` process, started on first use and again after it was stopped."""

    def __init__(self, app_dir: Path, cpus: int, env: dict[str, str], log: Path, keep_actors: bool) -> None:
        self.app_dir, self.cpus, self.env, self.log, self.keep_actors = app_dir, cpus, env, log, keep_actors
        self.proc: subprocess.Popen[str] | None = None
        self.ray_tmp: Path | None = None

    def start(self) -> None:
        # Ray's AF_UNIX sockets live under RAY_TMPDIR: a short path (108-byte limit), one per slot
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="mm-ray-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulations.warm_runner", str(self.app_dir), str(self.cpus)]
            + ([] if self.keep_actors else [FRESH_ACTORS]),
            env={**self.env, "RAY_TMPDIR": str(self.ray_tmp)},
            cwd=self.log.parent,  # Flower and Ray write here, never in the checkout
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        with self.log.open("a") as log:
            if self._read_until(READY, log, lambda _line: None) is None:
                self.stop()
                raise RunFailed(f"the warm runtime's runner did not start; see {self.log}")

    def _read_until(self, mark: str, log: IO[str], echo: Callable[[str], None]) -> str | None:
        """Copy the runner's lines to ``log`` (echoing the progress) up to the one starting with ``mark``;
        its rest, or None if the runner ended first."""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith(mark):
                return line[len(mark) :]
            relay(line, log, echo)
        return None

    def run(self, job: dict[str, Any], out: Path, echo: Callable[[str], None]) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        with (out / "flower.log").open("w") as log:
            try:
                self.proc.stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            except OSError:  # it ended since its last run: the check below says so
                pass
            result = self._read_until(DONE_MARK, log, echo)
        if result is None:
            self.stop()
            raise RunFailed(f"the warm runtime's runner ended during the run; see {out / 'flower.log'}")
        outcome = json.loads(result)
        if not outcome["ok"]:
            raise RunFailed(f"the run failed: {outcome['error']}; full log in {out / 'flower.log'}")
        if not (out / "summary.json").exists():
            raise RunFailed(f"the run completed but wrote no summary.json; see {out / 'flower.log'}")

    def stop(self, *, now: bool = False) -> None:
        """Close the runner's stdin (it stops Ray and ends), or kill it ``now`` (mid-run: Ray's holder sees
        the pipe close and stops Ray, and the run's device actors end with their Ray job)."""
        if self.proc is not None:
            try:
                if now:
                    self.proc.kill()
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            self.ray_tmp = None


class WarmRuntime:
    """Runners that stay up between runs; ``run`` takes a free one (``slots`` runs at once at most).

    ``home``: the runtime's own folder (logs, and the mark its processes carry). ``cores``: the cores of
    each slot (default: ``METAMORPHOSIS_CORES`` if set, else all of this machine's, shared out between the
    slots). ``keep_actors``: a run's device actors serve the slot's next run (``kept_actors.py``); False
    gives every run new ones, as a cold run has (what ``benchmarks/sweep_cost.py`` compares)."""

    def __init__(
        self, home: Path, *, slots: int = 1, cores: int | None = None, app_dir: Path = APP_DIR, keep_actors: bool = True
    ) -> None:
        self.home = Path(home).resolve()
        self.cores = cores or cores_from_env() or max(1, (os.cpu_count() or 1) // slots)
        stop_processes(self.home)  # a runtime killed outright, in this folder, may have left processes
        self.home.mkdir(parents=True, exist_ok=True)
        env = flower_env(self.home, None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_dir), env.get("PYTHONPATH")]))
        self._idle: queue.Queue[_Runner] = queue.Queue()
        for slot in range(slots):
            self._idle.put(_Runner(Path(app_dir), self.cores, env, self.home / f"runner-{slot}.log", keep_actors))
        self._all = list(self._idle.queue)

    def run(
        self,
        cfg: ExperimentConfig,
        out: Path,
        config_path: Path,
        *,
        resume: bool,
        cores: int | None,
        echo: Callable[[str], None],
    ) -> None:
        """Run the experiment written at ``config_path`` in ``out``; raise RunFailed unless it completed.
        An interruption (the echo raising, Ctrl-C) stops the slot's runner: its next run starts a new one."""
        job = {
            "run_config": {
                "config-path": str(config_path),
                "out-dir": str(out),
                "resume": resume,
                "command": "simulate",
            },
            "num_supernodes": cfg.federated.num_devices,
            "cpus_per_device": cfg.federated.cpus_per_device,
            "cores": cores,
        }
        runner = self._idle.get()
        try:
            runner.run(job, out, echo)
        except BaseException:
            runner.stop(now=True)  # a run cut short leaves its runner mid-run: a new one for the next run
            raise
        finally:
            self._idle.put(runner)

    def close(self, *, now: bool = False) -> None:
        """Stop every runner (``now``: mid-run too, as when the sweep is interrupted) and what they started."""
        for runner in self._all:
            runner.stop(now=now)
        stop_processes(self.home)

    def __enter__(self) -> WarmRuntime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(now=exc_type is not None)
