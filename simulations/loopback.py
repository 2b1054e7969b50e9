"""A whole deployment on one machine: a TLS SuperLink with device authentication and registered
SuperNodes, each with its own data and state folder, all on 127.0.0.1.

What the deploy tests and ``benchmarks/secure_aggregation.py`` run against, and a way to try
``metamorphosis deploy`` before any board is set up. Every process it starts is stopped by PID (with
the processes it started in turn) when the ``with`` block ends, also on an error.

Its devices beat every 10 s (Flower's least; its default is 30) and its SuperLink gives up a reply upload
after 30 s (Flower: 180): a device killed here is declared dead after 20 s instead of 60, and a round
stops waiting for an upload it cut after 30 s instead of 180. On loopback every upload takes well under a
second. Its devices ask for a message every 0.5 s while none is waiting (Flower: 3 s; docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.deployment import launch as deploy
from fl_metamorphosis.deployment.credentials import CertificateFiles, make_certificates, make_device_key

from .simulate import APP_DIR

HEARTBEAT_S, UPLOAD_TTL_S, POLL_S = 10.0, 30.0, 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def log_text(state: Path, name: str) -> str:
    path = Path(state) / name
    return path.read_text() if path.exists() else ""


@dataclass
class Device:
    name: str
    key: Path
    state: Path
    data: Path
    node_id: int


@dataclass
class LoopbackFederation:
    root: Path
    cfg: ExperimentConfig
    certs: CertificateFiles
    port: int = field(default_factory=free_port)
    devices: list[Device] = field(default_factory=list)
    procs: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict)

    @property
    def server_state(self) -> Path:
        return self.root / "server"

    control_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"  # where the Fleet gateway listens (another address for the intruder test)
    cold: frozenset[int] = frozenset()  # devices whose ClientApps Flower starts cold (the others': warm)
    poll_s: float = POLL_S  # the devices' idle poll (``deploy device --poll-s``; Flower: 3 s)
    gateway: list[subprocess.Popen] = field(default_factory=list)  # the server's Fleet gateway, once started

    def start_server(self) -> None:
        """The SuperLink on 127.0.0.1:``control_port`` and the Fleet gateway on ``host:port``; both stop with
        ``stop("server")``, the gateway first (``launch.stop_group``)."""
        superlink, *self.gateway = deploy.start_server(
            self.root / "certs", self.host, self.port, self.server_state, control_port=self.control_port,
            upload_ttl_s=UPLOAD_TTL_S,
        )  # fmt: skip
        self.procs["server"] = (superlink, self.server_state)

    def start_device(self, d: int) -> None:
        device = self.devices[d]
        cmd = deploy.device_command(
            f"{self.host}:{self.port}", self.certs.ca_cert, device.key, device.data, device.state, 1, device.name,
            free_port(), heartbeat_s=HEARTBEAT_S, poll_s=self.poll_s,
        )  # fmt: skip
        self.procs[device.name] = (deploy.start_device(cmd, device.state, warm=d not in self.cold), device.state)

    def stop(self, name: str) -> None:
        proc, state = self.procs[name]
        deploy.stop_group([proc, *(self.gateway if name == "server" else [])], state)

    def online(self) -> int:
        return sum(n.get("status") == "online" for n in deploy.registered_devices(self.server_state))

    def run(self, cfg: ExperimentConfig, out: Path, **kwargs) -> dict:
        return deploy.run(cfg, out, self.server_state, app_dir=APP_DIR, **kwargs)


@contextlib.contextmanager
def loopback_federation(
    root: Path,
    cfg: ExperimentConfig,
    devices: int = 3,
    host: str = "127.0.0.1",
    cold: tuple[int, ...] = (),
    poll_s: float = POLL_S,
) -> Iterator[LoopbackFederation]:
    """A running SuperLink with ``devices`` registered, online SuperNodes; all stopped on exit. ``host`` is
    the address of the Fleet gateway, which the devices connect to. The devices numbered in ``cold`` start
    each ClientApp as Flower does (``deploy device --cold-clientapp``), the others fork them warm. ``poll_s``:
    how long a device waits before it asks again when no message was waiting."""
    root = Path(root)
    certs = make_certificates(root / "certs", [host])
    fed = LoopbackFederation(root, cfg, certs, host=host, cold=frozenset(cold), poll_s=poll_s)
    folders = deploy.prepare_data(cfg, devices, root / "data")
    try:
        fed.start_server()
        for d in range(devices):
            name = f"device-{d}"
            key, public = make_device_key(root / "keys", name)
            node_id = deploy.register(public, name, fed.server_state)
            fed.devices.append(Device(name, key, root / f"{name}-state", folders[d], node_id))
            fed.start_device(d)
        wait_for(lambda: fed.online() == devices, f"{devices} devices online")
        yield fed
    finally:
        for name in reversed(list(fed.procs)):
            fed.stop(name)
