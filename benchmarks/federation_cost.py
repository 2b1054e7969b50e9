"""Cost of federation: a Flower simulation's start-up, its per-round cost against a centralized epoch,
and the wall time per device per round that is not training.

Both sides train MetaMorphosis with the same model, the same DP-SGD (target epsilon, clipping), the same
training pairs and the same passes over them (one round of one local epoch = one central epoch), with
the audit switched off, measured in one process on this machine, one after the other:

* central: ``train_method`` for ``max(--rounds)`` epochs; an epoch's seconds are the median difference
  of the cumulative ``seconds`` of its history (the data load excluded);
* each simulation runs twice, for the two ``--rounds`` lengths. Its per-round cost is the median of its
  rounds as the ServerApp timed them (``metrics.jsonl``), pooled over both runs; the difference of the two
  wall times over the difference of the rounds is printed beside it, but start-up alone varies by several
  seconds from run to run, more than a few rounds of a small federation cost. Start-up (launch, Ray,
  imports, round 0, the final evaluation and shutdown) is the shorter run's wall time minus its rounds;
* non-training milliseconds per device per round: (per-round cost - central epoch) / devices. The
  central epoch is the same training work, so the rest is federation: messages, data composition on
  the device, state files, feature release and head training, Ray scheduling.
* Flower's floor, measured the same way: a Flower App whose devices do nothing but
  send the model back, with this run's messages (a feature query to as many devices as a round samples
  first, then each round a train message and a feature query to every device, an evaluation at the
  end) and the model's size both ways, launched as ``simulate`` launches. What the floor costs, no work
  on the devices or the server can remove.

    python benchmarks/federation_cost.py [--devices 10 100] [--rounds 3 10] [--pairs 20000] [--no-floor]
                                         [--gate-off-too]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.data import load_dataset  # noqa: E402
from fl_metamorphosis.deployment.flower_processes import stop_processes  # noqa: E402
from fl_metamorphosis.flower.model_state import joint_state  # noqa: E402
from fl_metamorphosis.metrics import read_jsonl  # noqa: E402
from fl_metamorphosis.model import build_heads  # noqa: E402
from fl_metamorphosis.training.local_round import build_generator  # noqa: E402
from fl_metamorphosis.training.trainer import train_method  # noqa: E402
from simulations.simulate import flower_env, simulate  # noqa: E402

FLOOR_APP = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "floor"
        version = "0.1.0"
        [tool.flwr.app]
        publisher = "benchmark"
        [tool.flwr.app.components]
        serverapp = "federation_floor.apps:server"
        clientapp = "federation_floor.apps:client"
        [tool.flwr.app.config]
        rounds = 1
        devices = 1
        sampled = 1
        parameters = 1
    """,
    "federation_floor/__init__.py": "",
    "federation_floor/apps.py": """
        import time

        import numpy as np
        from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import ServerApp

        client = ClientApp()  # one name an assignment: Flower finds the components by reading the source
        server = ServerApp()

        def echo(msg, context):
            return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

        client.train()(echo)
        client.query()(echo)
        client.evaluate()(echo)

        @server.main()
        def main(grid, context):
            cfg = context.run_config
            arrays = ArrayRecord([np.zeros(int(cfg["parameters"]), np.float32)])

            def send(kind, nodes, rnd):
                # the round in the content, as in the real protocol: every message of the run is distinct
                content = RecordDict({"arrays": arrays, "config": ConfigRecord({"round": rnd})})
                messages = [Message(content, dst_node_id=n, message_type=kind) for n in nodes]
                replies = list(grid.send_and_receive(messages))
                assert len(replies) == len(nodes) and not any(r.has_error() for r in replies), "lost replies"

            while len(nodes := sorted(grid.get_node_ids())) < int(cfg["devices"]):
                time.sleep(0.1)  # the simulation registers its nodes as it starts, as the real run waits for them
            send(MessageType.QUERY, nodes[: int(cfg["sampled"])], 0)
            for rnd in range(1, int(cfg["rounds"]) + 1):
                started = time.perf_counter()
                send(MessageType.TRAIN, nodes, rnd)
                send(MessageType.QUERY, nodes, rnd)
                print(f"FLOOR ROUND {time.perf_counter() - started:.4f}", flush=True)
            send(MessageType.EVALUATE, nodes, -1)
            print("FLOOR DONE", flush=True)
    """,
}


def central_epoch_seconds(common: list[str], epochs: int) -> tuple[float, float]:
    cfg = build_config(None, [*common, f"train.epochs={epochs}"])
    torch.set_num_threads(2)
    trained = train_method("metamorphosis", load_dataset(cfg.data, cfg.train.seed), cfg)
    seconds = [r["seconds"] for r in trained.history]
    epoch = statistics.median(b - a for a, b in zip(seconds, seconds[1:], strict=False))
    return epoch, trained.history[-1]["test_acc.left"]


def simulation_config(common: list[str], devices: int, rounds: int):
    return build_config(
        None,
        [
            *common,
            f"federated.num_devices={devices}",
            f"federated.rounds={rounds}",
            "federated.local_epochs=1",
            f"federated.min_train_devices={min(2, devices)}",
        ],
    )


def simulation_seconds(common: list[str], devices: int, rounds: int) -> tuple[float, list[float]]:
    """The run's wall seconds, and the seconds of each round as the ServerApp timed it (metrics.jsonl)."""
    cfg = simulation_config(common, devices, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate(cfg, Path(tmp) / "run", echo=lambda _line: None)
        seconds = time.perf_counter() - t0
        return seconds, [row["seconds"] for row in read_jsonl(Path(tmp) / "run" / "metrics.jsonl")]


def model_parameters(common: list[str]) -> int:
    cfg = build_config(None, common)
    data = load_dataset(cfg.data, cfg.train.seed)
    generator = build_generator(cfg, data.train)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.train.tasks], cfg.model)
    return sum(t.numel() for t in joint_state(generator, heads).values())


def floor_seconds(devices: int, rounds: int, sampled: int, parameters: int) -> tuple[float, list[float]]:
    """Wall seconds of the do-nothing App's run (``FLOOR_APP``), launched as ``simulate`` launches, and
    the seconds of each of its rounds as its ServerApp timed them."""
    with tempfile.TemporaryDirectory() as tmp:
        app, home = Path(tmp) / "app", Path(tmp) / ".flwr"
        for name, text in FLOOR_APP.items():
            (app / name).parent.mkdir(parents=True, exist_ok=True)
            (app / name).write_text(textwrap.dedent(text))
        home.mkdir()
        (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
        ray_tmp = Path(tempfile.mkdtemp(prefix="mm-ray-"))
        cmd = ["flwr", "run", str(app), "local", "--stream"]
        cmd += ["--federation-config", f"num-supernodes={devices} client-resources-num-cpus=1"]
        cmd += ["--run-config", f"rounds={rounds} devices={devices} sampled={sampled} parameters={parameters}"]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, env=flower_env(home, ray_tmp), cwd=tmp, capture_output=True, text=True)
        finally:
            stop_processes(home)
        seconds = time.perf_counter() - t0
        log = res.stdout + res.stderr
        if res.returncode != 0 or "FLOOR DONE" not in log:
            raise RuntimeError(f"the floor App's run failed (exit {res.returncode}):\n{log[-2000:]}")
        return seconds, [float(line.split()[-1]) for line in log.splitlines() if line.startswith("FLOOR ROUND")]


def _span(seconds: list[float]) -> str:
    return f"; its rounds {min(seconds):.2f}-{max(seconds):.2f} s (median {statistics.median(seconds):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, nargs=2, default=[3, 10])
    p.add_argument("--pairs", type=int, default=20_000)
    p.add_argument("--no-floor", action="store_true", help="skip Flower's floor (the do-nothing App)")
    p.add_argument(
        "--gate-off-too",
        action="store_true",
        help="beside each population, the same runs with the devices' release gate off (what the gate costs)",
    )
    args = p.parse_args()
    short, long = sorted(args.rounds)
    common = [f"data.train_pairs={args.pairs}", "audit.enabled=false", 'methods=["metamorphosis"]']

    epoch_s, acc = central_epoch_seconds(common, long)
    print(f"central: {args.pairs} pairs, {long} epochs: {epoch_s:.2f} s an epoch (accuracy left {acc:.3f})", flush=True)
    parameters = model_parameters(common)
    rows = []
    variants = [("", [])] + ([(", release gate off", ["release_gate.enabled=false"])] if args.gate_off_too else [])
    for n in args.devices:
        for label, extra in variants:
            (a, rounds_a), (b, rounds_b) = (simulation_seconds([*common, *extra], n, r) for r in (short, long))
            print(
                f"simulate {n} devices{label}: {short} rounds {a:.1f} s, {long} rounds {b:.1f} s"
                + _span(rounds_a + rounds_b)
            )
            lengths, timed = (b - a) / (long - short), statistics.median(rounds_a + rounds_b)
            row = [f"{n} devices{label}", f"{a:.1f}", f"{b:.1f}", f"{a - short * timed:.1f}", f"{lengths:.2f}"]
            row += [f"{timed:.2f}", f"{timed / epoch_s:.2f}x", f"{(timed - epoch_s) / n * 1e3:.0f}"]
            rows.append(row)
        if args.no_floor:
            continue
        sampled = simulation_config(common, n, short).federated.sampled_per_round()
        (a, rounds_a), (b, rounds_b) = (floor_seconds(n, r, sampled, parameters) for r in (short, long))
        print(
            f"Flower's floor, {n} devices: {short} rounds {a:.1f} s, {long} rounds {b:.1f} s"
            + _span(rounds_a + rounds_b)
        )
        # its rounds timed inside the run: two run lengths cannot resolve a second a round when start-up
        # alone varies by several seconds from run to run
        lengths, timed = (b - a) / (long - short), statistics.median(rounds_a + rounds_b)
        row = [f"{n}: Flower's floor", f"{a:.1f}", f"{b:.1f}", f"{a - short * timed:.1f}", f"{lengths:.2f}"]
        rows.append([*row, f"{timed:.2f}", f"{timed / epoch_s:.2f}x", f"{timed / n * 1e3:.0f}"])

    print(
        f"\n| run | {short} rounds s | {long} rounds s | start-up s | s / round (two lengths) | s / round (timed) "
        "| round / central epoch | non-training ms / device / round |\n" + "|---" * 8 + "|"
    )
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"(central epoch: {epoch_s:.2f} s; model {parameters} parameters; targets: start-up <= 15 s, <= 1.2x at "
        "10 devices, <= 1.5x at 100, <= 20 ms)"
    )


if __name__ == "__main__":
    main()
