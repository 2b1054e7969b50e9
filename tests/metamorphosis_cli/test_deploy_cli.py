"""`metamorphosis deploy` as a user meets it, without starting Flower: what it says when a device is
revoked, that logs append, that a run needing more devices than are registered is refused at once, that
a revoked key's re-registration gets the fix, and that --help shows the defaults."""

import json
import signal
import socket
import subprocess
import sys

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.config import ConfigError, build_config
from fl_metamorphosis.deployment import launch as deploy
from fl_metamorphosis.deployment.credentials import make_certificates
from fl_metamorphosis.deployment.flower_processes import RunFailed, processes_of
from metamorphosis_cli.deploy import _foreground, _revoked
from metamorphosis_cli.main import main
from simulations.loopback import free_port


def test_a_supernode_that_stops_by_itself_is_explained_as_a_revocation(tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # Flower's SuperNode exits 0 on the server's 401
    assert _foreground([proc], tmp_path, "SuperNode") == 1
    said = capsys.readouterr().err
    assert "revoked" in said and "deploy device-key --force" in said and len(said.strip().splitlines()) == 1


def test_a_supernode_ended_by_its_second_sigint_on_a_401_is_explained_as_a_revocation(tmp_path, capsys):
    (tmp_path / "supernode.log").write_text(
        "httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://127.0.0.1:9095/v1/fleet/pull-messages'\n"
        "KeyboardInterrupt\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"])
    assert _foreground([proc], tmp_path, "SuperNode") == 1
    assert proc.returncode == -signal.SIGINT
    said = capsys.readouterr().err
    assert "revoked" in said and "deploy device-key --force" in said


def test_a_401_is_read_from_the_last_start_however_long_the_tracebacks_after_it(tmp_path):
    traceback = "  File \"flwr/supercore/retry/http_retry.py\", line 105, in _should_giveup\n" * 200  # ~14 kB
    log = tmp_path / "supernode.log"
    log.write_text(f"Starting Flower SuperNode\nClient error '401 Unauthorized'\n{traceback}KeyboardInterrupt\n")
    assert _revoked(-signal.SIGINT, log)
    with log.open("a") as f:  # restarted since: that earlier 401 is not this start's
        f.write("Starting Flower SuperNode\nKeyboardInterrupt\n")
    assert not _revoked(-signal.SIGINT, log)


def test_a_supernode_interrupted_without_a_401_is_not_called_revoked(tmp_path, capsys):
    (tmp_path / "supernode.log").write_text("KeyboardInterrupt\n")
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"])
    assert _foreground([proc], tmp_path, "SuperNode") == 1
    said = capsys.readouterr().err
    assert "revoked" not in said and "SuperNode exited with code -2" in said


def test_a_supernode_the_server_did_not_activate_says_why_and_what_to_do(tmp_path, capsys):
    (tmp_path / "supernode.log").write_text("[code: 2004] Failed to activate SuperNode.\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    assert _foreground([proc], tmp_path, "SuperNode") == 1
    said = capsys.readouterr().err
    assert "key is not registered" in said and "previous session" in said


def test_a_server_process_that_dies_is_an_error_naming_its_logs(tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert _foreground([proc], tmp_path, "server") == 1
    assert f"server exited with code 3: see its logs in {tmp_path}" in capsys.readouterr().err


def test_logs_append_across_restarts(tmp_path):
    for word in ("first", "second"):
        deploy.start_device([sys.executable, "-c", f"print('{word}')"], tmp_path).wait()
    assert (tmp_path / "supernode.log").read_text().split() == ["first", "second"]


def test_a_run_needing_more_devices_than_are_registered_is_refused_at_once(tmp_path):
    (tmp_path / "devices.json").write_text(json.dumps({"pi-1": 11, "pi-2": 12}))
    cfg = build_config(None, TINY_OVERRIDES)  # 3 devices, all needed online
    with pytest.raises(ConfigError, match=r"needs 3 devices online .* 2 are registered .*'pi-1', 'pi-2'"):
        deploy.check_enough_devices(cfg, tmp_path)
    deploy.check_enough_devices(build_config(None, [*TINY_OVERRIDES, "federated.min_online_devices=2"]), tmp_path)


def test_registering_a_revoked_key_again_names_the_fix(tmp_path, monkeypatch):
    key = tmp_path / "pi.pub"
    key.write_text("ecdsa-sha2-nistp384 AAAA\n")
    said = subprocess.CompletedProcess([], 1, '{"success": false, "error-message": "Public key already in use"}', "")
    monkeypatch.setattr(deploy, "_flwr", lambda args, state: said)
    with pytest.raises(ConfigError, match="was revoked.*deploy device-key --force"):
        deploy.register(key, "pi", tmp_path)


def test_the_waiting_line_names_the_registered_devices_not_online(tmp_path, monkeypatch):
    (tmp_path / "devices.json").write_text(json.dumps({"pi-1": 11, "pi-2": 12}))
    monkeypatch.setattr(deploy, "registered_devices", lambda state: [{"node-id": "11", "status": "online"}])
    line = deploy._waiting_line("  waiting for devices: 1 connected, the run needs 2", tmp_path)
    assert line.endswith("not online: pi-2 (node 12)")


@pytest.mark.parametrize(
    "command, defaults",
    [
        ("server", ["default: 0.0.0.0", "default: 8000", "default: 9093"]),
        ("device", ["default: 9094", "default: 1"]),
    ],
)
def test_help_shows_the_defaults(command, defaults, capsys):
    with pytest.raises(SystemExit):
        main(["deploy", command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(d in text for d in defaults), text


def test_a_server_whose_gateway_cannot_start_leaves_nothing_running(tmp_path):
    certs = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    with socket.socket() as taken:  # the public port is in use: the gateway exits at once
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RunFailed, match="gateway exited"):
            deploy.start_server(certs.ca_cert.parent, "127.0.0.1", taken.getsockname()[1], tmp_path / "state",
                                control_port=free_port())  # fmt: skip
    assert processes_of(deploy.flower_home(tmp_path / "state")) == []


def test_the_command_and_the_deploy_launchers_load_without_torch(tmp_path):
    """Every `metamorphosis` call pays its imports (10 calls in docs/deploy.md's recipe; torch alone is about
    1 s here and several on a board): only the commands that train, read pairs or audit load torch. `deploy
    device` reads its folder's partition id, then supervises the SuperNode as long as the board runs."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text('{"partition_id": 7}')
    probe = (
        "import sys; import metamorphosis_cli.main, metamorphosis_cli.deploy, fl_metamorphosis.deployment.launch; "
        "from metamorphosis_cli.main import _parser; _parser(); "
        "from fl_metamorphosis.deployment.launch import device_command; "
        "cmd = device_command('127.0.0.1:9092', None, None, sys.argv[1], sys.argv[2], 1, 'd'); "
        "print(any('partition-id=7' in part for part in cmd), 'torch' in sys.modules)"
    )
    args = [sys.executable, "-c", probe, str(tmp_path / "data"), str(tmp_path / "state")]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
