"""What a deployed round waits on: the objects a message is carried in, and the devices' idle poll.

* **Objects.** Flower moves a message object by object, one request per object on every hop. The tiny
  preset's train request is counted with Flower's ``get_all_nested_objects`` in Flower's own form and
  packed (``fl_metamorphosis/flower/packed_records.py``, what the server sends), with its bytes.
* **The idle poll.** The same tiny deployment, run with the devices' idle poll at Flower's 3 s and at
  ``--poll-s`` (default 0.5 s, the loopback federation's), in alternating order over ``--trials``: a TLS
  SuperLink and ``--devices`` registered SuperNodes on loopback (``simulations/loopback.py``),
  configs/tiny.toml, ``--rounds`` rounds, the audit off. Per run: the wall time of ``deploy run``, the
  machine's CPU time over it (``/proc/stat``, every process), and the median of its rounds as the ServerApp
  timed them. The table gives the median and range over the trials, and the ratio within each trial.

Both sides run packed: the server always packs. What packing alone changed was measured once, against the
code before it (docs/deploy.md).

    python benchmarks/deployed_round.py [--trials 3] [--devices 2] [--rounds 4] [--poll-s 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import spread  # noqa: E402
from warm_clientapp import busy_cpu_s, tiny_deployment  # noqa: E402

from fl_metamorphosis.deployment import launch  # noqa: E402
from fl_metamorphosis.flower.process_timing import FLOWER_POLL_S  # noqa: E402
from fl_metamorphosis.metrics import read_jsonl  # noqa: E402
from simulations.loopback import loopback_federation  # noqa: E402


def train_request_objects(cfg) -> list[tuple[str, int, int]]:
    """(form, objects, bytes) of a tiny train request, in Flower's form and packed."""
    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.task_identity import TaskIdentity

    from fl_metamorphosis.data import load_dataset
    from fl_metamorphosis.flower.messages import config_record
    from fl_metamorphosis.flower.model_state import joint_state
    from fl_metamorphosis.flower.packed_records import pack
    from fl_metamorphosis.model import build_heads
    from fl_metamorphosis.training.local_round import build_generator

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # a message outside a runtime
    data = load_dataset(cfg.data, cfg.train.seed)
    generator = build_generator(cfg, data.train)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.train.tasks], cfg.model)
    content = RecordDict({"arrays": ArrayRecord(joint_state(generator, heads)), "config": config_record(cfg)})
    rows = []
    for form, body in (("Flower's", content), ("packed", pack(content))):
        objects = get_all_nested_objects(Message(content=body, message_type="train", dst_node_id=1, group_id="1"))
        rows.append((form, len(objects), sum(len(o.deflate()) for o in objects.values())))
    return rows


def one_run(cfg, poll_s: float, devices: int) -> tuple[float, float, float]:
    """(run s, CPU s of the machine, median round s) of one deployed run."""
    with tempfile.TemporaryDirectory(prefix="mm-round-") as root:
        with loopback_federation(Path(root), cfg, devices=devices, poll_s=poll_s) as fed:
            cpu, start = busy_cpu_s(), time.perf_counter()
            launch.run(cfg, Path(root) / "run", fed.server_state, app_dir=ROOT, echo=lambda _line: None)
            wall, cpu = time.perf_counter() - start, busy_cpu_s() - cpu
            rounds = [r["seconds"] for r in read_jsonl(Path(root) / "run" / "metrics.jsonl")]
            return wall, cpu, statistics.median(rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--poll-s", type=float, default=0.5, help="the idle poll compared with Flower's 3 s")
    args = p.parse_args()
    cfg = tiny_deployment(args.devices, args.rounds)
    print("| tiny train request | objects | bytes |\n|---|---|---|")
    for form, objects, size in train_request_objects(cfg):
        print(f"| {form} | {objects} | {size} |")
    polls = (FLOWER_POLL_S, args.poll_s)
    got: dict[float, list[tuple[float, float, float]]] = {poll: [] for poll in polls}
    for trial in range(args.trials):
        for poll in polls if trial % 2 == 0 else polls[::-1]:
            got[poll].append(one_run(cfg, poll, args.devices))
            wall, cpu, rnd = got[poll][-1]
            print(f"trial {trial + 1}/{args.trials}, poll {poll:g} s: run {wall:.1f} s, {cpu:.1f} CPU s, "
                  f"round {rnd:.1f} s", flush=True)  # fmt: skip
    print(f"\n{args.devices} devices, {args.rounds} rounds, {args.trials} trials; median (min-max)\n")
    print("| idle poll | run s | CPU s (all processes) | round s (median of the run's) |\n|---|---|---|---|")
    for poll in polls:
        cols = [spread([run[i] for run in got[poll]], ".1f") for i in range(3)]
        print(f"| {poll:g} s | " + " | ".join(cols) + " |")
    ratios = [[a[i] / b[i] for a, b in zip(got[polls[1]], got[polls[0]], strict=True)] for i in range(3)]
    print(f"| {polls[1]:g} s / {polls[0]:g} s | " + " | ".join(spread(r, ".2f") for r in ratios) + " |")


if __name__ == "__main__":
    main()
