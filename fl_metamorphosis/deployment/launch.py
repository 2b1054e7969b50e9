"""The same federation on real devices, over Flower 1.42's deployment runtime (``metamorphosis deploy``).

The launchers here start Flower's own processes with the right flags (docs/deploy.md; Flower 1.42 serves
its Fleet, Control and Runtime APIs on one HTTPS port, unlike most public docs' separate ports):

* ``server``: a SuperLink on 127.0.0.1 only, with TLS (the certificates of ``deploy certs``), SuperNode
  authentication (only registered device keys may join), a persistent SQLite state (registrations survive
  a restart) and no runtime dependency installation; and the Fleet gateway
  (``fl_metamorphosis/deployment/fleet_gateway.py``) on the devices' address, which forwards the Fleet API
  and nothing else. It writes the ``flwr`` connection entry (the loopback address, the CA's absolute path)
  into a config home of its own, which ``register``, ``unregister`` and ``run`` use.
* ``device``: a SuperNode for one board: its key, the CA to trust, and node config ``partition-id``,
  ``data-dir``, ``state-dir`` (its privacy ledger), ``threads`` and ``name``.
* ``run``: ``flwr run`` of this app on the running SuperLink, streamed like ``simulate``; stopping the
  launcher stops the run.

``--insecure`` (no TLS, no authentication, loopback only) exists for tests and says so on every use.
Every log appends: a restart adds to what the last start wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError, ExperimentConfig, build_config
from ..environment import SIMULATION_ENV
from . import CONTROL_PORT
from .flower_processes import RunFailed, clear_run_outputs, raise_interrupt, run_flower, stop_processes

CONNECTION = "metamorphosis"  # the connection entry in the server's own config home
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS and no device authentication. Anyone on the network can read the "
    "updates and join as a device. Use it on loopback tests only."
)


def flower_home(state: Path) -> Path:
    """The Flower config home inside a SuperLink's or a device's state folder."""
    return Path(state).resolve() / "flwr-home"


def deployment_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SIMULATION_ENV}  # a real device, never a sim
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # flower-superexec
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # The SuperExec asks its SuperNode (or SuperLink) for a task this often; Flower's 1 s added
            # 0.5 s on average to every message a device handles. The ask is a call on the same host.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        }
    )
    return env


def write_connection(state: Path, address: str, root_cert: Path | None) -> Path:
    """The ``flwr`` connection entry for this SuperLink (``root-certificates`` must be absolute)."""
    home = flower_home(state)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if root_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{Path(root_cert).resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home / "config.toml"


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_server_addresses(certs: Path | None, host: str, insecure: bool) -> None:
    """``--insecure`` (no TLS, no device authentication) is for loopback only, and never beside ``--certs``."""
    if insecure and certs is not None:
        raise ConfigError("deploy server: --insecure and --certs conflict; give one: --certs (TLS) or --insecure")
    if insecure and host not in LOOPBACK:
        raise ConfigError(
            f"deploy server --insecure --host {host}: an insecure server listens on loopback only; "
            "use --host 127.0.0.1, or give --certs for devices on the network"
        )
    if not insecure and certs is None:
        raise ConfigError("deploy server: give --certs (the folder of `deploy certs`), or --insecure on loopback")


HEARTBEAT_MIN_S, HEARTBEAT_MAX_S = 10.0, 1800.0  # what Flower's SuperLink accepts from a node
POLL_MIN_S, POLL_MAX_S = 0.1, 60.0  # a SuperNode's idle poll (Flower: 3 s); each poll is a request to the server
TIMING = "fl_metamorphosis.flower.process_timing"  # Flower's commands with a heartbeat or upload window of ours
SHUTDOWN_GRACE_S = 3.0  # how long a stopping SuperLink waits for its open requests (process_timing.py)
WARM_CLIENTAPP = "fl_metamorphosis.flower.warm_clientapp"  # a SuperExec that forks its ClientApps warm


def _flower(command: str, **timing: float | None) -> list[str]:
    """``flower-<command>``, or the same command with the timing options given (``process_timing.py``):
    ``heartbeat_s=10`` is ``--heartbeat-s 10``."""
    options = [arg for name, value in timing.items() if value is not None
               for arg in ("--" + name.replace("_", "-"), str(value))]  # fmt: skip
    return [sys.executable, "-m", TIMING, command, *options, "--"] if options else [f"flower-{command}"]


def server_command(certs: Path | None, port: int, state: Path, upload_ttl_s: float | None = None) -> list[str]:
    """The SuperLink, on 127.0.0.1 only: every API it serves on ``port`` is reachable from this machine alone.
    ``upload_ttl_s``: how long a reply's upload may take before the SuperLink gives it up (Flower: 180 s)."""
    if upload_ttl_s is not None and not upload_ttl_s > 0:
        raise ConfigError(f"--upload-ttl-s {upload_ttl_s}: give more than 0 s (Flower's own is 180)")
    cmd = [*_flower("superlink", upload_ttl_s=upload_ttl_s, shutdown_grace_s=SHUTDOWN_GRACE_S)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--database", str(Path(state).resolve() / "superlink.db"), "--disable-runtime-dependency-installation"]
    if certs is None:
        return [*cmd, "--insecure"]
    certs = Path(certs).resolve()
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (certs / name).exists():
            raise ConfigError(f"--certs {certs}: no {name} there; create them with `metamorphosis deploy certs`")
    if (certs / "ca.key").exists():
        raise ConfigError(
            f"--certs {certs}: the CA's private key ca.key is in the folder the server reads; move it to an "
            "offline folder (`deploy certs` keeps it in OUT-ca)"
        )
    tls = ["--ssl-ca-certfile", certs / "ca.crt", "--ssl-certfile", certs / "server.pem"]
    return [*cmd, *map(str, tls), "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]


def gateway_command(certs: Path, host: str, port: int, control_port: int) -> list[str]:
    """The Fleet gateway (``fl_metamorphosis/deployment/fleet_gateway.py``) on the devices' address."""
    return [sys.executable, "-m", "fl_metamorphosis.deployment.fleet_gateway", "--host", host, "--port", str(port),
            "--upstream-port", str(control_port), "--certs", str(Path(certs).resolve())]  # fmt: skip


def _log(path: Path):
    """A log the process appends to: a restart adds to what the last run wrote, never erases it."""
    return open(path, "a")  # noqa: SIM115 - the process owns it for its lifetime


def start_server(
    certs: Path | None,
    host: str,
    port: int,
    state: Path,
    *,
    control_port: int = CONTROL_PORT,
    upload_ttl_s: float | None = None,
) -> list[subprocess.Popen]:
    """Start the SuperLink on 127.0.0.1:``control_port`` and, with ``certs``, the Fleet gateway on
    ``host:port`` (the one port devices reach); write the operator's connection entry. Without ``certs``
    (``--insecure``) the SuperLink itself listens on 127.0.0.1:``port``, and nothing faces the network."""
    check_server_addresses(certs, host, certs is None)
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    local_port = port if certs is None else control_port
    write_connection(state, f"127.0.0.1:{local_port}", None if certs is None else Path(certs) / "ca.crt")
    env = deployment_env(flower_home(state))
    procs = [subprocess.Popen(server_command(certs, local_port, state, upload_ttl_s), env=env, cwd=state,
                              stdout=_log(state / "superlink.log"), stderr=subprocess.STDOUT)]  # fmt: skip
    if certs is not None:
        procs.append(subprocess.Popen(gateway_command(certs, host, port, control_port), env=env, cwd=state,
                                      stdout=_log(state / "gateway.log"), stderr=subprocess.STDOUT))  # fmt: skip
    try:
        for proc, (where, what) in zip(procs, ((local_port, "superlink.log"), (port, "gateway.log")), strict=False):
            _wait_listening(proc, "127.0.0.1" if host in ("0.0.0.0", "::") or proc is procs[0] else host, where,
                            state / what)  # fmt: skip
    except BaseException:  # one that failed to start takes the other down: nothing is left running
        stop_group(procs, state)
        raise
    return procs


def _wait_listening(proc: subprocess.Popen, host: str, port: int, log: Path, timeout_s: float = 120.0) -> None:
    """Return once ``host:port`` accepts connections; a process that exits first is an error with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RunFailed(f"{log.stem} exited with code {proc.returncode} before listening on {port}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.25)
    raise RunFailed(f"{log.stem} did not listen on {host}:{port} within {timeout_s:.0f} s: see {log}")


def _superlink_address(state: Path) -> tuple[str, int] | None:
    """The operator's connection of ``deploy server --state STATE`` (the SuperLink on loopback), once written."""
    config = flower_home(state) / "config.toml"
    if not config.exists():
        return None
    address = tomllib.loads(config.read_text())["superlink"][CONNECTION]["address"]
    host, _, port = address.rpartition(":")
    return host, int(port)


def wait_for_superlink(state: Path, timeout_s: float = 60.0) -> None:
    """Wait until the SuperLink of ``state`` accepts connections (a server started a moment ago)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if (address := _superlink_address(state)) is not None:
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
                return
        if time.monotonic() > deadline:
            where = f" on {address[0]}:{address[1]}" if address else ""
            raise RunFailed(
                f"no SuperLink answers{where} (--state {state}) after {timeout_s:.0f} s: is "
                f"`metamorphosis deploy server --state {state}` running? Its log: {Path(state) / 'superlink.log'}"
            )
        time.sleep(0.5)


def _flwr(args: list[str], state: Path) -> subprocess.CompletedProcess:
    wait_for_superlink(state)
    return subprocess.run(
        ["flwr", *args], env=deployment_env(flower_home(state)), cwd=state, capture_output=True, text=True, timeout=120
    )


def registered_devices(state: Path) -> list[dict]:
    res = _flwr(["supernode", "list", CONNECTION, "--format", "json"], state)
    if res.returncode != 0:
        raise RunFailed(f"flwr supernode list failed: {(res.stdout + res.stderr).strip()[-500:]}")
    data = json.loads(res.stdout)
    return data.get("nodes", data.get("supernodes", []))


def _names(state: Path) -> dict[str, int]:
    """Device name -> node id, as registered through ``register`` (Flower's list shows no names)."""
    file = Path(state) / "devices.json"
    return json.loads(file.read_text()) if file.exists() else {}


def register(public_key: Path, name: str, state: Path) -> int:
    """Register a device's public key on the SuperLink of ``state``; return its node id."""
    if not Path(public_key).is_file():
        raise ConfigError(f"{public_key}: no such public key; create it on the device with `deploy device-key`")
    names = _names(state)
    if name in names:
        raise ConfigError(f"a device named {name!r} is registered already (node {names[name]}): pick another name")
    res = _flwr(["supernode", "register", str(Path(public_key).resolve()), CONNECTION, "--name", name,
                 "--format", "json"], state)  # fmt: skip
    node_id = _registered_node_id(res.stdout) if res.returncode == 0 else None
    if node_id is None:
        said = (res.stdout + res.stderr).strip()
        if "already in use" in said:  # Flower keeps every key it ever registered, revoked ones included
            raise ConfigError(
                f"{public_key}: this key is registered already, or was revoked (a revoked key is never accepted "
                "again). Make the board a new key (`deploy device-key --force` on the board) and register its .pub"
            )
        raise RunFailed(f"registering {name}: {said[-500:]}")
    (Path(state) / "devices.json").write_text(json.dumps({**names, name: node_id}, indent=2) + "\n")
    return node_id


def _registered_node_id(stdout: str) -> int | None:
    try:
        return int(json.loads(stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
        return None


def unregister(name: str, state: Path) -> int:
    """Revoke the device ``name``: a connected device is cut off at its next request. Returns its node id."""
    names = _names(state)
    if name not in names:
        raise ConfigError(f"no device named {name!r} on this server (registered: {sorted(names) or 'none'})")
    res = _flwr(["supernode", "unregister", str(names[name]), CONNECTION], state)
    if res.returncode != 0:
        raise RunFailed(f"unregistering {name}: {(res.stdout + res.stderr).strip()[-500:]}")
    (Path(state) / "devices.json").write_text(json.dumps({k: v for k, v in names.items() if k != name}, indent=2))
    return names[name]


def device_command(
    superlink: str,
    root_cert: Path | None,
    key: Path | None,
    data: Path,
    state: Path,
    threads: int,
    name: str,
    runtime_port: int = 9094,
    limits: dict[str, str | int | float] | None = None,
    heartbeat_s: float | None = None,
    poll_s: float | None = None,
) -> list[str]:
    """``limits``: the device owner's own node config (``epsilon-budget``, ``max-releases-per-pair``,
    ``secure-aggregation``, ``secure-aggregation-min-devices``), which bound whatever the server asks.
    ``heartbeat_s``: the SuperNode's heartbeat (Flower: 30 s); the server declares the device dead after two
    missed beats. ``poll_s``: how long the SuperNode waits before it asks again when the server had no
    message for it (Flower: 3 s); a phase of a round reaches the device up to that late. The wait grows back
    to 3 s while no message comes (``process_timing.idle_poll_s``)."""
    if heartbeat_s is not None and not HEARTBEAT_MIN_S <= heartbeat_s <= HEARTBEAT_MAX_S:
        raise ConfigError(
            f"--heartbeat-s {heartbeat_s}: Flower's SuperLink takes {HEARTBEAT_MIN_S:g} to {HEARTBEAT_MAX_S:g} s"
        )
    if poll_s is not None and not POLL_MIN_S <= poll_s <= POLL_MAX_S:
        raise ConfigError(f"--poll-s {poll_s}: give {POLL_MIN_S:g} to {POLL_MAX_S:g} s (Flower's own is 3)")
    from ..data.device_folder import read_partition_id  # without torch: this process supervises the device

    node_config = (
        f"partition-id={read_partition_id(data)} data-dir='{Path(data).resolve()}' "
        f"state-dir='{Path(state).resolve()}' threads={threads} name='{name}'"
    )
    for key, value in (limits or {}).items():
        node_config += f" {key}=" + (f"'{value}'" if isinstance(value, str) else str(value))
    cmd = [*_flower("supernode", heartbeat_s=heartbeat_s, poll_s=poll_s), "--superlink", superlink,
           "--node-config", node_config, "--port", str(runtime_port)]  # fmt: skip
    if root_cert is None:
        return [*cmd, "--insecure"]
    cmd += ["--root-certificates", str(Path(root_cert).resolve())]
    return cmd if key is None else [*cmd, "--auth-supernode-private-key", str(Path(key).resolve())]


def _warm_superexec(home: Path) -> Path:
    """A folder holding a ``flower-superexec`` that runs ``flower/warm_clientapp.py``: first on the device's
    PATH, it is the SuperExec that the SuperNode starts."""
    folder = Path(home) / "warm-clientapp"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flower-superexec"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {WARM_CLIENTAPP} "$@"\n')
    script.chmod(0o755)
    return folder


def start_device(cmd: list[str], state: Path, log: Path | None = None, *, warm: bool = True) -> subprocess.Popen:
    """Start a device's SuperNode (``device_command``). ``warm``: its ClientApps are forked from a process
    that imported the libraries once (``flower/warm_clientapp.py``); else Flower starts each one cold."""
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = deployment_env(flower_home(state))
    if warm:
        env["PATH"] = f"{_warm_superexec(flower_home(state))}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=state,
        stdout=_log(log or state / "supernode.log"),
        stderr=subprocess.STDOUT,
    )


def prepare_data(cfg: ExperimentConfig, devices: int, out: Path) -> list[Path]:
    """One folder per device with its partition of the configured dataset (``device-N/``)."""
    from ..data.device_folder import write_device_folder
    from ..data.partition import device_datasets

    tree = cfg.model_dump()
    tree["federated"]["num_devices"] = devices
    cfg = build_config(tree)
    return [
        write_device_folder(Path(out) / f"device-{d}", d, *device_datasets(cfg.data, cfg.federated, d, cfg.train.seed))
        for d in range(devices)
    ]


def _waiting_line(line: str, state: Path) -> str:
    """The ServerApp's "waiting for devices" line, with the names of the registered devices not online."""
    try:
        online = {int(n["node-id"]) for n in registered_devices(state) if n.get("status") == "online"}
    except RunFailed:
        return line
    missing = [f"{name} (node {node})" for name, node in _names(state).items() if node not in online]
    return f"{line}; not online: {', '.join(missing) or 'none of the registered devices'}"


def check_enough_devices(cfg: ExperimentConfig, state: Path) -> None:
    """A run needing more devices than are registered would wait forever: refuse it now."""
    needed, registered = cfg.federated.online_devices_needed(), len(_names(state))
    if registered < needed:
        raise ConfigError(
            f"the run needs {needed} devices online (federated.min_online_devices, else num_devices) but "
            f"{registered} are registered on this server "
            f"({sorted(_names(state)) or 'none'}): register more with `deploy register`, or run with "
            f"--set federated.min_online_devices={max(registered, 1)} (and min_train_devices no larger)"
        )


def run(
    cfg: ExperimentConfig,
    out: Path,
    state: Path,
    *,
    app_dir: Path,
    echo: Callable[[str], None] = print,
    resume: bool = False,
) -> Path:
    """Start the experiment on the running SuperLink of ``state`` and stream it; return the run folder.
    ``app_dir`` is the Flower app (the repository's root, whose pyproject.toml names the ServerApp and ClientApp).

    A fresh run clears what an earlier run left in ``out`` (as ``simulate`` does). Ctrl-C, or SIGTERM to
    this process, stops the run on the SuperLink too (``flwr stop``), not only the stream."""
    if cfg.federated.fleet.enabled:
        raise ConfigError(
            "federated.fleet.enabled=true simulates devices' availability and dropouts; real devices have their "
            "own: set federated.fleet.enabled=false for `deploy run`"
        )
    check_enough_devices(cfg, state)
    wait_for_superlink(state)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clear_run_outputs(out, resume)
    config_path = out / "config.json"
    config_path.write_text(cfg.model_dump_json(indent=2))
    cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config",
           f"config-path='{config_path}' out-dir='{out}' resume={str(resume).lower()} command='deploy'"]  # fmt: skip
    env = deployment_env(flower_home(state))

    def show(line: str) -> None:
        echo(_waiting_line(line, state) if line.startswith("  waiting for devices") else line)

    previous = None
    if threading.current_thread() is threading.main_thread():  # `kill` of the launcher stops the run as Ctrl-C
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        run_flower(cmd, env, out, CONNECTION, show)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return out


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """TERM, then KILL one launched process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_group(procs: list[subprocess.Popen], state: Path) -> None:
    """Stop processes started together (a server's, a device's), the last started first, then every process
    carrying the state folder's FLWR_HOME. The order matters for ``start_server``'s: the SuperLink's HTTP
    server (uvicorn) shuts down once the connections it holds are closed, and the Fleet gateway holds one
    to it. Stopped first, the gateway lets the SuperLink end at once and cleanly; the other order kept the
    SuperLink waiting until its grace ran out and it was killed (10 s)."""
    for proc in reversed(procs):
        stop(proc)
    stop_processes(flower_home(state))
