"""Running Flower's own processes from a launcher: ``simulate`` and ``deploy`` both stream ``flwr run``.

``flwr run --stream`` exits 0 even when the ServerApp crashed, so ``run_flower`` asks the SuperLink for the
run's final status and raises ``RunFailed`` unless it completed with a ``summary.json``. Every process of a
run carries the run's ``FLWR_HOME`` in its environment, which is how ``stop_processes`` finds the detached
SuperLink and everything it started (Ray agents ignore TERM, so what is left is killed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

# the ServerApp's log lines the launcher shows (the rest is in flower.log)
PROGRESS = ("[round", "  round", "  waiting", "auditing", "resuming", "no complete", "device-side", "Traceback")


class RunFailed(RuntimeError):
    """A Flower run or process did not complete; the message carries the run's status and its error."""


def processes_of(home: Path) -> list[int]:
    """PIDs (other than ours) whose environment carries this run's FLWR_HOME: the SuperLink and its tree."""
    needle = f"FLWR_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def stop_processes(home: Path, grace_s: float = 10.0) -> None:
    """TERM every process of the run, then KILL what is left (Ray agents ignore TERM)."""
    pids = processes_of(home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and processes_of(home):
        time.sleep(0.25)
    for pid in processes_of(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def relay(line: str, log: IO[str], echo: Callable[[str], None]) -> None:
    """One line of a run's output: into its log, and to ``echo`` if it is progress or an error. ``echo`` may
    raise to stop the run (Ctrl-C, a pruned search trial)."""
    log.write(line)
    log.flush()
    if line.startswith(PROGRESS) or "Error" in line:
        echo(line.rstrip())


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_status(env: dict[str, str], run_id: int, cwd: Path, connection: str) -> tuple[str, str]:
    res = subprocess.run(
        ["flwr", "ls", connection, "--run-id", str(run_id), "--format", "json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        run = json.loads(res.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details", ""))
    except (json.JSONDecodeError, KeyError, IndexError):
        return "unknown", (res.stdout + res.stderr)[-500:]


def run_flower(cmd: list[str], env: dict[str, str], out: Path, connection: str, echo: Callable[[str], None]) -> int:
    """Run ``flwr run ... --stream`` from ``out``, log it to ``out/flower.log``, echo the progress lines, and
    raise ``RunFailed`` unless the run finished completed with a ``summary.json``; return its id.
    ``flwr run --stream`` exits 0 even when the ServerApp crashed: the final status is asked for."""
    run_id = None
    try:
        # cwd outside the app: Flower runs the apps in the SuperLink's cwd and would import live sources there.
        with (
            (out / "flower.log").open("w") as log,
            subprocess.Popen(
                cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            ) as proc,
        ):
            try:
                for line in proc.stdout:  # type: ignore[union-attr]
                    if match := re.search(r"Successfully started run (\d+)", line):
                        run_id = int(match.group(1))
                    relay(line, log, echo)
            except BaseException:
                proc.terminate()  # stop streaming; the caller's cleanup stops the run's processes
                raise
            proc.wait()
        if run_id is None:
            raise RunFailed(f"flwr run did not start a run (exit {proc.returncode}); see {out / 'flower.log'}")
        status, details = _run_status(env, run_id, out, connection)
        if status != "finished:completed":
            raise RunFailed(f"run {run_id} ended {status}: {details}; full log in {out / 'flower.log'}")
        if not (out / "summary.json").exists():
            raise RunFailed(f"run {run_id} completed but wrote no summary.json; see {out / 'flower.log'}")
        return run_id
    except KeyboardInterrupt:
        if run_id is not None:
            stop = ["flwr", "stop", str(run_id), connection]
            subprocess.run(stop, env=env, cwd=out, capture_output=True, timeout=60)
        raise


def clear_run_outputs(out: Path, resume: bool) -> None:
    """A run folder holds one run: a fresh run removes what an earlier one wrote (its checkpoints, which
    ``--resume`` would take, its metrics, its report and plots), so nothing old is shown as the new result.
    A resumed run keeps them; only the summary goes, rewritten when the run completes."""
    (out / "summary.json").unlink(missing_ok=True)
    if resume:
        return
    for stale in ("checkpoints", "devices"):
        shutil.rmtree(out / stale, ignore_errors=True)
    for stale in ("metrics.jsonl", "audits.jsonl", "report.md", "held_rows.json", "held_rows.md", "fleet.json"):
        (out / stale).unlink(missing_ok=True)
    if (out / "config.json").exists():  # an earlier run's folder: its plots are the run's own
        for plot in out.glob("*.png"):
            plot.unlink()
