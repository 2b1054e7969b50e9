"""``metamorphosis deploy ...``: the real-device commands (launchers in ``fl_metamorphosis/deployment/launch.py``).

On the server:   deploy certs, deploy server, deploy register / unregister, deploy prepare-data, deploy run
On each board:   deploy device-key, deploy device
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from fl_metamorphosis.config import ConfigError, load_config
from fl_metamorphosis.deployment import CONTROL_PORT

from .main import say, say_error, use_checkout


def add_parser(sub) -> None:
    deploy = sub.add_parser("deploy", help="real devices: certificates, keys, SuperLink, SuperNodes, runs")
    cmds = deploy.add_subparsers(dest="deploy_command", required=True)

    certs = cmds.add_parser("certs", help="a CA and the SuperLink's TLS certificate (with cryptography)")
    certs.add_argument("--out", type=Path, required=True, help="the folder `deploy server --certs` reads")
    certs.add_argument("--host", action="append", default=[], help="an IP or DNS name devices use (repeatable)")
    certs.add_argument(
        "--ca-dir",
        type=Path,
        help="the CA's folder, kept away from the server (default: OUT-ca; an existing CA there is reused)",
    )
    certs.add_argument("--force", action="store_true", help="replace an existing server certificate and key")

    server = cmds.add_parser(
        "server",
        help="a SuperLink on loopback behind the Fleet gateway: TLS, device authentication, persistent state",
    )
    server.add_argument("--certs", type=Path, help="the folder of `deploy certs`")
    server.add_argument(
        "--host", help="the address devices connect to (default: 0.0.0.0; with --insecure, 127.0.0.1 and only that)"
    )
    server.add_argument(
        "--port", type=int, default=8000, help="the one port to open on the server: the Fleet gateway (default: 8000)"
    )
    server.add_argument(
        "--control-port",
        type=int,
        default=CONTROL_PORT,
        help=f"the SuperLink's own port, on 127.0.0.1 only: the operator's commands (default: {CONTROL_PORT})",
    )
    server.add_argument("--state", type=Path, required=True, help="the SuperLink's state folder (kept)")
    server.add_argument("--insecure", action="store_true", help="no TLS, no authentication, loopback only: tests ONLY")
    server.add_argument(
        "--upload-ttl-s",
        type=float,
        help="how long a device's reply upload may take before the SuperLink gives it up, and the round stops "
        "waiting for a device killed mid-upload (Flower's default: 180)",
    )

    key = cmds.add_parser("device-key", help="on the board: its key pair (the private key never leaves it)")
    key.add_argument("--out", type=Path, required=True)
    key.add_argument("--name", default="device", help="file name of the key pair (default: device)")
    key.add_argument("--force", action="store_true", help="replace an existing key pair (it may be registered)")

    register = cmds.add_parser("register", help="on the server: let a device's public key join")
    register.add_argument("public_key", type=Path)
    register.add_argument("--name", required=True)
    register.add_argument("--state", type=Path, required=True, help="the SuperLink's state folder")

    unregister = cmds.add_parser("unregister", help="on the server: revoke a device (cut off at once)")
    unregister.add_argument("name")
    unregister.add_argument("--state", type=Path, required=True, help="the SuperLink's state folder")

    device = cmds.add_parser("device", help="on the board: a SuperNode with its data and privacy state")
    device.add_argument("--superlink", help="HOST:PORT of the server's Fleet gateway (required to start)")
    device.add_argument("--root-cert", type=Path, help="the CA certificate (ca.crt of `deploy certs`)")
    device.add_argument("--key", type=Path, help="the device's private key (`deploy device-key`)")
    device.add_argument("--data", type=Path, required=True, help="the device's folder of `deploy prepare-data`")
    device.add_argument("--state", type=Path, required=True, help="a folder that survives restarts (privacy ledger)")
    device.add_argument("--threads", type=int, default=1, help="torch threads for training (default: 1)")
    device.add_argument("--name", default="device", help="the device's name in its logs (default: device)")
    device.add_argument(
        "--runtime-port",
        type=int,
        default=9094,
        help="a local-only port of the SuperNode; several devices on one host need one each (default: 9094)",
    )
    device.add_argument("--insecure", action="store_true", help="no TLS, no authentication: loopback tests ONLY")
    device.add_argument(
        "--heartbeat-s",
        type=float,
        help="the SuperNode's heartbeat, 10 to 1800 s: the server declares this device dead after two missed "
        "(Flower's default: 30)",
    )
    device.add_argument(
        "--poll-s",
        type=float,
        help="how long the SuperNode waits before it asks the server again when no message was waiting, 0.1 to "
        "60 s (Flower's default: 3); each phase of a round reaches the device up to that late, and each poll is a "
        "request to the server. The wait grows back to 3 s while no message comes (a tenth of the time since the "
        "last one), so an idle device asks as seldom as Flower's",
    )
    device.add_argument(
        "--cold-clientapp",
        action="store_true",
        help="start every message's ClientApp as a new process, as Flower does, instead of forking it from a "
        "process that keeps the libraries imported and holds their memory between messages (docs/deploy.md)",
    )
    device.add_argument(
        "--reset-privacy-state",
        action="store_true",
        help="forget this device's recorded privacy spend (a lost or broken ledger) and exit; the next start "
        "begins a fresh budget. Only the device's owner should: the spend already released stays released",
    )
    owner = device.add_argument_group(
        "the device owner's privacy policy: a request asking for less is refused (default: the project's defaults)"
    )
    owner.add_argument(
        "--policy", type=Path, help="a policy file (TOML; fields in docs/privacy.md): the floors this device keeps"
    )
    owner.add_argument("--epsilon-budget", type=float, help="the most DP-SGD epsilon this device spends")
    owner.add_argument("--max-releases-per-pair", type=int, help="the most times one pair's features are released")
    owner.add_argument(
        "--require-secure-aggregation", action="store_true", help="refuse to send an update outside SecAgg+"
    )
    owner.add_argument("--secure-aggregation-min-devices", type=int, help="refuse secure rounds of fewer devices")

    for name, text in (("prepare-data", "one data folder per device"), ("run", "start the experiment")):
        cmd = cmds.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path)
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        cmd.add_argument("--out", type=Path, required=True)
    cmds.choices["prepare-data"].add_argument("--devices", type=int, required=True)
    cmds.choices["run"].add_argument("--state", type=Path, required=True, help="the SuperLink's state folder")
    cmds.choices["run"].add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")


def _owner_limits(args) -> dict[str, str | int | float]:
    """The device owner's limits as the node config keys the ClientApp reads."""
    limits: dict[str, str | int | float] = {}
    for key, ok, bound in (
        ("epsilon-budget", lambda v: v > 0, "> 0"),
        ("max-releases-per-pair", lambda v: v >= 1, ">= 1"),
        ("secure-aggregation-min-devices", lambda v: v >= 2, ">= 2"),
    ):
        value = getattr(args, key.replace("-", "_"))
        if value is None:
            continue
        if not ok(value):
            raise ConfigError(f"deploy device: --{key} must be {bound}")
        limits[key] = value
    if args.require_secure_aggregation:
        limits["secure-aggregation"] = "required"
    if args.policy is not None:
        from fl_metamorphosis.privacy.device_policy import DevicePolicy, PolicyError

        try:
            DevicePolicy.load(args.policy)  # a bad file is the owner's error now, not a refusal at every request
        except PolicyError as err:
            raise ConfigError(f"deploy device --policy: {err}") from None
        limits["policy-file"] = str(args.policy.resolve())
    return limits


def _foreground(procs: list, state: Path, what: str) -> int:
    """Wait on a server's or a device's processes; Ctrl-C or SIGTERM stops them and what they started.
    One exiting stops the others: a SuperLink without its gateway, or the reverse, serves no one."""
    from fl_metamorphosis.deployment import launch

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        code = next(proc.returncode for proc in procs if proc.poll() is not None)
        if what == "SuperNode" and _revoked(code, state / "supernode.log"):
            say_error(
                "error:",
                "the server no longer accepts this device's key: it was revoked (`deploy unregister`). A revoked "
                "key cannot be registered again: make a new one here (`deploy device-key --force`) and give its "
                f".pub to the operator for `deploy register`. SuperNode log: {state / 'supernode.log'}",
            )
        elif what == "SuperNode" and "Failed to activate SuperNode" in _last_start_log(state / "supernode.log"):
            say_error(
                "error:",
                "the server did not activate this device: its key is not registered there, or, after a power cut, "
                "the server still holds the device's previous session (it expires within about a minute). Start "
                f"it again then (the systemd unit's Restart= does). SuperNode log: {state / 'supernode.log'}",
            )
        else:
            say_error("error:", f"{what} exited with code {code}: see its logs in {state}")
        return 1
    except KeyboardInterrupt:
        say(f"stopping the {what}")
        return 0
    finally:
        launch.stop_group(procs, state)  # a server's gateway before its SuperLink


def _revoked(code: int, log: Path) -> bool:
    """Whether a SuperNode stopped because the server refused its key. On a 401, Flower 1.42's SuperNode
    sends itself SIGINT and exits 0. When its heartbeat and its poll for messages are refused at about the
    same time, it gets two, and the second, arriving while it exits, ends it by SIGINT instead: its log
    then holds the 401s."""
    return code == 0 or (code == -signal.SIGINT and "401 Unauthorized" in _last_start_log(log))


SUPERNODE_START = "Starting Flower SuperNode"  # the first line each start of a SuperNode writes to its log


def _last_start_log(log: Path, size: int = 1 << 16) -> str:
    """What the SuperNode's last start wrote to its log, which appends across starts (from at most its last
    ``size`` bytes). Not a fixed tail: a 401 can be followed by several kilobytes of Flower's tracebacks."""
    if not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - size))
        text = f.read().decode(errors="replace")
    return text[text.rfind(SUPERNODE_START) :] if SUPERNODE_START in text else text


def run_deploy(args: argparse.Namespace) -> int:
    from fl_metamorphosis.deployment import launch
    from fl_metamorphosis.deployment.credentials import make_certificates, make_device_key

    match args.deploy_command:
        case "certs":
            if not args.host:
                raise ConfigError("deploy certs: give --host for every IP or name the devices use (e.g. 192.168.1.10)")
            files = make_certificates(args.out, args.host, ca_dir=args.ca_dir, force=args.force)
            say(f"CA certificate (copy to every device): {files.ca_cert}")
            say(f"SuperLink certificate for {', '.join(args.host)} and loopback: {files.server_cert}")
            say(f"the server's private key (0600): {files.server_key}")
            say(f"the CA's private key (0600): {files.ca_key}: keep its folder off the server, offline")
        case "server":
            host = args.host or ("127.0.0.1" if args.insecure else "0.0.0.0")
            launch.check_server_addresses(args.certs, host, args.insecure)
            if args.insecure:
                say(launch.INSECURE_WARNING, "yellow")
            procs = launch.start_server(
                args.certs, host, args.port, args.state, control_port=args.control_port, upload_ttl_s=args.upload_ttl_s
            )
            say(
                f"devices connect to {host}:{args.port}"
                + (" (no TLS)" if args.insecure else f" (Fleet API only; log {args.state / 'gateway.log'})")
            )
            say(f"SuperLink on 127.0.0.1:{args.port if args.insecure else args.control_port} only "
                 f"(log {args.state / 'superlink.log'}); Ctrl-C stops both")  # fmt: skip
            return _foreground(procs, args.state, "server")
        case "device-key":
            private, public = make_device_key(args.out, args.name, force=args.force)
            say(f"private key (0600, stays on this device): {private}")
            say(f"public key (give it to the operator for `deploy register`): {public}")
        case "register":
            node_id = launch.register(args.public_key, args.name, args.state)
            say(f"registered {args.name} as node {node_id}")
        case "unregister":
            node_id = launch.unregister(args.name, args.state)
            say(
                f"revoked {args.name} (node {node_id}): the server refuses its key from its next request on, and "
                "its SuperNode stops. To re-admit the board, it needs a new key (`deploy device-key --force` on "
                "the board), registered with `deploy register`: a revoked key stays refused"
            )
        case "device":
            if args.reset_privacy_state:
                from fl_metamorphosis.privacy.device_state import reset_device_state

                say(reset_device_state(args.data, args.state), "yellow")
                return 0
            if args.superlink is None:
                raise ConfigError("deploy device: give --superlink HOST:PORT (the server's Fleet gateway)")
            if args.insecure:
                say(launch.INSECURE_WARNING, "yellow")
            elif args.root_cert is None or args.key is None:
                raise ConfigError("deploy device: give --root-cert and --key, or --insecure for loopback tests")
            cmd = launch.device_command(
                args.superlink,
                None if args.insecure else args.root_cert,
                None if args.insecure else args.key,
                args.data,
                args.state,
                args.threads,
                args.name,
                args.runtime_port,
                _owner_limits(args),
                heartbeat_s=args.heartbeat_s,
                poll_s=args.poll_s,
            )
            proc = launch.start_device(cmd, args.state, warm=not args.cold_clientapp)
            say(f"device {args.name} -> {args.superlink} (log: {args.state / 'supernode.log'})")
            return _foreground([proc], args.state, "SuperNode")
        case "prepare-data":
            folders = launch.prepare_data(load_config(args.config, args.overrides), args.devices, args.out)
            say(f"{len(folders)} device folders in {args.out}: copy device-N/ onto board N")
        case "run":
            cfg = load_config(args.config, args.overrides)
            app_dir = use_checkout("deploy run")
            from fl_metamorphosis.tracking import TrackedRun  # --set tracking.backend=mlflow: docs/tracking.md

            with TrackedRun(args.out, cfg, resume=args.resume):
                out = launch.run(cfg, args.out, args.state, app_dir=app_dir, echo=say, resume=args.resume)
            report = out / "report.md"
            print(report.read_text() if report.exists() else f"run folder: {out}")
    return 0
