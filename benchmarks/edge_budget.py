"""What one round costs a device: seconds, peak memory and bytes, at 1 and 4 threads under a memory cap.

A Raspberry Pi 4 proxy: 1 torch thread and a 2 GB address-space cap (``RLIMIT_AS``); then 4 threads,
same cap. Each setting runs in a fresh process. It calls the real ClientApp on the demo's defaults (one
device of 10: 2,000 pairs, read from its own folder of ``deploy prepare-data`` as on a board): a
``train`` message (local DP-SGD) and a ``query.features`` message (the release). It reports:

* seconds per handler (the first train message in a cold process, as a device pays it; a second, warm,
  is the reference for the secure round, which runs later in the same process);
* peak resident memory (``ru_maxrss``);
* what the release gate adds to a features message: the message again, warm, to fresh devices with the
  gate (twice; the faster is shown) and without it;
* bytes received (the global weights and the experiment config) and sent (the update, the released
  features), counted as the records' array bytes plus config values (bytes and strings by length,
  numbers 8 bytes each);
* the same for a round under secure aggregation (``federated.secure_aggregation``): a round of
  ``--secure-devices`` devices run in the same process through an in-process Grid, the server included,
  with device 0's four SecAgg+ messages counted (seconds inside its ClientApp, bytes in and out). It
  runs after the capped part, without the cap (the whole federation is in the process), and no peak
  memory is reported for it.

This machine is x86: a Pi's cores are slower, so read the seconds as a lower bound, and the memory and
bytes as what a Pi needs.

Run: .venv/bin/python benchmarks/edge_budget.py [--threads 1 4] [--memory-gb 2] [--secure-devices 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, shutil, sys, tempfile, time
T0 = time.perf_counter()
from pathlib import Path
limit = int(sys.argv[2]) * 2**30
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
import torch
torch.set_num_threads(int(sys.argv[1]))
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from clients.client_app import app
from fl_metamorphosis.config import build_config
from fl_metamorphosis.flower.model_state import joint_state
from fl_metamorphosis.training.local_round import build_generator
from fl_metamorphosis.data.device_folder import read_device_folder
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.model import build_heads

cfg = build_config(None, ['methods=["metamorphosis"]'])
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
data, _ = read_device_folder(Path(sys.argv[4]))  # as a board: its own folder of `deploy prepare-data`
PRISTINE = Path(tempfile.mkdtemp()) / "data"
shutil.copytree(sys.argv[4], PRISTINE)

def fresh_device(**node_config):
    # a device that never took part: its own state folder and an untouched copy of the data folder (a data
    # folder records the ledger of the device that used it, and a device refuses to start a new budget on it)
    data_dir = Path(tempfile.mkdtemp()) / "data"
    shutil.copytree(PRISTINE, data_dir)
    node_config = {"partition-id": 0, "threads": int(sys.argv[1]), "state-dir": tempfile.mkdtemp(),
                   "data-dir": str(data_dir), **node_config}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
gen = build_generator(cfg, data)
heads = build_heads(gen.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
context = fresh_device()

def value_size(v):
    if isinstance(v, list):
        return sum(value_size(x) for x in v)
    if isinstance(v, (bytes, str)):
        return len(v.encode() if isinstance(v, str) else v)
    return 8

def size(content):
    arrays = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    values = sum(value_size(v) for r in (*content.config_records.values(), *content.metric_records.values())
                 for v in r.values())
    return arrays + values

out = {"threads": int(sys.argv[1]), "train_pairs": len(data)}
for kind, rnd in (("train", 1), (proto.FEATURES, 1), ("train", 1)):
    content = RecordDict({proto.ARRAYS: ArrayRecord(joint_state(gen, heads)),
                          proto.CONFIG: proto.config_record(cfg, **{proto.SERVER_ROUND: rnd})})
    msg = Message(content=content, message_type=kind, dst_node_id=1, group_id=str(rnd))
    if kind in out:  # the same train message again, to a fresh device: a warm process, as in the secure round
        out["process_seconds"] = time.perf_counter() - T0  # imports + one train + one features message
        context = fresh_device()
        kind = "train_warm"
    msg.metadata.__dict__["_message_id"] = kind
    t0 = time.perf_counter()
    reply = app(msg, context)
    if reply.has_error():
        sys.exit(f"the {kind} message failed: {reply.error.reason}")
    out[kind] = {"seconds": time.perf_counter() - t0, "bytes_received": size(content),
                 "bytes_sent": size(reply.content)}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# what the release gate costs: the features message again, warm, to fresh devices with and without it
# (without: an owner's policy that allows the gate off)
from fl_metamorphosis.privacy.device_policy import DevicePolicy
no_gate = cfg.model_copy(update={"release_gate": cfg.release_gate.model_copy(update={"enabled": False})})
policy = Path(tempfile.mkdtemp()) / "policy.json"
DevicePolicy.from_config(no_gate).save(policy)
for label, c, extra in (("features_gate", cfg, {}), ("features_no_gate", no_gate, {"policy-file": str(policy)}),
                        ("features_gate_again", cfg, {})):
    ctx = fresh_device(**extra)
    content = RecordDict({proto.ARRAYS: ArrayRecord(joint_state(gen, heads)),
                          proto.CONFIG: proto.config_record(c, **{proto.SERVER_ROUND: 1})})
    msg = Message(content=content, message_type=proto.FEATURES, dst_node_id=1, group_id="1")
    msg.metadata.__dict__["_message_id"] = label
    t0 = time.perf_counter()
    if (reply := app(msg, ctx)).has_error():
        sys.exit(f"the {label} message failed: {reply.error.reason}")
    out[label] = time.perf_counter() - t0

# a secure round: every device of a round of N, the server in this process; device 0's messages counted
n = int(sys.argv[3])
if n >= 2:
    sys.path.insert(0, "tests")  # the tests' in-process Grid: every device and the server in one process
    from fl_metamorphosis.config import build_config as _cfg
    from inprocess_grid import InProcessGrid
    from server import round_loop
    from server.secure_aggregation import secure_train
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # the whole federation runs here: no device's cap
    scfg = _cfg(None, ['methods=["metamorphosis"]', "federated.secure_aggregation=true",
                       f"federated.num_devices={n}"])
    watched = {"seconds": 0.0, "bytes_received": 0, "bytes_sent": 0, "messages": 0}
    def counting_app(msg, ctx):
        t0 = time.perf_counter()
        reply = app(msg, ctx)
        if ctx.node_config["partition-id"] == 0:
            watched["seconds"] += time.perf_counter() - t0
            watched["bytes_received"] += size(msg.content)
            watched["bytes_sent"] += size(reply.content)
            watched["messages"] += 1
        return reply
    root = Path(tempfile.mkdtemp())
    grid = InProcessGrid(counting_app, n, root / "devices")
    fed = round_loop.start(scfg, root, resume=False)
    t0 = time.perf_counter()
    replies = secure_train(grid, fed, round_loop.sample(grid, fed, 1), 1)
    watched["round_seconds"] = time.perf_counter() - t0
    watched["devices"] = len(replies.contributors)
    out["secure"] = watched
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--memory-gb", type=int, default=2)
    parser.add_argument("--secure-devices", type=int, default=10, help="devices in the secure round (0: skip)")
    args = parser.parse_args()
    rows = []
    sys.path.insert(0, str(ROOT))
    from fl_metamorphosis.config import build_config
    from fl_metamorphosis.deployment.launch import prepare_data

    folders = Path(tempfile.mkdtemp(prefix="mm-edge-"))
    device_0 = prepare_data(build_config(None, ['methods=["metamorphosis"]']), 10, folders)[0]
    for threads in args.threads:
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(threads), str(args.memory_gb), str(args.secure_devices), str(device_0)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if res.returncode != 0:
            print(f"threads {threads}: failed under {args.memory_gb} GB:\n{res.stderr[-2000:]}")
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
    shutil.rmtree(folders, ignore_errors=True)
    print(f"one device of the demo (2,000 pairs), address space capped at {args.memory_gb} GB, this machine's CPU")
    header = ("threads", "train s", "features s", "peak MB", "recv kB/round", "sent kB/round", "process s")
    print("{:>7} {:>8} {:>10} {:>8} {:>13} {:>13} {:>9}".format(*header))
    for r in rows:
        recv = (r["train"]["bytes_received"] + r["query.features"]["bytes_received"]) / 1e3
        sent = (r["train"]["bytes_sent"] + r["query.features"]["bytes_sent"]) / 1e3
        print(
            f"{r['threads']:>7} {r['train']['seconds']:>8.2f} {r['query.features']['seconds']:>10.2f} "
            f"{r['peak_rss_mb']:>8.0f} {recv:>13.1f} {sent:>13.1f} {r['process_seconds']:>9.1f}"
        )
    print("\nthe release gate (privacy/release_gate.py): a features message, warm, with and without it")
    print("{:>7} {:>12} {:>12} {:>10}".format("threads", "gate s", "no gate s", "gate adds"))
    for r in rows:
        gate = min(r["features_gate"], r["features_gate_again"])
        print(f"{r['threads']:>7} {gate:>12.2f} {r['features_no_gate']:>12.2f} {gate - r['features_no_gate']:>9.2f}s")
    secure = [r for r in rows if "secure" in r]
    if secure:
        print(
            f"\nunder secure aggregation (SecAgg+, {secure[0]['secure']['devices']} devices a round): "
            "device 0's four messages"
        )
        print(
            "{:>7} {:>10} {:>13} {:>13} {:>13} {:>14}".format(
                "threads", "device s", "vs plain s", "recv kB", "sent kB", "sent vs plain"
            )
        )
        for r in secure:
            sec = r["secure"]
            print(
                f"{r['threads']:>7} {sec['seconds']:>10.2f} {sec['seconds'] / r['train_warm']['seconds']:>12.2f}x "
                f"{sec['bytes_received'] / 1e3:>13.1f} {sec['bytes_sent'] / 1e3:>13.1f} "
                f"{sec['bytes_sent'] / r['train']['bytes_sent']:>13.2f}x"
            )
        print(
            "(vs plain: a plain train message in the same, warm process; seconds inside the ClientApp. Flower 1.42 "
            "starts a process per message: a secure round is 5 messages a device, a plain one 2)"
        )
    if len(rows) == 2:
        a, b = rows
        ratio = a["train"]["seconds"] / b["train"]["seconds"]
        print(f"train time, {a['threads']} thread(s) over {b['threads']}: {ratio:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
