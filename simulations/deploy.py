"""``metamorphosis deploy``: the same federation on real devices, over Flower 1.42's deployment runtime.

The launchers here only start Flower's own processes with the right flags (facts verified on Flower 1.42
in ../shared/NOTES-deployment.md; most public docs describe older ports):

* ``server``: a SuperLink on ONE HTTPS port (Fleet, Control and Runtime APIs), TLS with the CA from
  ``deploy certs``, SuperNode authentication (only registered device keys may join), a persistent SQLite
  state (registrations survive a restart), no runtime dependency installation. It also writes the
  ``flwr`` connection entry (absolute root-certificate path) into a config home of its own, which
  ``register``, ``unregister`` and ``run`` use.
* ``device``: a SuperNode for one board: its key, the CA to trust, and node config ``partition-id``,
  ``data-dir``, ``state-dir`` (its privacy ledger), ``threads`` and ``name``.
* ``run``: ``flwr run`` of this app on the running SuperLink, streamed like ``simulate``.

``--insecure`` (no TLS, no authentication) exists for loopback tests and says so on every use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fl_metamorphosis.config import ConfigError, ExperimentConfig, build_config
from fl_metamorphosis.data.device_folder import read_partition_id, write_device_folder

from .simulate import APP_DIR, SimulationFailed, run_flower, stop_processes

CONNECTION = "metamorphosis"  # the connection entry in the server's own config home
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS and no device authentication. Anyone on the network can read the "
    "updates and join as a device. Use it on loopback tests only."
)


def flower_home(state: Path) -> Path:
    """The Flower config home inside a SuperLink's or a device's state folder."""
    return Path(state).resolve() / "flwr-home"


def deployment_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METAMORPHOSIS_SIMULATION"}  # a real device, never a sim
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # flower-superexec
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
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


def server_command(certs: Path | None, host: str, port: int, state: Path) -> list[str]:
    cmd = ["flower-superlink", "--host", host, "--port", str(port)]
    cmd += ["--database", str(Path(state).resolve() / "superlink.db"), "--disable-runtime-dependency-installation"]
    if certs is None:
        return [*cmd, "--insecure"]
    certs = Path(certs).resolve()
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (certs / name).exists():
            raise ConfigError(f"--certs {certs}: no {name} there; create them with `metamorphosis deploy certs`")
    tls = ["--ssl-ca-certfile", certs / "ca.crt", "--ssl-certfile", certs / "server.pem"]
    return [*cmd, *map(str, tls), "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]


def start_server(certs: Path | None, host: str, port: int, state: Path, log: Path | None = None) -> subprocess.Popen:
    """Start the SuperLink (and write its connection entry); the caller waits on or stops the process."""
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # the operator's CLI connects on loopback
    write_connection(state, f"{local}:{port}", None if certs is None else Path(certs) / "ca.crt")
    out = open(log or state / "superlink.log", "w")  # noqa: SIM115 - the process owns it for its lifetime
    return subprocess.Popen(
        server_command(certs, host, port, state),
        env=deployment_env(flower_home(state)),
        cwd=state,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _flwr(args: list[str], state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["flwr", *args], env=deployment_env(flower_home(state)), cwd=state, capture_output=True, text=True, timeout=120
    )


def registered_devices(state: Path) -> list[dict]:
    res = _flwr(["supernode", "list", CONNECTION, "--format", "json"], state)
    if res.returncode != 0:
        raise SimulationFailed(f"flwr supernode list failed: {(res.stdout + res.stderr).strip()[-500:]}")
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
    if res.returncode != 0:
        raise SimulationFailed(f"registering {name}: {(res.stdout + res.stderr).strip()[-500:]}")
    node_id = int(json.loads(res.stdout)["node-id"])
    (Path(state) / "devices.json").write_text(json.dumps({**names, name: node_id}, indent=2) + "\n")
    return node_id


def unregister(name: str, state: Path) -> int:
    """Revoke the device ``name``: a connected device is cut off at its next request. Returns its node id."""
    names = _names(state)
    if name not in names:
        raise ConfigError(f"no device named {name!r} on this server (registered: {sorted(names) or 'none'})")
    res = _flwr(["supernode", "unregister", str(names[name]), CONNECTION], state)
    if res.returncode != 0:
        raise SimulationFailed(f"unregistering {name}: {(res.stdout + res.stderr).strip()[-500:]}")
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
) -> list[str]:
    """``limits``: the device owner's own node config (``epsilon-budget``, ``max-releases-per-pair``,
    ``secure-aggregation``, ``secure-aggregation-min-devices``), which bound whatever the server asks."""
    node_config = (
        f"partition-id={read_partition_id(data)} data-dir='{Path(data).resolve()}' "
        f"state-dir='{Path(state).resolve()}' threads={threads} name='{name}'"
    )
    for key, value in (limits or {}).items():
        node_config += f" {key}=" + (f"'{value}'" if isinstance(value, str) else str(value))
    cmd = ["flower-supernode", "--superlink", superlink, "--node-config", node_config, "--port", str(runtime_port)]
    if root_cert is None:
        return [*cmd, "--insecure"]
    cmd += ["--root-certificates", str(Path(root_cert).resolve())]
    return cmd if key is None else [*cmd, "--auth-supernode-private-key", str(Path(key).resolve())]


def start_device(cmd: list[str], state: Path, log: Path | None = None) -> subprocess.Popen:
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    out = open(log or state / "supernode.log", "w")  # noqa: SIM115 - the process owns it for its lifetime
    return subprocess.Popen(
        cmd, env=deployment_env(flower_home(state)), cwd=state, stdout=out, stderr=subprocess.STDOUT
    )


def prepare_data(cfg: ExperimentConfig, devices: int, out: Path) -> list[Path]:
    """One folder per device with its partition of the configured dataset (``device-N/``)."""
    from fl_metamorphosis.flower.partition import device_datasets

    tree = cfg.model_dump()
    tree["federated"]["num_devices"] = devices
    cfg = build_config(tree)
    return [
        write_device_folder(Path(out) / f"device-{d}", d, *device_datasets(cfg.data, cfg.federated, d, cfg.train.seed))
        for d in range(devices)
    ]


def run(cfg: ExperimentConfig, out: Path, state: Path, echo: Callable[[str], None] = print, resume: bool = False):
    """Start the experiment on the running SuperLink of ``state`` and stream it; return the run folder."""
    if cfg.federated.fleet.enabled:
        raise ConfigError(
            "federated.fleet.enabled=true simulates devices' availability and dropouts; real devices have their "
            "own: set federated.fleet.enabled=false for `deploy run`"
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    config_path = out / "config.json"
    config_path.write_text(cfg.model_dump_json(indent=2))
    cmd = ["flwr", "run", str(APP_DIR), CONNECTION, "--stream", "--run-config",
           f"config-path='{config_path}' out-dir='{out}' resume={str(resume).lower()}"]  # fmt: skip
    env = deployment_env(flower_home(state))
    run_flower(cmd, env, out, CONNECTION, echo)
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


def stop_tree(proc: subprocess.Popen, state: Path) -> None:
    """Stop ``proc`` and every process carrying its state folder's FLWR_HOME (SuperExec, ClientApps)."""
    stop(proc)
    stop_processes(flower_home(state))
