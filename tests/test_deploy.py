"""Real-device deployment on loopback: a SuperLink with TLS and device authentication, registered devices
with their own data and state folders, and the refusals. Every process is stopped by PID, also when a
test fails."""

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.credentials import certificate_names, make_certificates, make_device_key
from fl_metamorphosis.federated.device_state import DeviceState
from fl_metamorphosis.metrics import read_jsonl
from simulations import deploy

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _log(state: Path, name: str) -> str:
    path = Path(state) / name
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A TLS SuperLink with device authentication, three registered devices, their data folders."""
    root = tmp_path_factory.mktemp("deploy")
    certs = make_certificates(root / "certs", ["127.0.0.1"])
    port = _free_port()
    server_state = root / "server"
    cfg = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]'])
    folders = deploy.prepare_data(cfg, 3, root / "data")
    procs: list[tuple] = []
    try:
        server = deploy.start_server(root / "certs", "127.0.0.1", port, server_state)
        procs.append((server, server_state))
        _wait_for(lambda: "Uvicorn running" in _log(server_state, "superlink.log"), "the SuperLink")
        devices = []
        for d, folder in enumerate(folders):
            state = root / f"device-{d}-state"
            key, public = make_device_key(root / "keys", f"device-{d}")
            node_id = deploy.register(public, f"device-{d}", server_state)
            cmd = deploy.device_command(
                f"127.0.0.1:{port}", certs.ca_cert, key, folder, state, 1, f"device-{d}", _free_port()
            )
            procs.append((deploy.start_device(cmd, state), state))
            devices.append({"state": state, "node_id": node_id, "key": key})
        _wait_for(
            lambda: sum(n.get("status") == "online" for n in deploy.registered_devices(server_state)) == 3,
            "three devices online",
        )
        yield {"root": root, "port": port, "server_state": server_state, "cfg": cfg, "devices": devices,
               "certs": certs, "procs": procs}  # fmt: skip
    finally:
        for proc, state in reversed(procs):
            deploy.stop_tree(proc, state)


def test_the_certificate_covers_loopback_and_keys_are_private(federation):
    assert "127.0.0.1" in certificate_names(federation["certs"].server_cert)
    for path in (federation["certs"].server_key, federation["certs"].ca_key, federation["devices"][0]["key"]):
        assert path.stat().st_mode & 0o077 == 0  # 0600


def test_three_registered_devices_train_two_rounds_over_tls(federation):
    out = federation["root"] / "run"
    deploy.run(federation["cfg"], out, federation["server_state"], echo=lambda _line: None)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2] and all(r["answered"] == 3 for r in rows)
    for name in ("summary.json", "report.md", "rounds.png", "attacks.png", "checkpoints/round_002.ckpt"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    devices = summary["federated"]["device_privacy"]
    assert sorted(devices) == ["0", "1", "2"]
    delta = federation["cfg"].dp_sgd.delta
    for d, device in enumerate(federation["devices"]):
        ledger = DeviceState.load(device["state"]).history  # the device's own record, on its own disk
        assert devices[str(d)]["steps"] == ledger.steps
        assert devices[str(d)]["epsilon"] == ledger.epsilon(delta)
    assert summary["randomness"]["private_against_server"] is True


def test_an_unregistered_key_is_refused(federation, tmp_path):
    key, _ = make_device_key(tmp_path, "rogue")
    folder = federation["root"] / "data" / "device-0"
    cmd = deploy.device_command(
        f"127.0.0.1:{federation['port']}", federation["certs"].ca_cert, key, folder, tmp_path / "s", 1, "rogue",
        _free_port(),
    )  # fmt: skip
    proc = deploy.start_device(cmd, tmp_path / "s")
    try:
        assert proc.wait(120) != 0
    finally:
        deploy.stop_tree(proc, tmp_path / "s")
    assert "Failed to activate SuperNode" in _log(tmp_path / "s", "supernode.log")


def test_a_wrong_root_certificate_is_refused(federation, tmp_path):
    other = make_certificates(tmp_path / "other", ["127.0.0.1"])
    folder = federation["root"] / "data" / "device-0"
    cmd = deploy.device_command(
        f"127.0.0.1:{federation['port']}", other.ca_cert, federation["devices"][0]["key"], folder, tmp_path / "s", 1,
        "device-0", _free_port(),
    )  # fmt: skip
    proc = deploy.start_device(cmd, tmp_path / "s")
    try:
        assert proc.wait(120) != 0
    finally:
        deploy.stop_tree(proc, tmp_path / "s")
    assert "CERTIFICATE_VERIFY_FAILED" in _log(tmp_path / "s", "supernode.log")
