"""Real-device deployment on loopback: a SuperLink with TLS and device authentication, registered devices
with their own data and state folders, and the refusals. Every process is stopped by PID, also when a
test fails."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, TINY_PRESET
from netns import intruder_namespace

from fl_metamorphosis.checkpoint import load_run
from fl_metamorphosis.config import ConfigError, build_config
from fl_metamorphosis.deployment import launch as deploy
from fl_metamorphosis.deployment.credentials import certificate_names, make_certificates, make_device_key
from fl_metamorphosis.deployment.flower_processes import RunFailed, processes_of
from fl_metamorphosis.flower.messages import TrainReply, from_payload
from fl_metamorphosis.flower.secagg_records import mean_error_bound
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.device_state import DeviceState, ReplyMemo
from metamorphosis_cli.deploy import _revoked
from simulations.loopback import free_port, log_text, loopback_federation, wait_for
from simulations.simulate import APP_DIR

pytestmark = pytest.mark.slow


# secure aggregation on: the first test's rounds go through SecAgg+ over TLS (the killed-device test's are plain)
MODULE_OVERRIDES = ['methods=["metamorphosis"]', "federated.rounds=3", "federated.secure_aggregation=true"]


@pytest.fixture(scope="module")
def namespace():
    with intruder_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def federation(tmp_path_factory, namespace):
    cfg = build_config(None, [*TINY_OVERRIDES, *MODULE_OVERRIDES])
    # the Fleet gateway on the address the intruder's namespace reaches (a LAN address, in effect)
    host = namespace.host_ip if namespace else "127.0.0.1"
    with loopback_federation(tmp_path_factory.mktemp("deploy"), cfg, host=host) as fed:
        yield fed


def _clientapps(home: Path) -> set[int]:
    """PIDs of the ClientApp processes a SuperNode started (one per message): started by Flower (the command)
    or forked by the warm ClientApp's zygote (the process name)."""
    found = set()
    for pid in processes_of(home):
        with contextlib.suppress(OSError):
            proc = Path(f"/proc/{pid}")
            started = b"flwr-clientapp" in (proc / "cmdline").read_bytes()
            if started or (proc / "comm").read_text() == "flwr-clientapp\n":
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


def _intruder(fed, namespace, home: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """A Flower CLI call by someone holding only ca.crt, from the intruder's namespace (or this host)."""
    full = namespace.command(cmd) if namespace else cmd
    return subprocess.run(full, env=deploy.deployment_env(home), capture_output=True, text=True, timeout=120)


@pytest.mark.slow(seconds=15)
def test_a_stranger_with_the_ca_certificate_cannot_register_list_or_run_and_the_devices_stay(
    federation, namespace, tmp_path
):
    home = tmp_path / "intruder-home"  # a fresh Flower home: only the public CA certificate
    home.mkdir()
    address = f"{federation.host}:{federation.port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "{address}"\n'
        f'root-certificates = "{federation.certs.ca_cert}"\n'
    )
    _, public = make_device_key(tmp_path, "intruder")
    attempts = {
        "register": ["flwr", "supernode", "register", str(public), "target", "--name", "intruder"],
        "list": ["flwr", "supernode", "list", "target"],
        "runs": ["flwr", "ls", "target"],
        "run": ["flwr", "run", str(APP_DIR), "target", "--run-config", "config-path=''"],
    }
    for what, cmd in attempts.items():
        res = _intruder(federation, namespace, home, cmd)
        assert res.returncode != 0, (what, res.stdout[-500:], res.stderr[-500:])
    gateway_log = log_text(federation.server_state, "gateway.log")
    source = namespace.ip if namespace else "127.0.0.1"
    for route in ("register-node", "list-nodes", "list-runs", "start-run"):
        assert f"refused POST /v1/control/{route} from {source}" in gateway_log, route
    # the SuperLink's own port: loopback only, so from another host nothing answers there at all
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)"
    for target in ([federation.host, str(federation.control_port)], ["127.0.0.1", str(federation.control_port)]):
        if namespace:
            res = _intruder(federation, namespace, home, [sys.executable, "-c", probe, *target])
            assert res.returncode != 0 and "ConnectionRefusedError" in res.stderr, target
    superlink = Path(f"/proc/{federation.procs['server'][0].pid}/cmdline").read_bytes().split(b"\0")
    assert superlink[superlink.index(b"--host") + 1] == b"127.0.0.1"
    # nothing changed for the operator and the devices
    nodes = deploy.registered_devices(federation.server_state)
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(d.node_id for d in federation.devices)
    assert federation.online() == 3


@pytest.mark.slow(seconds=105)
def test_registered_devices_train_over_tls_with_secure_aggregation_and_resume_after_a_superlink_restart(
    federation,
):
    out, state = federation.root / "run", federation.server_state
    first = _in_thread(deploy.run, federation.cfg, out, state, app_dir=APP_DIR, echo=lambda _line: None)
    wait_for(lambda: (out / "checkpoints" / "round_001.ckpt").exists() or "error" in first, "round 1", 600)
    assert "error" not in first, first.get("error")
    federation.stop("server")  # the SuperLink goes down between rounds
    # the gateway first: the SuperLink then ends on its TERM, not killed once its grace is over
    assert federation.procs["server"][0].returncode != -signal.SIGKILL
    first["thread"].join(120)
    # what happens: the run in flight fails, with a message that says so (no silent hang)
    assert isinstance(first.get("error"), RunFailed)
    federation.start_server()  # same state database: registrations and node ids survive
    wait_for(lambda: federation.online() == 3, "the devices to reconnect", 300)
    deploy.run(federation.cfg, out, state, app_dir=APP_DIR, echo=lambda _line: None, resume=True)  # the resume path
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["answered"] == 3 for r in rows)
    for name in ("summary.json", "report.md", "rounds.png", "attacks.png", "checkpoints/round_003.ckpt"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_round"] >= 1
    assert summary["command"] == "deploy" and (out / "report.md").read_text().startswith("# deploy run")
    assert "Accuracy (acc columns)" in (out / "report.md").read_text()
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


@pytest.mark.slow(seconds=20)
def test_a_killed_deploy_run_stops_its_run_after_saying_which_device_it_waits_for(federation, tmp_path):
    """The launcher, as a user starts it, into a used run folder, while device-2 is offline; then `kill`."""
    federation.stop("device-2")
    wait_for(lambda: federation.online() == 2, "device-2 to go offline", 120)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for stale in ("report.md", "rounds.png", "checkpoints/round_009.ckpt", "config.json"):
        (out / stale).write_text("an earlier run's")
    cli = Path(sys.executable).parent / "metamorphosis"
    sets = [f"--set={item}" for item in (*MODULE_OVERRIDES, "audit.enabled=false")]
    cmd = [str(cli), "deploy", "run", "--config", str(TINY_PRESET), *sets, "--out", str(out),
           "--state", str(federation.server_state)]  # fmt: skip
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, launcher.kill)  # a line that never comes fails the test, not the suite
    watchdog.start()
    said: list[str] = []
    try:
        for line in launcher.stdout:
            said.append(line)
            if "waiting for devices" in line:
                break
        assert "not online: device-2" in said[-1], said[-5:]
        for stale in ("report.md", "rounds.png", "checkpoints/round_009.ckpt"):  # a fresh run clears them
            assert not (out / stale).exists(), stale
        launcher.send_signal(signal.SIGTERM)  # `kill`: the run on the SuperLink must stop too
        assert launcher.wait(120) != 0
    finally:
        watchdog.cancel()
        launcher.kill()
        federation.start_device(2)
    run_id = int(re.search(r"Successfully started run (\d+)", (out / "flower.log").read_text()).group(1))
    env = deploy.deployment_env(deploy.flower_home(federation.server_state))

    def status() -> str:
        res = subprocess.run(["flwr", "ls", deploy.CONNECTION, "--run-id", str(run_id), "--format", "json"], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        return json.loads(res.stdout)["runs"][0]["status"]

    wait_for(lambda: status() == "finished:stopped", "the run to stop on the SuperLink", 120)
    wait_for(lambda: federation.online() == 3, "device-2 back", 120)


def _refused_device_log(fed, state: Path, root_cert: Path, key: Path, name: str) -> str:
    """Start a SuperNode with these credentials; it must exit non-zero. Returns its log."""
    folder = fed.root / "data" / "device-0"
    cmd = deploy.device_command(f"{fed.host}:{fed.port}", root_cert, key, folder, state, 1, name, free_port())
    proc = deploy.start_device(cmd, state)
    try:
        assert proc.wait(120) != 0
    finally:
        deploy.stop_group([proc], state)
    return log_text(state, "supernode.log")


def test_an_unregistered_key_is_refused(federation, tmp_path):
    key, _ = make_device_key(tmp_path, "rogue")
    log = _refused_device_log(federation, tmp_path / "s", federation.certs.ca_cert, key, "rogue")
    assert "Failed to activate SuperNode" in log


def test_a_wrong_root_certificate_is_refused(federation, tmp_path):
    other = make_certificates(tmp_path / "other", ["127.0.0.1"])
    log = _refused_device_log(federation, tmp_path / "s", other.ca_cert, federation.devices[0].key, "device-0")
    assert "CERTIFICATE_VERIFY_FAILED" in log


@pytest.mark.slow(seconds=125)
def test_a_killed_device_is_lost_for_its_round_and_rejoins_with_its_epsilon_and_a_revoked_one_is_cut_off(tmp_path):
    cfg = build_config(
        None,
        [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "federated.rounds=3", "audit.enabled=false",
         "federated.min_train_devices=1", "federated.min_online_devices=1"],
    )  # fmt: skip
    with loopback_federation(tmp_path, cfg, cold=(1,)) as fed:  # device 1 as Flower runs it, without the zygote
        out, killed = tmp_path / "run", fed.devices[0]
        box = _in_thread(deploy.run, cfg, out, fed.server_state, app_dir=APP_DIR, echo=lambda _line: None)
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
        # how Flower's SuperNode ends on a 401 (code 0, or SIGINT when its heartbeat and its poll were refused
        # together): `deploy device` explains it as a revocation
        assert _revoked(revoked.returncode, fed.devices[2].state / "supernode.log"), revoked.returncode
        with pytest.raises(ConfigError, match="was revoked"):  # a revoked key stays out, and the error says so
            deploy.register(fed.root / "keys" / "device-2.pub", "device-2-again", fed.server_state)
        # re-admission: a new key made on the board, registered, and the board is back with its own ledger
        key, public = make_device_key(fed.root / "keys", "device-2", force=True)
        fed.devices[2].key, fed.devices[2].node_id = key, deploy.register(public, "device-2-again", fed.server_state)
        fed.start_device(2)
        wait_for(lambda: fed.online() == 3, "device-2 back with a new key", 120)

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
