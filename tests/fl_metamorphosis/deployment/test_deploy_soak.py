"""Soak on loopback: SuperNodes stopped and restarted at random through a 10-round deployed run.

A seeded killer stops a random device's whole process tree (SuperNode, SuperExec, ClientApp), mostly with
SIGTERM (the SuperNode deactivates itself, so the round goes on at once) and now and then with SIGKILL
(a power cut: the server learns of it when the heartbeat expires); a supervisor restarts it with the same
key, data and state folder, as the board's systemd unit would. The killing stops once round 6 is done,
so that every device answers again before the end. The run must complete all its rounds, and each
device's own ledger must equal the server's record of it: a spend the server missed while the device
was down is caught up by the device's next report, never lost, never counted twice."""

import contextlib
import json
import os
import random
import signal
import threading
import time

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment import launch as deploy
from fl_metamorphosis.deployment.flower_processes import processes_of
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.device_state import DeviceState
from simulations.loopback import loopback_federation
from simulations.simulate import APP_DIR

pytestmark = pytest.mark.slow

ROUNDS, LAST_KILL_ROUND = 10, 6


def _power_cut(fed, name: str) -> None:
    proc, state = fed.procs[name]
    for pid in [proc.pid, *processes_of(deploy.flower_home(state))]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _rounds_done(out) -> int:
    return len(list((out / "checkpoints").glob("round_*.ckpt"))) if (out / "checkpoints").exists() else 0


def _killer(fed, out, stop: threading.Event, log: list[str]) -> None:
    """Kill a random device every 4-12 s until round 6 is done. Meanwhile, supervise as the board guide's
    systemd unit does (``Restart=always``): a SuperNode that is down is started again once its downtime
    is over and 5 s after its last start. A board back from a power cut is refused until the server has
    expired its previous session (Flower: "could not be activated"), so it may take a few starts."""
    rng = random.Random(24)
    now = time.monotonic()
    next_kill, up_after = now + rng.uniform(4.0, 12.0), {d: now for d in range(len(fed.devices))}
    while not stop.wait(0.5):
        now = time.monotonic()
        for d, device in enumerate(fed.devices):
            if fed.procs[device.name][0].poll() is not None and now >= up_after[d]:
                fed.start_device(d)
                up_after[d] = now + 5.0
        if now < next_kill or _rounds_done(out) >= LAST_KILL_ROUND:
            continue
        d = rng.randrange(len(fed.devices))
        name = fed.devices[d].name
        if rng.random() < 0.2:
            _power_cut(fed, name)
            log.append(f"SIGKILL {name}")
        else:
            fed.stop(name)
            log.append(f"SIGTERM {name}")
        up_after[d] = time.monotonic() + rng.uniform(1.0, 6.0)
        next_kill = time.monotonic() + rng.uniform(4.0, 12.0)


@pytest.mark.slow(seconds=150)
def test_devices_killed_and_restarted_at_random_for_ten_rounds_keep_ledgers_equal_to_the_servers(tmp_path):
    cfg = build_config(
        None,
        [*TINY_OVERRIDES, 'methods=["metamorphosis"]', f"federated.rounds={ROUNDS}", "audit.enabled=false",
         "federated.num_devices=2", "federated.min_train_devices=1", "federated.min_online_devices=1"],
    )  # fmt: skip
    kills: list[str] = []
    with loopback_federation(tmp_path, cfg, devices=2) as fed:  # 2, not 3: the same loop at 2/3 of the time
        out, stop = tmp_path / "run", threading.Event()
        killer = threading.Thread(target=_killer, args=(fed, out, stop, kills), daemon=True)
        killer.start()
        try:
            deploy.run(cfg, out, fed.server_state, app_dir=APP_DIR, echo=lambda _line: None)
        finally:
            stop.set()
            killer.join(60)
    assert len(kills) >= 3, kills  # the soak did kill
    print("kills:", ", ".join(kills))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    summary = json.loads((out / "summary.json").read_text())
    for d, device in enumerate(fed.devices):
        ledger = DeviceState.load(device.state).history  # the device's own record, on its own disk
        server = summary["device_privacy"][str(d)]
        assert server["steps"] == ledger.steps, (device.name, kills)
        assert server["epsilon"] == ledger.epsilon(cfg.dp_sgd.delta), (device.name, kills)
