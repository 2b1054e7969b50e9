"""What one round costs a device: seconds, peak memory and bytes, at 1 and 4 threads under a memory cap.

A Raspberry Pi 4 proxy: 1 torch thread and a 2 GB address-space cap (``RLIMIT_AS``); then 4 threads,
same cap. Each setting runs in a fresh process. It calls the real ClientApp on the demo's defaults (one
device of 10: 2,000 pairs): a ``train`` message (local DP-SGD) and a ``query.features`` message (the
release). It reports:

* seconds per handler;
* peak resident memory (``ru_maxrss``);
* bytes received (the global weights and the experiment config) and sent (the update, the released
  features), counted as the records' array bytes plus config strings.

This machine is x86: a Pi's cores are slower, so read the seconds as a lower bound, and the memory and
bytes as what a Pi needs. Secure aggregation is not measured yet: it is not implemented (issue 10).

Run: .venv/bin/python benchmarks/edge_budget.py [--threads 1 4] [--memory-gb 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, tempfile, time
limit = int(sys.argv[2]) * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
torch.set_num_threads(int(sys.argv[1]))
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from clients.client_app import app
from fl_metamorphosis.config import build_config
from fl_metamorphosis.federated.device import build_generator, joint_state
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.flower.partition import device_datasets
from fl_metamorphosis.model import build_heads

cfg = build_config(None, ['methods=["metamorphosis"]'])
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
gen = build_generator(cfg, data)
heads = build_heads(gen.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
state = tempfile.mkdtemp()
context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "state-dir": state,
                  "threads": int(sys.argv[1])}, state=RecordDict(), run_config={})

def size(content):
    arrays = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    configs = sum(len(str(v)) for r in content.config_records.values() for v in r.values())
    return arrays + configs

out = {"threads": int(sys.argv[1]), "train_pairs": len(data)}
for kind, rnd in (("train", 1), (proto.FEATURES, 1)):
    content = RecordDict({proto.ARRAYS: ArrayRecord(joint_state(gen, heads)),
                          proto.CONFIG: proto.config_record(cfg, **{proto.SERVER_ROUND: rnd})})
    msg = Message(content=content, message_type=kind, dst_node_id=1, group_id=str(rnd))
    msg.metadata.__dict__["_message_id"] = kind
    t0 = time.perf_counter()
    reply = app(msg, context)
    out[kind] = {"seconds": time.perf_counter() - t0, "bytes_received": size(content),
                 "bytes_sent": size(reply.content)}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--memory-gb", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(threads), str(args.memory_gb)], capture_output=True, text=True, cwd=ROOT
        )
        if res.returncode != 0:
            print(f"threads {threads}: failed under {args.memory_gb} GB:\n{res.stderr[-2000:]}")
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["process_seconds"] = time.perf_counter() - t0  # with start-up (imports), as a device pays per message
        rows.append(row)
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
    if len(rows) == 2:
        a, b = rows
        ratio = a["train"]["seconds"] / b["train"]["seconds"]
        print(f"train time, {a['threads']} thread(s) over {b['threads']}: {ratio:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
