"""Flower ClientApp: a thin adapter from messages to the library's device functions.

Handlers: ``train`` (local DP-SGD on encoder + Cross-SEC, with the server's heads frozen or also
DP-trained, ``federated.device_heads``; cumulative budget kept in ``context.state``),
``query.features`` (released, clipped and noised task features of a local sample, each task in its
own record) and ``evaluate`` (local test accuracy of the global model).
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging

logging.getLogger().addHandler(logging.NullHandler())  # before opacus' basicConfig (see privacy/dp_sgd.py)

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fl_metamorphosis.config import ExperimentConfig  # noqa: E402
from fl_metamorphosis.federated import train_locally  # noqa: E402
from fl_metamorphosis.federated.device import build_generator, privacy_plan, split_state  # noqa: E402
from fl_metamorphosis.fl.partition import device_datasets  # noqa: E402
from fl_metamorphosis.fl.records import experiment_from, load_json  # noqa: E402
from fl_metamorphosis.model import build_heads  # noqa: E402
from fl_metamorphosis.training import method_feature_dp, released_features, task_accuracy  # noqa: E402

# Everything imported so far (torch, Ray, Flower, Opacus: about half a million objects) lives as long as
# the process. Freezing it takes it out of the cyclic collector's scans, so the full collection that
# ``release_memory`` runs after every message costs microseconds instead of about 0.2 s (most of a
# simulated device's overhead: benchmarks/gc_freeze.py).
gc.freeze()


def release_memory(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: collect the reference cycles a DP-SGD round leaves (Opacus' hooks) and hand the freed
    heap back to the OS. Without it a simulated device's Ray actor grew by about 270 MB a round (4.2 GB
    after 21 rounds of 10 devices); with it one device's process stayed flat over 12 rounds."""
    reply = call_next(msg, context)
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return reply


try:  # glibc only (Linux devices); elsewhere the collection alone still runs
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 - probe that the symbol exists
except (OSError, AttributeError):
    _LIBC = None

app = ClientApp(mods=[release_memory])
PRIVACY = "privacy"  # context.state record: accountant history and the device's noise multiplier


def _local_data(cfg: ExperimentConfig, context: Context):
    device = int(context.node_config["partition-id"])
    return device, *device_datasets(cfg.data, cfg.federated, device, cfg.train.seed)


def _noise_multiplier(cfg: ExperimentConfig, context: Context, plan) -> float:
    """Calibrated once per device (first round it trains) for taking part in every round, then kept."""
    stored = load_json(context.state, PRIVACY, "noise-multiplier", None)
    if stored is not None:
        return float(stored)
    return plan.noise_multiplier(cfg.federated.rounds * cfg.federated.local_epochs)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    cfg = experiment_from(config)
    device, data, _ = _local_data(cfg, context)
    history = [tuple(h) for h in load_json(context.state, PRIVACY, "history", [])]
    plan = privacy_plan(cfg, data)
    sigma = _noise_multiplier(cfg, context, plan)
    gen_w, head_w = split_state(msg.content["arrays"].to_torch_state_dict())
    update = train_locally(
        cfg,
        data,
        gen_w,
        head_w,
        history,
        sigma,
        cfg.federated.device_epsilon_budget,
        cfg.federated.local_epochs,
        seed=cfg.train.seed * 100_003 + device * 1_009 + int(config["server-round"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        train_heads=cfg.federated.device_heads == "dp_trained",
    )
    context.state[PRIVACY] = ConfigRecord(
        {"history": json.dumps(update.history), "noise-multiplier": json.dumps(sigma)}
    )
    metrics = MetricRecord(
        {
            "num-examples": update.num_examples,
            "train-loss": update.train_loss,
            "epsilon": update.epsilon,
            # what the server needs to re-account the epsilon with an independent accountant
            "noise-multiplier": sigma,
            "sample-rate": update.history[-1][1] if update.history else 0.0,
            "steps": sum(int(h[2]) for h in update.history),
            "grouped": int(plan.grouped),  # accounted per group of pairs (nopeek)
            "declined": int(update.declined is not None),
            "device": device,
        }
    )
    content = RecordDict({"metrics": metrics})
    if update.weights is not None:
        content["arrays"] = ArrayRecord(update.weights)
    else:
        content["status"] = ConfigRecord({"declined": update.declined})
    return Message(content=content, reply_to=msg)


def _global_model(cfg: ExperimentConfig, msg: Message, data):
    gen_w, head_w = split_state(msg.content["arrays"].to_torch_state_dict())
    generator = build_generator(cfg, data)
    generator.load_state_dict(gen_w)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.load_state_dict(head_w)
    return generator, heads


@app.query("features")
def features(msg: Message, context: Context) -> Message:
    """Released features of a local sample; task t's record holds only task t's features and labels."""
    config = msg.content["config"]
    cfg = experiment_from(config)
    device, data, _ = _local_data(cfg, context)
    generator, _ = _global_model(cfg, msg, data)
    rng = torch.Generator().manual_seed(cfg.train.seed * 7_919 + device * 31 + int(config["server-round"]))
    idx = torch.randperm(len(data), generator=rng)[: cfg.federated.feature_samples_per_device]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    released = released_features(generator, data.images[idx], method_feature_dp(cfg.methods[-1], cfg), seed)
    content = RecordDict({"metrics": MetricRecord({"num-examples": len(idx), "device": device})})
    for t, name in enumerate(data.task_names):
        content[f"task.{name}"] = ArrayRecord({"features": released[:, t].contiguous(), "labels": data.labels[idx, t]})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = experiment_from(msg.content["config"])
    device, _, test = _local_data(cfg, context)
    generator, heads = _global_model(cfg, msg, test)
    released = released_features(generator, test.images, method_feature_dp(cfg.methods[-1], cfg), cfg.train.seed)
    accs = task_accuracy(heads, released, test.labels)
    metrics = {f"accuracy.{name}": acc for name, acc in zip(test.task_names, accs, strict=True)}
    return Message(
        content=RecordDict({"metrics": MetricRecord({**metrics, "num-examples": len(test), "device": device})}),
        reply_to=msg,
    )
