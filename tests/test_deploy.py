"""Real-device deployment on loopback: a SuperLink with TLS and device authentication, registered devices
with their own data and state folders, and the refusals. Every process is stopped by PID, also when a
test fails."""

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.credentials import certificate_names, make_certificates, make_device_key
from fl_metamorphosis.federated.device_state import DeviceState
from fl_metamorphosis.metrics import read_jsonl
from simulations import deploy
from simulations.simulate import SimulationFailed, processes_of

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


@contextlib.contextmanager
def _federation(root: Path, cfg, devices: int = 3):
    """A TLS SuperLink with device authentication and ``devices`` registered, running SuperNodes."""
    certs = make_certificates(root / "certs", ["127.0.0.1"])
    fed = {"root": root, "port": _free_port(), "server_state": root / "server", "cfg": cfg, "certs": certs}
    fed["folders"] = deploy.prepare_data(cfg, devices, root / "data")
    procs: dict[str, tuple] = {}
    fed["procs"], fed["devices"] = procs, []

    def start_server():
        procs["server"] = (deploy.start_server(root / "certs", "127.0.0.1", fed["port"], fed["server_state"]),
                           fed["server_state"])  # fmt: skip
        _wait_for(lambda: "Uvicorn running" in _log(fed["server_state"], "superlink.log"), "the SuperLink")

    def start_device(d: int):
        device = fed["devices"][d]
        cmd = deploy.device_command(f"127.0.0.1:{fed['port']}", certs.ca_cert, device["key"], fed["folders"][d],
                                    device["state"], 1, f"device-{d}", _free_port())  # fmt: skip
        procs[f"device-{d}"] = (deploy.start_device(cmd, device["state"]), device["state"])

    def online() -> int:
        return sum(n.get("status") == "online" for n in deploy.registered_devices(fed["server_state"]))

    fed.update(start_server=start_server, start_device=start_device, online=online)
    try:
        start_server()
        for d in range(devices):
            key, public = make_device_key(root / "keys", f"device-{d}")
            node_id = deploy.register(public, f"device-{d}", fed["server_state"])
            fed["devices"].append({"state": root / f"device-{d}-state", "node_id": node_id, "key": key})
            start_device(d)
        _wait_for(lambda: online() == devices, f"{devices} devices online")
        yield fed
    finally:
        for proc, state in reversed(list(procs.values())):
            deploy.stop_tree(proc, state)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    cfg = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "federated.rounds=3"])
    with _federation(tmp_path_factory.mktemp("deploy"), cfg) as fed:
        yield fed


def _clientapps(home: Path) -> set[int]:
    """PIDs of the ClientApp processes a SuperNode started (one per message)."""
    found = set()
    for pid in processes_of(home):
        with contextlib.suppress(OSError):
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


def _in_thread(fn, *args, **kwargs) -> dict:
    """Run ``fn`` in a thread; the returned dict gets its result or exception once it ends."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def test_the_certificate_covers_loopback_and_keys_are_private(federation):
    assert "127.0.0.1" in certificate_names(federation["certs"].server_cert)
    for path in (federation["certs"].server_key, federation["certs"].ca_key, federation["devices"][0]["key"]):
        assert path.stat().st_mode & 0o077 == 0  # 0600


def test_registered_devices_train_over_tls_and_the_run_resumes_after_a_superlink_restart(federation):
    out, state = federation["root"] / "run", federation["server_state"]
    first = _in_thread(deploy.run, federation["cfg"], out, state, echo=lambda _line: None)
    _wait_for(lambda: (out / "checkpoints" / "round_001.ckpt").exists(), "round 1's checkpoint", 600)
    deploy.stop_tree(*federation["procs"]["server"])  # the SuperLink goes down between rounds
    first["thread"].join(120)
    # what happens: the run in flight fails, with a message that says so (no silent hang)
    assert isinstance(first.get("error"), SimulationFailed)
    federation["start_server"]()  # same state database: registrations and node ids survive
    _wait_for(lambda: federation["online"]() == 3, "the devices to reconnect", 300)
    deploy.run(federation["cfg"], out, state, echo=lambda _line: None, resume=True)  # the resume path
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["answered"] == 3 for r in rows)
    for name in ("summary.json", "report.md", "rounds.png", "attacks.png", "checkpoints/round_003.ckpt"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_round"] >= 1
    devices = summary["federated"]["device_privacy"]
    assert sorted(devices) == ["0", "1", "2"]
    delta = federation["cfg"].dp_sgd.delta
    for d, device in enumerate(federation["devices"]):
        ledger = DeviceState.load(device["state"]).history  # the device's own record, on its own disk
        assert devices[str(d)]["steps"] == ledger.steps
        assert devices[str(d)]["epsilon"] == ledger.epsilon(delta)
    assert summary["randomness"]["private_against_server"] is True


def _refused_device_log(fed, state: Path, root_cert: Path, key: Path, name: str) -> str:
    """Start a SuperNode with these credentials; it must exit non-zero. Returns its log."""
    folder = fed["root"] / "data" / "device-0"
    cmd = deploy.device_command(f"127.0.0.1:{fed['port']}", root_cert, key, folder, state, 1, name, _free_port())
    proc = deploy.start_device(cmd, state)
    try:
        assert proc.wait(120) != 0
    finally:
        deploy.stop_tree(proc, state)
    return _log(state, "supernode.log")


def test_an_unregistered_key_is_refused(federation, tmp_path):
    key, _ = make_device_key(tmp_path, "rogue")
    log = _refused_device_log(federation, tmp_path / "s", federation["certs"].ca_cert, key, "rogue")
    assert "Failed to activate SuperNode" in log


def test_a_wrong_root_certificate_is_refused(federation, tmp_path):
    other = make_certificates(tmp_path / "other", ["127.0.0.1"])
    log = _refused_device_log(federation, tmp_path / "s", other.ca_cert, federation["devices"][0]["key"], "device-0")
    assert "CERTIFICATE_VERIFY_FAILED" in log


def test_a_killed_device_is_lost_for_its_round_and_rejoins_with_its_epsilon_and_a_revoked_one_is_cut_off(tmp_path):
    cfg = build_config(
        None,
        [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "federated.rounds=3", "audit.enabled=false",
         "federated.min_train_devices=1", "federated.min_online_devices=1"],
    )  # fmt: skip
    with _federation(tmp_path, cfg) as fed:
        out, killed = tmp_path / "run", fed["devices"][0]
        box = _in_thread(deploy.run, cfg, out, fed["server_state"], echo=lambda _line: None)
        # round 0's features reply is saved by device 0; the next ClientApp process is round 1's training
        home = deploy.flower_home(killed["state"])
        _wait_for(lambda: "query.features" in DeviceState.load(killed["state"]).replies, "round 0 on device 0", 300)
        round_0 = _clientapps(home)
        _wait_for(lambda: _clientapps(home) - round_0, "round 1 on device 0", 300)
        assert "train" not in DeviceState.load(killed["state"]).replies  # it has not trained yet
        proc, _ = fed["procs"]["device-0"]
        for pid in [proc.pid, *processes_of(home)]:  # power cut: SuperNode, SuperExec, ClientApp at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: (out / "checkpoints" / "round_001.ckpt").exists(), "round 1 without device 0", 600)
        fed["start_device"](0)  # the board comes back: same key, same data, same state folder
        deploy.unregister("device-2", fed["server_state"])  # and device 2 is revoked
        box["thread"].join(900)
        assert "error" not in box, box.get("error")
        revoked, _ = fed["procs"]["device-2"]
        _wait_for(lambda: revoked.poll() is not None, "the revoked device to be cut off", 120)

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["answered"] == 2 and rows[0]["rejected"] == 1  # device 0's loss, logged by the server
    log = (out / "flower.log").read_text()
    assert f"round 1: rejected reply of node {killed['node_id']}: device error: Error: Node Unavailable" in log
    summary = json.loads((out / "summary.json").read_text())
    device0 = summary["device_privacy"]["0"]
    ledger = DeviceState.load(killed["state"]).history
    assert device0["rounds_trained"] >= 1 and "disagreement" not in device0  # rejoined, its count intact
    assert device0["steps"] == ledger.steps and device0["epsilon"] == ledger.epsilon(cfg.dp_sgd.delta)
    assert summary["device_privacy"]["2"]["rounds_trained"] < 3  # cut off
