"""Real-device deployment on loopback: a SuperLink with TLS and device authentication, registered devices
with their own data and state folders, and the refusals. Every process is stopped by PID, also when a
test fails."""

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.checkpoint import load_run
from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.credentials import certificate_names, make_certificates, make_device_key
from fl_metamorphosis.federated.device_state import DeviceState, ReplyMemo
from fl_metamorphosis.flower.messages import TrainReply, from_payload
from fl_metamorphosis.flower.secagg_records import mean_error_bound
from fl_metamorphosis.metrics import read_jsonl
from simulations import deploy
from simulations.loopback import free_port, log_text, loopback_federation, wait_for
from simulations.simulate import SimulationFailed, processes_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    # secure aggregation on: the first test's rounds go through SecAgg+ over TLS (the killed-device test's are plain)
    overrides = [
        *TINY_OVERRIDES,
        'methods=["metamorphosis"]',
        "federated.rounds=3",
        "federated.secure_aggregation=true",
    ]
    cfg = build_config(None, overrides)
    with loopback_federation(tmp_path_factory.mktemp("deploy"), cfg) as fed:
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
    assert "127.0.0.1" in certificate_names(federation.certs.server_cert)
    for path in (federation.certs.server_key, federation.certs.ca_key, federation.devices[0].key):
        assert path.stat().st_mode & 0o077 == 0  # 0600


def test_registered_devices_train_over_tls_with_secure_aggregation_and_resume_after_a_superlink_restart(
    federation,
):
    out, state = federation.root / "run", federation.server_state
    first = _in_thread(deploy.run, federation.cfg, out, state, echo=lambda _line: None)
    wait_for(lambda: (out / "checkpoints" / "round_001.ckpt").exists(), "round 1's checkpoint", 600)
    deploy.stop_tree(*federation.procs["server"])  # the SuperLink goes down between rounds
    first["thread"].join(120)
    # what happens: the run in flight fails, with a message that says so (no silent hang)
    assert isinstance(first.get("error"), SimulationFailed)
    federation.start_server()  # same state database: registrations and node ids survive
    wait_for(lambda: federation.online() == 3, "the devices to reconnect", 300)
    deploy.run(federation.cfg, out, state, echo=lambda _line: None, resume=True)  # the resume path
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["answered"] == 3 for r in rows)
    for name in ("summary.json", "report.md", "rounds.png", "attacks.png", "checkpoints/round_003.ckpt"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_round"] >= 1
    # every round of the resumed run (its own flower.log) summed the updates under SecAgg+
    log = (out / "flower.log").read_text()
    assert log.count("Secure aggregation completed") == 3 - summary["resumed_from_round"]
    # the secure aggregate is the plain FedAvg of the devices' own last updates (kept on their disks)
    replies = [TrainReply.from_record(from_payload(ReplyMemo(d.state).last("train")))
               for d in federation.devices]  # fmt: skip
    weights = [r.num_examples for r in replies]
    global_after = load_run(out / "checkpoints" / "round_003.ckpt").generator
    bound = mean_error_bound(federation.cfg.federated.secagg, weights)
    for name, value in global_after.items():
        fedavg = sum(w * r.weights[f"generator.{name}"] for w, r in zip(weights, replies, strict=True)) / sum(weights)
        assert abs(value.numpy() - fedavg).max() <= bound + 1e-6, name
    devices = summary["federated"]["device_privacy"]
    assert sorted(devices) == ["0", "1", "2"]
    delta = federation.cfg.dp_sgd.delta
    for d, device in enumerate(federation.devices):
        ledger = DeviceState.load(device.state).history  # the device's own record, on its own disk
        assert devices[str(d)]["steps"] == ledger.steps
        assert devices[str(d)]["epsilon"] == ledger.epsilon(delta)
    assert summary["randomness"]["private_against_server"] is True


def _refused_device_log(fed, state: Path, root_cert: Path, key: Path, name: str) -> str:
    """Start a SuperNode with these credentials; it must exit non-zero. Returns its log."""
    folder = fed.root / "data" / "device-0"
    cmd = deploy.device_command(f"127.0.0.1:{fed.port}", root_cert, key, folder, state, 1, name, free_port())
    proc = deploy.start_device(cmd, state)
    try:
        assert proc.wait(120) != 0
    finally:
        deploy.stop_tree(proc, state)
    return log_text(state, "supernode.log")


def test_an_unregistered_key_is_refused(federation, tmp_path):
    key, _ = make_device_key(tmp_path, "rogue")
    log = _refused_device_log(federation, tmp_path / "s", federation.certs.ca_cert, key, "rogue")
    assert "Failed to activate SuperNode" in log


def test_a_wrong_root_certificate_is_refused(federation, tmp_path):
    other = make_certificates(tmp_path / "other", ["127.0.0.1"])
    log = _refused_device_log(federation, tmp_path / "s", other.ca_cert, federation.devices[0].key, "device-0")
    assert "CERTIFICATE_VERIFY_FAILED" in log


def test_a_killed_device_is_lost_for_its_round_and_rejoins_with_its_epsilon_and_a_revoked_one_is_cut_off(tmp_path):
    cfg = build_config(
        None,
        [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "federated.rounds=3", "audit.enabled=false",
         "federated.min_train_devices=1", "federated.min_online_devices=1"],
    )  # fmt: skip
    with loopback_federation(tmp_path, cfg) as fed:
        out, killed = tmp_path / "run", fed.devices[0]
        box = _in_thread(deploy.run, cfg, out, fed.server_state, echo=lambda _line: None)
        # round 0's features reply is saved by device 0; the next ClientApp process is round 1's training
        home = deploy.flower_home(killed.state)
        wait_for(lambda: ReplyMemo(killed.state).last("query.features") is not None, "round 0 on device 0", 300)
        round_0 = _clientapps(home)
        wait_for(lambda: _clientapps(home) - round_0, "round 1 on device 0", 300)
        assert ReplyMemo(killed.state).last("train") is None  # it has not trained yet
        proc, _ = fed.procs["device-0"]
        for pid in [proc.pid, *processes_of(home)]:  # power cut: SuperNode, SuperExec, ClientApp at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: (out / "checkpoints" / "round_001.ckpt").exists(), "round 1 without device 0", 600)
        fed.start_device(0)  # the board comes back: same key, same data, same state folder
        deploy.unregister("device-2", fed.server_state)  # and device 2 is revoked
        box["thread"].join(900)
        assert "error" not in box, box.get("error")
        revoked, _ = fed.procs["device-2"]
        wait_for(lambda: revoked.poll() is not None, "the revoked device to be cut off", 120)

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["answered"] == 2 and rows[0]["rejected"] == 1  # device 0's loss, logged by the server
    log = (out / "flower.log").read_text()
    assert f"round 1: rejected reply of node {killed.node_id}: device error: Error: Node Unavailable" in log
    summary = json.loads((out / "summary.json").read_text())
    device0 = summary["device_privacy"]["0"]
    ledger = DeviceState.load(killed.state).history
    assert device0["rounds_trained"] >= 1 and "disagreement" not in device0  # rejoined, its count intact
    assert device0["steps"] == ledger.steps and device0["epsilon"] == ledger.epsilon(cfg.dp_sgd.delta)
    assert summary["device_privacy"]["2"]["rounds_trained"] < 3  # cut off
