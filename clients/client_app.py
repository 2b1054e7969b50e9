"""Flower ClientApp: a thin adapter from messages to the library's device functions.

Handlers: ``train`` (local DP-SGD on encoder + Cross-SEC, with the server's heads frozen or also
DP-trained, ``federated.device_heads``; cumulative budget kept in ``context.state``),
``query.features`` (released, clipped and noised task features of a local sample, each task in its
own record) and ``evaluate`` (local test accuracy of the global model).

The server is one of the parties the device protects itself against, so nothing it sends decides the
device's privacy randomness: noise and sampling come from the OS CSPRNG (``privacy/randomness.py``), and
a config asking for seeded, reproducible noise is refused unless this process runs a simulation that its
own operator started (``SIMULATION_ENV``, set by ``metamorphosis simulate``, never by the server). The
device's own limits in its node config (``epsilon-budget``, ``max-releases-per-pair``) bound whatever
the server's config asks for. Each task's record is shuffled on its own, so rows of two tasks' records
cannot be matched by position.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os

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
from fl_metamorphosis.privacy.randomness import Randomness, randomness_for  # noqa: E402
from fl_metamorphosis.privacy.release_ledger import ReleaseLedger  # noqa: E402
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
RELEASES = "releases"  # context.state record: the per-pair release ledger
SIMULATION_ENV = "METAMORPHOSIS_SIMULATION"  # set by the simulate launcher in the devices' environment

# Purposes of the seeded streams (randomness.source = "seeded" only): one stream per handler and round.
_TRAIN, _FEATURES, _EVALUATE = 1, 2, 3


class SeededNoiseRefused(RuntimeError):
    """A config asked a device outside simulation for noise the server could reproduce."""


def _local_data(cfg: ExperimentConfig, context: Context):
    device = int(context.node_config["partition-id"])
    return device, *device_datasets(cfg.data, cfg.federated, device, cfg.train.seed)


def _randomness(cfg: ExperimentConfig, device: int, server_round: int, purpose: int) -> Randomness:
    if cfg.randomness.source == "seeded" and os.environ.get(SIMULATION_ENV) != "1":
        raise SeededNoiseRefused(
            "randomness.source='seeded' makes the device's noise reproducible by the server; a device refuses it "
            f"outside a simulation ({SIMULATION_ENV}=1 in its environment): use randomness.source='os_entropy'"
        )
    return randomness_for(cfg.randomness.source, cfg.train.seed, device, server_round, purpose)


def _device_limit(context: Context, key: str, server_value: float | None) -> float | None:
    """The tighter of the server's config value and the device's own (node config ``key``), if any."""
    own = context.node_config.get(key)
    if own is None:
        return server_value
    return float(own) if server_value is None else min(float(own), server_value)


def _release_ledger(context: Context, num_pairs: int) -> ReleaseLedger:
    ledger = ReleaseLedger(num_pairs)
    if RELEASES in context.state.array_records:
        ledger.load_state_dict(context.state[RELEASES].to_torch_state_dict())
    return ledger


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
    randomness = _randomness(cfg, device, int(config["server-round"]), _TRAIN)
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
        _device_limit(context, "epsilon-budget", cfg.federated.device_epsilon_budget),
        cfg.federated.local_epochs,
        randomness,
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
    """Released features of a local sample; task t's record holds only task t's features and labels.

    The pairs are chosen by the release ledger (least released first, none past the cap); the ledger is
    saved to the device's state before the reply leaves."""
    config = msg.content["config"]
    cfg = experiment_from(config)
    device, data, _ = _local_data(cfg, context)
    randomness = _randomness(cfg, device, int(config["server-round"]), _FEATURES)
    generator, _ = _global_model(cfg, msg, data)
    ledger = _release_ledger(context, len(data))
    cap = _device_limit(context, "max-releases-per-pair", cfg.feature_dp.max_releases_per_pair)
    idx = ledger.choose(
        cfg.federated.feature_samples_per_device,
        queries_left=cfg.federated.rounds + 1 - ledger.queries,  # round 0 and every round
        cap=None if cap is None else int(cap),
        generator=randomness.generator(),
    )
    if len(idx):
        released = released_features(generator, data.images[idx], method_feature_dp(cfg.methods[-1], cfg), randomness)
    else:  # every pair released as often as allowed: an empty reply, still a valid one
        released = torch.zeros(0, len(data.task_names), *generator.feature_shape)
    ledger.record(idx)
    context.state[RELEASES] = ArrayRecord(ledger.state_dict())
    metrics = {
        "num-examples": len(idx),
        "device": device,
        "releases-max": ledger.max_releases,  # the most any one of its pairs has been released
        "releases-total": ledger.total_releases,
    }
    content = RecordDict({"metrics": MetricRecord(metrics)})
    for t, name in enumerate(data.task_names):
        order = torch.randperm(len(idx), generator=randomness.generator())  # rows of two tasks do not line up
        content[f"task.{name}"] = ArrayRecord(
            {"features": released[order, t].contiguous(), "labels": data.labels[idx[order], t].contiguous()}
        )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    cfg = experiment_from(config)
    device, _, test = _local_data(cfg, context)
    randomness = _randomness(cfg, device, int(config.get("server-round", 0)), _EVALUATE)
    generator, heads = _global_model(cfg, msg, test)
    released = released_features(generator, test.images, method_feature_dp(cfg.methods[-1], cfg), randomness)
    accs = task_accuracy(heads, released, test.labels)
    metrics = {f"accuracy.{name}": acc for name, acc in zip(test.task_names, accs, strict=True)}
    return Message(
        content=RecordDict({"metrics": MetricRecord({**metrics, "num-examples": len(test), "device": device})}),
        reply_to=msg,
    )
