"""The federated round loop (ServerApp side), as named stages over the library.

A round: ``sample`` devices (the strategy's own sampling and train messages: global encoder +
Cross-SEC weights, the frozen heads, the experiment) -> the train exchange: ``train`` (send, collect)
-> ``check_replies`` (protocol, tensors, the privacy ledger) -> ``aggregate`` (the strategy's rule) ->
``query_features`` (released task features of the devices that answered) -> ``train_heads`` (head t on
task t's features only) -> ``evaluate`` (the server's held-out set) -> ``checkpoint`` (the whole run
state, atomically) -> ``report`` (a metrics row and a log line). ``run_federated`` is the loop over them;
a resumed run starts from the last checkpoint.

The fleet model and secure aggregation are attachments the stages call (``round_attachments.py``),
chosen once in ``start`` from the config: the run's ``Participation`` (``FlowerParticipation`` here, or
``FleetParticipation``: which devices can take part, a round skipped when too few can) and its
``TrainExchange`` (``PlainExchange`` here: ``train`` then ``check_replies``; or ``SecureExchange``:
SecAgg+, the server receives only the sum).

The checkpoint is written before the round's metrics row: a crash between the two loses nothing, since
a resumed run rewrites ``metrics.jsonl`` from the checkpoint's rows (no duplicate, no gap).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fl_metamorphosis.checkpoint import (
    INITIAL_FILE,
    RunCheckpoint,
    capture_rng,
    latest_run,
    load_run,
    restore_rng,
    save_model,
    save_run,
)
from fl_metamorphosis.config import ExperimentConfig, FeatureDPConfig
from fl_metamorphosis.data import TrainTestSplit, load_dataset
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.flower.arrays import torch_state
from fl_metamorphosis.flower.model_state import joint_state, split_state
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.metrics import JsonlWriter, write_jsonl
from fl_metamorphosis.model import FeatureGenerator, build_heads
from fl_metamorphosis.privacy import ServerLedger
from fl_metamorphosis.training import evaluate as evaluate_on

from .final_report import AttackerDraw, final_report, interim_audit
from .fleet_grid import FleetParticipation
from .replies import REPLY_TIMEOUT_S, DeviceBinding, SortedReplies, book_report, sender, sort_replies
from .round_attachments import Participation, TrainExchange
from .secure_aggregation import SecureExchange
from .server_heads import train_head
from .strategies import build_strategy
from .strategy_state import load_strategy_state, strategy_state

log = logging.getLogger(__name__)


@dataclass
class Federation:
    """What lives across rounds on the server; all of it is in every checkpoint but the attachments (a
    resumed run chooses them again from its config) and the attacker draw (drawn again when needed)."""

    cfg: ExperimentConfig
    out: Path
    split: TrainTestSplit  # the server uses its held-out test set only
    generator: FeatureGenerator
    heads: nn.ModuleList
    strategy: Strategy
    ledger: ServerLedger
    participation: Participation  # who takes part in a round (an attachment, chosen in ``start``)
    exchange: TrainExchange  # a round's training, plain or secure (an attachment, chosen in ``start``)
    rows: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    round: int = 0  # the last complete round
    resumed_from: int | None = None  # the checkpoint's round, when this process resumed the run
    started: float = field(default_factory=time.perf_counter)
    command: str = "simulate"  # the launcher: "simulate" or "deploy" (the report names it)
    round0: Releases | None = None  # round 0's query (before any training), reported in round 1's row
    binding: DeviceBinding = field(default_factory=DeviceBinding)  # which device each node speaks for
    attacker: AttackerDraw | None = None  # the audit's attacker data and label-only floors, once drawn

    def __post_init__(self) -> None:
        self.plan = method_plan(self.cfg)  # resolved once for the run

    @property
    def method(self) -> str:
        return self.plan.name

    @property
    def tasks(self) -> list[str]:
        return self.split.test.task_names

    @property
    def feature_dp(self) -> FeatureDPConfig:
        return self.plan.feature_dp

    def arrays(self) -> ArrayRecord:
        return ArrayRecord(joint_state(self.generator, self.heads))  # the heads travel with the encoder


def start(cfg: ExperimentConfig, out: Path, resume: bool) -> Federation:
    """A new federation, or (``resume``) the one in ``out``'s last checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    split = load_dataset(cfg.data, cfg.train.seed)
    num_classes = [t.num_classes for t in split.test.tasks]
    generator = FeatureGenerator(
        method_plan(cfg).name, split.test.image_shape, len(num_classes), cfg.model, num_classes
    )
    heads = build_heads(generator.feature_shape, num_classes, cfg.model)
    fed = Federation(
        cfg,
        out,
        split,
        generator,
        heads,
        build_strategy(cfg.federated),
        ServerLedger(cfg.dp_sgd.delta, cfg.dp_sgd.accountant),
        FleetParticipation(cfg) if cfg.federated.fleet.enabled else FlowerParticipation(),
        SecureExchange() if cfg.federated.secure_aggregation else PlainExchange(),
    )
    last = latest_run(out / "checkpoints") if resume else None
    if last is None:
        if resume:
            log.info("no complete round to resume from: starting at round 1 (devices keep their privacy state)")
        write_jsonl(out / "metrics.jsonl", [])
        write_jsonl(out / "audits.jsonl", [])
        # the weights of round 0's feature query: the held-rows audit attacks those rows under them
        save_model(out / "checkpoints" / INITIAL_FILE, fed.method, generator.state_dict(), heads.state_dict(),
                   json.loads(cfg.model_dump_json()))  # fmt: skip
        return fed
    ckpt = load_run(last)
    generator.load_state_dict(ckpt.generator)
    heads.load_state_dict(ckpt.heads)
    load_strategy_state(fed.strategy, ckpt.strategy)
    fed.ledger.load_state_dict(ckpt.ledger)
    restore_rng(ckpt.rng)
    fed.rows, fed.audits, fed.round, fed.resumed_from = ckpt.rows, ckpt.audits, ckpt.round, ckpt.round
    fed.binding = DeviceBinding.from_state_dict(ckpt.binding)
    write_jsonl(out / "metrics.jsonl", fed.rows)  # exactly the rounds the checkpoint holds
    write_jsonl(out / "audits.jsonl", fed.audits)
    log.info(f"resuming after round {ckpt.round} of {cfg.federated.rounds} ({last.name})")
    return fed


def sample(grid: Grid, fed: Federation, rnd: int) -> list[Message]:
    if not fed.participation.enough_devices(grid, fed, rnd):  # the round is skipped
        return []
    return list(fed.strategy.configure_train(rnd, fed.arrays(), proto.config_record(fed.cfg), grid))


def train(grid: Grid, messages: list[Message]) -> list[Message]:
    """Send the train messages; the replies that arrive (devices that fail or time out send none)."""
    return list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S))


def destinations(messages: list[Message]) -> dict[str, int]:
    """Message id -> destination node, for naming the node an error reply is about."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages}


def check_replies(fed: Federation, replies: list[Message], sent: dict[str, int], rnd: int) -> SortedReplies:
    """Protocol and tensor checks, then the ledger: every well-formed report is counted (the update left
    the device whether or not it is aggregated), and an update the server's count puts past the budget
    is not aggregated."""
    checked = sort_replies(
        replies,
        joint_state(fed.generator, fed.heads),
        sent,
        binding=fed.binding,
        max_examples=fed.cfg.federated.max_device_examples,
    )
    aggregatable = {id(m) for m in checked.valid}  # a set: a list lookup per report is quadratic in devices
    for reply, msg in checked.reports:
        past_budget = book_report(fed.ledger, reply, fed.cfg, rnd, aggregatable=id(msg) in aggregatable)
        if past_budget is not None:
            checked.reject(msg, past_budget)
    for node, reason in checked.rejected.items():
        log.warning(f"  round {rnd}: rejected reply of node {node}: {reason}")
    stop_if_too_few(fed, rnd, len(sent), checked.refused, "train")
    return checked


class PlainExchange:
    """The train exchange without secure aggregation (``round_attachments.TrainExchange``): the server
    receives, checks and books each device's update."""

    def exchange(self, grid: Grid, fed: Federation, messages: list[Message], rnd: int) -> SortedReplies:
        return check_replies(fed, train(grid, messages), destinations(messages), rnd)


def aggregate(fed: Federation, rnd: int, replies: SortedReplies) -> bool:
    if not replies.valid or len(replies.contributors) < fed.cfg.federated.min_train_devices:
        log.warning(
            f"  round {rnd}: only {len(replies.contributors)} valid updates (< federated.min_train_devices="
            f"{fed.cfg.federated.min_train_devices}): not aggregated"
        )
        return False
    new_arrays, _ = fed.strategy.aggregate_train(rnd, replies.valid)
    if new_arrays is not None:
        gen_w, head_w = split_state(torch_state(new_arrays))
        fed.generator.load_state_dict(gen_w)
        fed.heads.load_state_dict(head_w)  # unchanged when the devices keep them frozen
    return True


@dataclass
class Releases:
    """What one features query brought: each task's rows, and what the devices held back."""

    per_task: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # features, labels
    withheld: dict[str, list[int]] = field(default_factory=dict)  # task -> devices whose gate withheld it
    reasons: dict[str, str] = field(default_factory=dict)  # task -> one device's reason (a fixed sentence)
    refused: dict[int, str] = field(default_factory=dict)  # node -> the device policy's refusal
    noise: dict[str, list[float]] = field(default_factory=dict)  # task -> each releasing device's noise step

    def least_noise(self) -> dict[str, float]:
        """Per released task, the lowest noise step any device released it at (what the audit attacks)."""
        return {t: min(steps) for t, steps in self.noise.items() if steps}

    def rows(self, tasks: list[str]) -> dict[str, int]:
        return {t: len(self.per_task[t][0]) if t in self.per_task else 0 for t in tasks}


def query_features(grid: Grid, fed: Federation, nodes: list[int], rnd: int) -> Releases:
    """Released features of ``nodes``, per task, concatenated; each reply's counts go to the ledger."""
    content = RecordDict(
        {proto.ARRAYS: fed.arrays(), proto.CONFIG: proto.config_record(fed.cfg, **{proto.SERVER_ROUND: rnd})}
    )
    messages = [
        Message(content=content, message_type=proto.FEATURES, dst_node_id=node, group_id=f"features-{rnd}")
        for node in nodes
    ]
    per_task: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    out = Releases()
    replies = list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S))
    sent, seen = destinations(messages), set()
    expected = release_shape(fed)
    for reply in replies:
        node = sender(reply, sent)
        try:
            if node in seen:
                raise proto.MessageError("a second reply in one round (the first one stands)")
            seen.add(node)
            if reply.has_error():
                if proto.is_policy_refusal(reply.error.reason):
                    out.refused[node] = reply.error.reason
                    continue
                raise proto.MessageError(reply.error.reason)
            released = proto.FeaturesReply.from_record(reply.content, fed.tasks).check(expected)
            wrong_device = fed.binding.claim(node, released.device)
            if wrong_device is not None:
                raise proto.MessageError(wrong_device)
        except (proto.MessageError, KeyError, TypeError, ValueError) as err:
            log.warning(f"  round {rnd}: rejected features reply of node {node}: {err}")
            continue
        fed.ledger.record_releases(released.device, released.releases_max, released.num_examples)
        for name, reason in released.withheld.items():
            out.withheld.setdefault(name, []).append(released.device)
            out.reasons.setdefault(name, reason)
        for name, (feats, labels) in released.tasks.items():
            if len(feats):
                out.noise.setdefault(name, []).append(released.noise.get(name, 1.0))
                per_task.setdefault(name, ([], []))[0].append(feats)
                per_task[name][1].append(labels)
    out.per_task = {t: (torch.cat(f), torch.cat(y)) for t, (f, y) in per_task.items() if f}
    for name, devices in out.withheld.items():
        log.info(f"  round {rnd}: release gate of {len(devices)} device(s) withheld {name}: {out.reasons[name]}")
    stop_if_too_few(fed, rnd, len(nodes), out.refused, "features")
    return out


def release_shape(fed: Federation) -> proto.ReleaseShape:
    """What each features reply must fit: the server's own feature shape, classes and request size."""
    return proto.ReleaseShape(
        tuple(fed.generator.feature_shape),
        {t.name: t.num_classes for t in fed.split.test.tasks},
        fed.cfg.federated.feature_samples_per_device,
    )


class TooFewDevices(RuntimeError):
    """The devices' privacy policies refuse the run's config: too few devices are left to go on."""


def stop_if_too_few(fed: Federation, rnd: int, asked: int, refused: dict[int, str], stage: str) -> None:
    """Log each refusal; end the run with the devices' own words when the rest cannot make a round."""
    for node, reason in refused.items():
        log.warning(f"  round {rnd}: node {node} refused the {stage} request: {reason}")
    left = asked - len(refused)
    if refused and left < fed.cfg.federated.min_train_devices:
        first = next(iter(refused.values())).split(proto.POLICY_REFUSED, 1)[-1]
        message = (
            f"round {rnd}: {len(refused)} of {asked} devices refused the {stage} request under their privacy "
            f"policy, {left} left (< federated.min_train_devices={fed.cfg.federated.min_train_devices}). "
            f"A device's words: {first}. Raise the config to the devices' floors, or have their owners change "
            "their policy (docs/privacy.md)"
        )
        log.error(message)
        raise TooFewDevices(message)


def some_devices(grid: Grid, fed: Federation) -> list[int]:
    """As many devices as a round samples, for a feature query outside a round's training (round 0, or a
    round nobody answered): a population of thousands is never queried whole."""
    nodes = sorted(grid.get_node_ids())
    return sorted(random.sample(nodes, min(len(nodes), fed.cfg.federated.sampled_per_round())))


def train_heads(fed: Federation, received: Releases, rnd: int) -> None:
    for t, name in enumerate(fed.tasks):
        if name in received.per_task:  # head t sees task t's features only
            feats, labels = received.per_task[name]
            cfg = fed.cfg
            train_head(
                fed.heads[t], feats, labels.long(), cfg.federated.head_epochs, cfg.train.head_lr, cfg.train.seed + rnd
            )


def evaluate(fed: Federation, rnd: int) -> dict[str, float]:
    return evaluate_on(fed.generator, fed.heads, fed.split.test, fed.feature_dp, fed.cfg.train.seed + rnd)


def checkpoint(fed: Federation, rnd: int) -> None:
    fed.round = rnd
    save_run(
        fed.out / "checkpoints",
        RunCheckpoint(
            round=rnd,
            method=fed.method,
            config=json.loads(fed.cfg.model_dump_json()),
            generator=fed.generator.state_dict(),
            heads=fed.heads.state_dict(),
            strategy=strategy_state(fed.strategy),
            ledger=fed.ledger.state_dict(),
            rows=fed.rows,
            audits=fed.audits,
            rng=capture_rng(),
            binding=fed.binding.state_dict(),
        ),
    )


def report(fed: Federation, row: dict[str, Any]) -> None:
    JsonlWriter(fed.out / "metrics.jsonl").write(row)
    accs = "  ".join(f"{k.removeprefix('test_acc.')} {v:.3f}" for k, v in row.items() if k.startswith("test_acc."))
    withheld = ", ".join(f"{t} by {n}" for t, n in row["withheld"].items() if n)
    log.info(
        f"[round {row['round']}/{fed.cfg.federated.rounds}] devices sampled {row['sampled']}, answered "
        f"{row['answered']}, declined {row['declined']}, rejected {row['rejected']}, refused {row['refused']} | "
        f"{accs} | withheld {withheld or 'none'} | epsilon max "
        f"{row['epsilon_max']:.2f} mean {row['epsilon_mean']:.2f} | releases per pair max "
        f"{row['releases_per_pair_max']} | {row['seconds']:.1f} s"
        + (
            f" | fleet: {row['fleet.available']} available, {row['fleet.dropped']} dropped, "
            f"{row['fleet.stragglers']} late, {row['fleet.round_seconds']:.1f} simulated s"
            if "fleet.round_seconds" in row
            else ""
        )
    )


def run_round(grid: Grid, fed: Federation, rnd: int, audit: bool) -> None:
    t0 = time.perf_counter()
    fed.participation.open_round(rnd)
    messages = sample(grid, fed, rnd)
    replies = fed.exchange.exchange(grid, fed, messages, rnd)
    for device, reason in replies.declined.items():  # the operator must see why a device sat a round out
        log.warning(f"  round {rnd}: device {device} declined to train: {reason}")
    aggregated = aggregate(fed, rnd, replies)
    if aggregated:
        fed.ledger.mark_aggregated(replies.contributing_devices.values())
    answered = replies.contributors
    released = query_features(grid, fed, answered or some_devices(grid, fed), rnd)
    train_heads(fed, released, rnd)
    accuracy = evaluate(fed, rnd)
    row = round_row(fed, rnd, len(messages), replies, aggregated, accuracy, released, t0)
    add_refusals_and_round0(fed, rnd, row, replies, released)
    row.update(fed.participation.close_round(fed.rows))
    every = fed.cfg.federated.audit_every
    if audit and fed.cfg.audit.enabled and every and rnd % every == 0 and rnd < fed.cfg.federated.rounds:
        fed.audits.append(interim_audit(fed, rnd))
        JsonlWriter(fed.out / "audits.jsonl").write(fed.audits[-1])
    fed.rows.append(row)
    checkpoint(fed, rnd)
    report(fed, row)


def round_row(
    fed: Federation,
    rnd: int,
    sampled: int,
    replies: SortedReplies,
    aggregated: bool,
    accuracy: dict[str, float],
    released: Releases,
    t0: float,
) -> dict[str, Any]:
    """The round's metrics row (``t0``: when the round began)."""
    return {
        "method": fed.method,
        "round": rnd,
        "sampled": sampled,
        "answered": len(replies.contributors),
        "declined": len(replies.declined),
        "rejected": len(replies.rejected),
        "aggregated": aggregated,
        **{f"test_acc.{k}": v for k, v in accuracy.items()},
        "epsilon_max": fed.ledger.max_epsilon,
        "epsilon_mean": fed.ledger.mean_epsilon,
        "releases_per_pair_max": fed.ledger.max_releases_per_pair,
        "feature_rows_received": fed.ledger.rows_received,
        "released_rows": released.rows(fed.tasks),  # this round's, per task: what the held-rows audit weighs
        "released_noise": released.least_noise(),  # per task, the lowest noise step released at (times noise_std)
        "refused": len(replies.refused) + len(released.refused),
        "withheld": {t: len(released.withheld.get(t, [])) for t in fed.tasks},  # devices whose gate withheld t
        "seconds": time.perf_counter() - t0,
    }


def add_refusals_and_round0(
    fed: Federation, rnd: int, row: dict[str, Any], replies: SortedReplies, released: Releases
) -> None:
    """Round 0's query in round 1's row (it has no row of its own), the refusals and the gate's reasons."""
    if rnd == 1 and fed.round0 is not None:
        row["released_rows_round0"] = fed.round0.rows(fed.tasks)
        row["released_noise_round0"] = fed.round0.least_noise()
        row["withheld_round0"] = {t: len(fed.round0.withheld.get(t, [])) for t in fed.tasks}
    refusals = {str(n): r for n, r in {**replies.refused, **released.refused}.items()}
    if rnd == 1 and fed.round0 is not None and fed.round0.refused:  # round 0's query has no row of its own
        refusals |= {f"{n} (round 0)": r for n, r in fed.round0.refused.items()}
        row["refused"] += len(fed.round0.refused)
    if refusals:
        row["refusals"] = refusals
    reasons = {t: released.reasons[t] for t in released.withheld}
    if reasons:
        row["withheld_reasons"] = reasons


class FlowerParticipation:
    """Who takes part in a round without the fleet model (``round_attachments.Participation``): every
    connected node, as Flower's grid shows them; the strategy's sampling waits for the ones it needs."""

    def connect(self, grid: Grid, fed: Federation) -> Grid:
        wait_for_devices(grid, fed)
        return grid

    def open_round(self, rnd: int) -> None:
        pass

    def enough_devices(self, grid: Grid, fed: Federation, rnd: int) -> bool:
        return True

    def close_round(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {}


def wait_for_devices(grid: Grid, fed: Federation, every_s: float = 15.0) -> None:
    """Before the first query: say, every ``every_s`` seconds, how many devices are connected and how many
    the config needs (Flower's own wait says so only in its log). The launcher adds which are missing."""
    needed, last = fed.strategy.min_available_nodes, -every_s
    while (online := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() - last >= every_s:
            log.warning(
                f"  waiting for devices: {online} connected, the run needs {needed} "
                "(federated.min_online_devices, else federated.num_devices)"
            )
            last = time.monotonic()
        time.sleep(1.0)


def run_federated(
    grid: Grid, cfg: ExperimentConfig, out: Path, audit: bool = True, resume: bool = False, command: str = "simulate"
) -> dict[str, Any]:
    fed = start(cfg, Path(out), resume)
    fed.command = command
    if command != "deploy":  # a resumed simulation numbers its nodes afresh: only real nodes keep their ids
        fed.binding = DeviceBinding()
    grid = fed.participation.connect(grid, fed)  # Flower's grid, or the fleet's view of it
    if fed.round == 0:  # round 0: heads learn from the initial encoder's features before the first local round
        fed.round0 = query_features(grid, fed, some_devices(grid, fed), 0)
        train_heads(fed, fed.round0, 0)
    for rnd in range(fed.round + 1, cfg.federated.rounds + 1):
        run_round(grid, fed, rnd, audit)
    return final_report(grid, fed, audit)
