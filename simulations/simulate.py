"""``metamorphosis simulate``: one federated experiment through ``flwr run`` on a local Ray simulation (or,
for a sweep, a comparison or a search, on their warm runtime: ``warm_runtime.py``).

The launcher only orchestrates: it writes the validated experiment next to the run folder, gives Flower a
private ``FLWR_HOME`` and free ports under the run folder (so runs never attach to someone else's
SuperLink), streams the run, then asks the SuperLink for the run's final status, because
``flwr run --stream`` exits 0 even when the ServerApp crashed. Whatever happens (success, failure,
Ctrl-C) it stops every process of the run: the detached SuperLink and everything it started, found by
the ``FLWR_HOME`` in their environment.

``resume=True`` continues the run in ``out`` from its last checkpoint (``--resume``): it first stops
whatever a killed launcher left running in that folder, keeps the checkpoints and the simulated devices'
state folders (``out/devices/<partition-id>``: their privacy ledgers), and tells the ServerApp to resume.
A fresh run clears both. ``resumed_config`` rebuilds the run's own experiment; only the settings that
cannot change what the finished rounds did (``RESUME_SAFE``) may be changed on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fl_metamorphosis.checkpoint import latest_run, load_run
from fl_metamorphosis.config import ConfigError, ExperimentConfig, build_config
from fl_metamorphosis.data import prepare_dataset
from fl_metamorphosis.deployment.flower_processes import (
    clear_run_outputs,
    raise_interrupt,
    run_flower,
    stop_processes,
)
from fl_metamorphosis.environment import CORES_ENV, SIMULATION_ENV, cores_from_env
from fl_metamorphosis.tracking import TrackedRun, config_params

if TYPE_CHECKING:
    from .warm_runtime import WarmRuntime

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower App: pyproject.toml's [tool.flwr.app]
# Settings a resumed run may change: more (or fewer, not below those done) rounds, how often and how hard
# the audit attacks, and how many cores the devices use. Everything else shaped the finished rounds.
RESUME_SAFE = (
    "federated.rounds", "federated.audit_every", "federated.cpus_per_device", "train.threads", "audit.", "tracking.",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path, ray_tmp: Path | None) -> dict[str, str]:
    """Offline-safe settings, a private FLWR_HOME and free loopback ports for this run.

    ``ray_tmp`` must be a SHORT path: Ray puts AF_UNIX sockets under it, whose paths may not exceed 107
    bytes (a run folder deep in a checkout broke a simulation that way). None: Ray's own (the caller's
    ``RAY_TMPDIR``), as when attaching to a cluster that was started with it.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray on 127.0.0.1 here
            # the devices of this simulation run in a process tree the user started: they may accept
            # randomness.source = "seeded" (clients/device_app.py refuses it everywhere else)
            SIMULATION_ENV: "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        }
    )
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def stage_app(app_dir: Path, dest: Path) -> Path:
    """``dest`` holding the Flower App's sources only (its ``pyproject.toml`` and top-level packages), for
    ``flwr run`` to build the app's FAB from. Flower walks the whole app folder before it filters, and a
    checkout's folder holds its ``.venv`` and run outputs: tens of thousands of files read for nothing at
    every launch (docs/federated.md)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(app_dir / "pyproject.toml", dest / "pyproject.toml")
    for package in sorted(p.parent for p in app_dir.glob("*/__init__.py")):
        shutil.copytree(package, dest / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def check_ray_address(address: str, timeout_s: float = 5.0) -> str:
    """``HOST:PORT`` of a running Ray head (its GCS port), or a ConfigError that says how to start one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: give HOST:PORT of the Ray head (e.g. 192.168.1.10:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({err}): start the head first with "
            f"`ray start --head --port={port}` on that machine (docs/ray-cluster.md)"
        ) from None
    return address


def resumed_config(out: Path, overrides: list[str]) -> ExperimentConfig:
    """The experiment of the run in ``out``, with ``overrides`` of the ``RESUME_SAFE`` settings only."""
    config_file = Path(out) / "config.json"
    if not config_file.exists():
        raise ConfigError(f"--resume {out}: no config.json there; pass the run folder of an earlier `simulate`")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(RESUME_SAFE):
            raise ConfigError(
                f"--set {key}: cannot change on --resume (the finished rounds ran with the saved value); "
                f"settings that may change: {', '.join(RESUME_SAFE)}*. Start a new run to change it"
            )
    cfg = build_config(json.loads(config_file.read_text()), overrides)
    last = latest_run(Path(out) / "checkpoints")
    done = load_run(last).round if last else 0
    if cfg.federated.rounds < done:
        raise ConfigError(f"federated.rounds={cfg.federated.rounds}: the run already finished {done} rounds")
    return cfg


def simulate(
    cfg: ExperimentConfig,
    out: Path,
    echo: Callable[[str], None] = print,
    app_dir: Path = APP_DIR,
    resume: bool = False,
    ray_address: str | None = None,
    cores: int | None = None,
    runtime: WarmRuntime | None = None,
    tracking_parent: TrackedRun | None = None,
    tracking_params: dict[str, str] | None = None,
) -> Path:
    """Run ``cfg`` as a Flower simulation of ``app_dir`` (``resume``: go on from ``out``'s last checkpoint);
    return the run folder or raise RunFailed.

    ``ray_address``: ``HOST:PORT`` of a running Ray cluster's head to run the devices on, instead of a
    Ray instance of the run's own. Flower 1.42's backend takes no address option: ``RAY_ADDRESS`` in the
    environment of the SuperLink that ``flwr run`` starts is what ``ray.init`` reads. This process must
    run on a node of that cluster (the driver joins its local raylet).

    ``cores``: the cores this run may use, when others run beside it (a sweep's parallel cells): Ray gets
    that many CPUs, so as many device actors, and the ServerApp as many threads. Default: ``METAMORPHOSIS_CORES``
    if set (the tests set it to 1 per worker), else the machine's.

    ``runtime``: run it on this warm runtime (``warm_runtime.py``: a sweep's, a comparison's) instead of
    starting Flower, Ray and the imports for this run alone.

    ``tracking_parent``: the sweep's, search's or comparison's tracked run, to nest this run's under
    (``cfg.tracking``); ``tracking_params``: what to log as its parameters besides the config."""
    if ray_address is not None:
        if runtime is not None:
            raise ConfigError("--ray-address: a warm runtime holds its own Ray; give one or the other")
        check_ray_address(ray_address)
    prepare_dataset(cfg.data, cfg.train.seed)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".flwr"
    stop_processes(home)  # a launcher killed without cleaning up leaves its SuperLink running the run
    clear_run_outputs(out, resume)
    config_path = out / "config.json"
    config_path.write_text(cfg.model_dump_json(indent=2))
    previous_handler = None
    if threading.current_thread() is threading.main_thread():  # a killed launcher still cleans up
        previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)
    params = None if tracking_params is None else {**config_params(cfg), **tracking_params}
    try:
        with TrackedRun(out, cfg, resume=resume, parent=tracking_parent, params=params):
            if runtime is not None:
                runtime.run(cfg, out, config_path, resume=resume, cores=cores, echo=echo)
            else:
                _run_cold(cfg, out, config_path, echo, app_dir, resume, ray_address, cores)
            if cfg.federated.fleet.enabled:  # both privacy views need the devices' folders: only here are both
                _fleet_report(cfg, out, echo)
            return out
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _fleet_report(cfg: ExperimentConfig, out: Path, echo: Callable[[str], None]) -> None:
    from fl_metamorphosis.metrics.fleet_report import write_fleet_report  # plots: only when asked

    fleet = write_fleet_report(out, cfg, json.loads((out / "summary.json").read_text()))
    tt = fleet["time_to_target"]
    echo(
        f"fleet: {fleet['totals']['fleet.dropped']} dropped, {fleet['totals']['fleet.stragglers']} late over "
        f"{fleet['simulated_seconds']:.0f} simulated s; accuracy {tt['target']:.3f} at round {tt['round']} "
        f"({out / 'fleet.json'})"
    )


def _run_cold(
    cfg: ExperimentConfig,
    out: Path,
    config_path: Path,
    echo: Callable[[str], None],
    app_dir: Path,
    resume: bool,
    ray_address: str | None,
    cores: int | None,
) -> None:
    """One ``flwr run`` with a SuperLink, a simulation process and (unless ``ray_address``) a Ray of its own,
    all stopped when it ends, however it ends."""
    home = out / ".flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    ray_tmp = None if ray_address else Path(tempfile.mkdtemp(prefix="mm-ray-"))
    staged = stage_app(Path(app_dir), Path(tempfile.mkdtemp(prefix="mm-app-")) / "app")
    env = flower_env(home, ray_tmp)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    fed = cfg.federated
    federation = f"num-supernodes={fed.num_devices} client-resources-num-cpus={fed.cpus_per_device}"
    if ray_address is None:  # a cluster's head has its CPUs already; Ray refuses them again
        cores = cores or cores_from_env()
    if cores is not None:
        env[CORES_ENV] = str(cores)
        federation += f" init-args-num-cpus={max(cores, fed.cpus_per_device)}"
    cmd = [
        "flwr",
        "run",
        str(staged),
        "local",
        "--stream",
        "--federation-config",
        federation,
        "--run-config",
        f"config-path='{config_path}' out-dir='{out}' resume={str(resume).lower()}",
    ]
    try:
        run_flower(cmd, env, out, "local", echo)
    finally:
        stop_processes(home)
        shutil.rmtree(staged.parent, ignore_errors=True)
        if ray_tmp is not None:
            shutil.rmtree(ray_tmp, ignore_errors=True)
