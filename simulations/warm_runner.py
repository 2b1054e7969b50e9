"""One slot of the warm runtime (``warm_runtime.py``): a process that imports the Flower App once, owns a Ray
instance, and runs simulations one after another as its launcher sends them.

    python -m simulations.warm_runner APP_DIR CPUS [--fresh-actors]

It starts Ray (``ray.init`` in a child process that only holds it: Flower's backend calls ``ray.shutdown()``
after every run, which would stop a Ray instance this process had started itself), imports the App's
ServerApp and ClientApp (torch and Opacus with them), prints ``READY``, then reads one job per line on
stdin: a JSON object with ``run_config`` (the run's ``config-path``, ``out-dir``, ``resume``, ``command``),
``num_supernodes``, ``cpus_per_device`` and ``cores``. Each job is one run of Flower's simulation engine, the
call ``flwr-simulation`` makes for a run of a SuperLink, in this process: the ServerApp on a thread, the
devices on Ray actors that the last run left idle (``kept_actors.py``), new ones for the first run and after
a failed one (every run, with ``--fresh-actors``). Everything the run prints goes to stdout; then a line
starting with ``DONE_MARK`` and a JSON result. The process ends when stdin closes or its launcher dies (its parent
changes): Ray's holder sees its stdin close and stops Ray.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any

from fl_metamorphosis.environment import CORES_ENV

from . import kept_actors

DONE_MARK = "\x1fwarm-runner-done "
READY = "\x1fwarm-runner-ready"
FRESH_ACTORS = "--fresh-actors"
_RAY_HOLDER = (
    "import ray, sys\n"
    "ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False)\n"
    "print(ray.get_runtime_context().gcs_address, flush=True)\n"
    "sys.stdin.read()\n"  # until the runner's end closes the pipe
    "ray.shutdown()\n"
)


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _start_ray(cpus: int) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _RAY_HOLDER, str(cpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    address = holder.stdout.readline().strip()  # type: ignore[union-attr]
    if not address:
        raise RuntimeError(f"Ray did not start (exit {holder.wait()})")
    os.environ["RAY_ADDRESS"] = address  # what Flower's backend's ray.init connects to
    return holder


def _exit_with_parent(parent: int) -> None:
    """A launcher killed outright (SIGKILL, a power cut of the shell) cannot stop us: stop ourselves."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # the Ray holder's stdin closes with us, and it stops Ray


def run_one(job: dict[str, Any], app_dir: Path, server_app: Any, client_app: Any, cpus: int, cores: str | None) -> None:
    """One simulation, as ``flwr-simulation`` runs one for a SuperLink (flwr/simulation/app.py)."""
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    if job["cpus_per_device"] > cpus:
        raise ValueError(
            f"federated.cpus_per_device={job['cpus_per_device']}: this warm runtime's slot has {cpus} CPUs; "
            "lower it, or run fewer cells at once (sweep parallel)"
        )
    share = str(job["cores"]) if job["cores"] else cores  # the run's own share, else the runner's
    if share is None:
        os.environ.pop(CORES_ENV, None)
    else:
        os.environ[CORES_ENV] = share
    run = Run.create_empty(run_id=random.SystemRandom().getrandbits(63))
    run.primary_task_id = random.SystemRandom().getrandbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = dict(job["run_config"])
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID

    run_config = get_fused_config_from_dir(app_dir, run.override_config)
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    _run_simulation(
        num_supernodes=job["num_supernodes"],
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_config={"client_resources": {"num_cpus": job["cpus_per_device"], "num_gpus": 0}, "init_args": {}},
        server_app_context=context,
        run=run,
        app_dir=str(app_dir),
        is_app=True,  # the devices' contexts get the App's run config with this run's values over it
    )


def main() -> None:
    app_dir, cpus, cores = Path(sys.argv[1]).resolve(), int(sys.argv[2]), os.environ.get(CORES_ENV)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sys.path.insert(0, str(app_dir))
    holder = _start_ray(cpus)
    if FRESH_ACTORS not in sys.argv[3:]:
        kept_actors.install()
    components = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    server_app, client_app = _load(components["serverapp"]), _load(components["clientapp"])
    print(READY, flush=True)
    try:
        for line in sys.stdin:
            result: dict[str, Any] = {"ok": True}
            try:
                run_one(json.loads(line), app_dir, server_app, client_app, cpus, cores)
            except Exception as err:  # the run failed, the runner goes on: the launcher reports it
                traceback.print_exc()
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                kept_actors.discard()
            sys.stdout.flush()
            sys.stderr.flush()
            print(DONE_MARK + json.dumps(result), flush=True)
    finally:
        kept_actors.discard()
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=60)


if __name__ == "__main__":
    main()
