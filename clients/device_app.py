"""The device: its handlers behind its privacy mods, a thin adapter from messages to the library's device
functions. Flower loads ``clients/client_app.py``, which hands every message that reaches a handler to
this module's ``app`` (and imports it only then).

Handlers: ``train`` (local DP-SGD on encoder + Cross-SEC, with the server's heads frozen or also
DP-trained, ``federated.device_heads``; cumulative budget), ``query.features`` (released, clipped and
noised task features of a local sample, each task in its own record) and ``evaluate`` (local test
accuracy of the global model). Replies are the protocol's types (``fl_metamorphosis/flower/messages.py``).

A board reads its data from its own folder (node config ``data-dir``, written by ``deploy
prepare-data``); a simulated device builds its partition of the configured dataset. The device's privacy
state (DP-SGD step history, noise multiplier, release counts) lives in its own state folder
(``privacy/device_state.py``): node config ``state-dir`` on a real device, the run folder's
``devices/<partition-id>`` in a simulation. Each handler writes it before its reply leaves, so a
restarted device keeps counting. The ``guard_device_state`` mod holds the state folder's lock for the whole
message (two processes of one device never lose a spend) and refuses to answer when the ledger of a device
whose data folder records that it took part is gone (never a fresh budget unless the owner resets it). The
``replay_repeated_requests`` mod answers a request identical to the last one of its kind with the same
reply (a server that resumed after a crash asks for its lost round again): one release sent twice counts
once. The outer app's ``secure_aggregation`` mod runs the device's side of Flower's SecAgg+ when the server asks
for it (``clients/secure_aggregation.py``) and sends its training stage here.

The server is one of the parties the device protects itself against, so nothing it sends decides the
device's privacy randomness: noise and sampling come from the OS CSPRNG (``privacy/randomness.py``), and
a config asking for seeded, reproducible noise is refused unless this process runs a simulation that its
own operator started (``SIMULATION_ENV``, set by ``metamorphosis simulate``, never by the server). Each
task's record is shuffled on its own, so rows of two tasks' records cannot be matched by position.

The server may lie about the config and the weights, so the device decides its own protection. The
``enforce_policy`` mod compares every request's config with the owner's privacy policy
(``privacy/device_policy.py``: a policy file, node config ``policy-file``; in a simulation the operator's
run config; otherwise the project's defaults; node config ``epsilon-budget`` and
``max-releases-per-pair`` lower it) and answers a request that asks for less with an error reply naming
each field, before anything is trained, released or counted. Before each release the release gate
(``privacy/release_gate.py``) probes the device's own pairs under the weights received and withholds
any task whose features read another task; the server is told which tasks, never the probe's figures.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fl_metamorphosis.audit.poisoning import flip_labels, malicious_devices, poison_update
from fl_metamorphosis.config import ExperimentConfig, PoisoningConfig
from fl_metamorphosis.data import MultiTaskDataset
from fl_metamorphosis.data.device_folder import read_device_folder
from fl_metamorphosis.data.reference import reference_pairs
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.flower.arrays import torch_state
from fl_metamorphosis.flower.model_state import join_state, split_state
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy.device_state import DeviceState, DeviceStateRefused, ReplyMemo, device_lock
from fl_metamorphosis.privacy.randomness import Randomness, randomness_for
from fl_metamorphosis.privacy.release_gate import GateDecision, release_gate
from fl_metamorphosis.privacy.release_ledger import ReleaseLedger
from fl_metamorphosis.training import released_features, task_accuracy
from fl_metamorphosis.training.local_round import build_generator, privacy_plan, run_local_round

from .policy import SIMULATION_ENV, device_policy, enforce_policy

STATE_DIR = "state-dir"  # node config: the device's own state folder (its privacy ledger)
DATA_DIR = "data-dir"  # node config: the device's own data folder (``deploy prepare-data``)
THREADS = "threads"  # node config: torch threads the device may use

# Purposes of the seeded streams (randomness.source = "seeded" only): one stream per handler and round.
_TRAIN, _FEATURES, _EVALUATE = 1, 2, 3


class SeededNoiseRefused(RuntimeError):
    """A config asked a device outside simulation for noise the server could reproduce."""


class PoisoningRefused(RuntimeError):
    """A config asked a device outside simulation to attack the federation."""


class NoStateFolder(RuntimeError):
    """A device outside a simulation was started without a folder for its privacy ledger."""


def state_dir(context: Context) -> Path:
    """The device's state folder: its node config's, or the simulation run folder's ``devices/<id>``."""
    own = context.node_config.get(STATE_DIR)
    if own:
        return Path(str(own))
    if os.environ.get(SIMULATION_ENV) == "1" and context.run_config.get("out-dir"):
        return Path(str(context.run_config["out-dir"])) / "devices" / str(int(context.node_config["partition-id"]))
    raise NoStateFolder(
        f"this device keeps its privacy ledger on disk and has no folder for it: start it with node config "
        f"{STATE_DIR}=PATH (a folder on the device that survives restarts); a simulation on a Ray cluster "
        f"needs {SIMULATION_ENV}=1 in the environment of every `ray start` (docs/ray-cluster.md)"
    )


def data_dir(context: Context) -> Path | None:
    """The device's own data folder (a real deployment), where it records that it took part; None for a
    simulated device, whose state lives in its run folder and goes with it."""
    own = context.node_config.get(DATA_DIR)
    return Path(str(own)) if own else None


def durable(context: Context) -> bool:
    """Whether the device's writes must survive a power cut (fsync): always, except on a simulated device,
    which shares one machine with its run (``checkpoint.write_checkpoint``)."""
    return not (os.environ.get(SIMULATION_ENV) == "1" and not context.node_config.get(STATE_DIR))


def replay_repeated_requests(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: a request identical to the last one of its kind gets the same reply, at no new cost."""
    memo = ReplyMemo(state_dir(context))
    request = proto.request_digest(msg.metadata.message_type, msg.content)
    earlier = memo.replay(msg.metadata.message_type, request)
    if earlier is not None:
        return Message(content=proto.from_payload(earlier), reply_to=msg)
    reply = call_next(msg, context)
    if not reply.has_error():
        memo.remember(msg.metadata.message_type, request, proto.to_payload(reply.content), durable=durable(context))
    return reply


def guard_device_state(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: one message at a time per device, and never on a lost ledger.

    The state folder's lock (``device_lock``) is held from before the replay memo is read until the handler's
    state is saved, so two processes of one device cannot both load the same spend and lose one. A device
    whose ledger is gone after it took part (``LedgerMissing``), or that cannot reach its state, answers a
    refusal naming its state folder and the owner's reset; the server books it as a refusal, like a policy's."""
    folder = state_dir(context)
    try:
        with device_lock(folder):
            DeviceState.load(folder, data_dir(context))  # refuses before anything is replayed, trained or released
            return call_next(msg, context)
    except DeviceStateRefused as err:
        reason = proto.POLICY_REFUSED + str(err)
        return Message(Error(int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reason), reply_to=msg)


# Outermost first, inside the outer app's (``clients/client_app.py``): a SecAgg+ request arrives here already
# translated into the protocol's, so the policy reads its config and the replay mod compares it with the last
# one. A request the policy refuses never takes the device's lock nor touches its state folder.
app = ClientApp(mods=[enforce_policy, guard_device_state, replay_repeated_requests])


def _local_data(cfg: ExperimentConfig, context: Context):
    """(device id, train pairs, test pairs): a board's own folder (node config ``data-dir``), or the
    simulated partition ``partition-id`` of the configured dataset."""
    if context.node_config.get(THREADS):
        torch.set_num_threads(int(context.node_config[THREADS]))
    device = int(context.node_config["partition-id"])
    folder = context.node_config.get(DATA_DIR)
    if folder:
        return device, *read_device_folder(Path(str(folder)))
    # imported here: partitioning pulls in flwr-datasets and pandas, which a board reading its own folder
    # never needs, and Flower starts a ClientApp process per message on a board
    from fl_metamorphosis.data.partition import device_datasets

    return device, *device_datasets(cfg.data, cfg.federated, device, cfg.train.seed)


def _randomness(cfg: ExperimentConfig, device: int, server_round: int, purpose: int) -> Randomness:
    if cfg.randomness.source == "seeded" and os.environ.get(SIMULATION_ENV) != "1":
        raise SeededNoiseRefused(
            "randomness.source='seeded' makes the device's noise reproducible by the server; a device refuses it "
            f"outside a simulation ({SIMULATION_ENV}=1 in its environment): use randomness.source='os_entropy'"
        )
    return randomness_for(cfg.randomness.source, cfg.train.seed, device, server_round, purpose)


def _attack(cfg: ExperimentConfig, device: int) -> PoisoningConfig | None:
    """The attack this device plays in the run, if it is one of the poisoned devices (simulation only)."""
    poisoning = cfg.federated.poisoning
    if poisoning.attack == "none":
        return None
    if os.environ.get(SIMULATION_ENV) != "1":
        raise PoisoningRefused(
            f"federated.poisoning.attack={poisoning.attack!r} asks devices to attack the federation; a device "
            f"plays it only in a simulation ({SIMULATION_ENV}=1 in its environment): set attack='none'"
        )
    return poisoning if device in malicious_devices(poisoning, cfg.federated.num_devices, cfg.train.seed) else None


@dataclass
class DeviceRequest:
    """What the train and features handlers work from."""

    cfg: ExperimentConfig  # the request's config, made no weaker than the owner's policy
    server_round: int
    device: int
    data: MultiTaskDataset  # this device's training pairs (label-flipped if it plays that attack)
    attack: PoisoningConfig | None
    folder: Path  # the device's state folder
    state: DeviceState  # under guard_device_state's lock until saved
    randomness: Randomness


def _request(msg: Message, context: Context, purpose: int) -> DeviceRequest:
    config = msg.content[proto.CONFIG]
    cfg = device_policy(context).stricter(proto.experiment_from(config))  # never weaker than the owner's
    device, data, _ = _local_data(cfg, context)
    attack = _attack(cfg, device)
    if attack is not None and attack.attack == "label_flip":
        data = flip_labels(data)
    folder = state_dir(context)
    state = DeviceState.load(folder, data_dir(context))
    server_round = int(config[proto.SERVER_ROUND])
    randomness = _randomness(cfg, device, server_round, purpose)
    return DeviceRequest(cfg, server_round, device, data, attack, folder, state, randomness)


@app.train()
def train(msg: Message, context: Context) -> Message:
    request = _request(msg, context, _TRAIN)
    cfg, data, state, randomness = request.cfg, request.data, request.state, request.randomness
    plan = privacy_plan(cfg, data)
    if state.noise_multiplier is None:  # calibrated once, for taking part in every round, then kept
        state.noise_multiplier = plan.noise_multiplier(cfg.federated.rounds * cfg.federated.local_epochs)
    received = torch_state(msg.content[proto.ARRAYS])
    generator_weights, head_weights = split_state(received)
    update = run_local_round(
        cfg=cfg,  # its epsilon budget is the stricter of the policy's and the message's
        data=data,
        plan=plan,
        generator_weights=generator_weights,
        head_weights=head_weights,
        history=state.history,
        noise_multiplier=state.noise_multiplier,
        randomness=randomness,
        proximal_mu=float(msg.content[proto.CONFIG].get(proto.PROXIMAL_MU, 0.0)),
    )
    state.history = update.history
    # before the reply leaves: whatever the server receives is counted
    state.save(request.folder, durable=durable(context), data_dir=data_dir(context))
    weights = None
    if update.generator_weights is not None and update.head_weights is not None:
        weights = join_state(update.generator_weights, update.head_weights)
        if request.attack is not None:
            weights = poison_update(request.attack, weights, received, randomness.generator(), request.folder)
    reply = proto.TrainReply(
        device=request.device,
        num_examples=update.num_examples,
        train_loss=update.train_loss,
        epsilon=update.epsilon,
        noise_multiplier=state.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=update.history.steps,
        round_steps=update.round_steps,
        grouped=plan.grouped,
        declined=update.declined,
        weights=weights,
    )
    return Message(content=reply.to_record(), reply_to=msg)


def _global_model(cfg: ExperimentConfig, msg: Message, data):
    gen_w, head_w = split_state(torch_state(msg.content[proto.ARRAYS]))
    generator = build_generator(cfg, data)
    generator.load_state_dict(gen_w)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in data.tasks], cfg.model)
    heads.load_state_dict(head_w)
    return generator, heads


@app.query("features")
def features(msg: Message, context: Context) -> Message:
    """Released features of a local sample; task t's record holds only task t's features and labels.

    The pairs are chosen by the release ledger (least released first, none past the cap); the ledger is
    saved to the device's state folder before the reply leaves."""
    request = _request(msg, context, _FEATURES)
    cfg, data, state, randomness = request.cfg, request.data, request.state, request.randomness
    generator, _ = _global_model(cfg, msg, data)
    ledger = ReleaseLedger(len(data))
    if state.releases is not None:
        ledger.load_state_dict(state.releases)
    feature_dp = method_plan(cfg).feature_dp
    decisions = _gate(cfg, context, generator, data, feature_dp, randomness)
    withheld = {d.task: d.reason for d in decisions if d.withheld}
    cap = cfg.feature_dp.max_releases_per_pair  # the stricter of the policy's and the message's
    idx = ledger.choose(
        cfg.federated.feature_samples_per_device,
        queries_left=cfg.federated.rounds + 1 - ledger.queries,  # round 0 and every round
        cap=cap,
        generator=randomness.generator(),
    )
    if len(withheld) == len(data.task_names):  # nothing leaves: the pairs stay unreleased for later rounds
        idx = idx[:0]
    noise = {t: 1.0 for t in data.task_names if t not in withheld}  # the configured noise, gate or no gate
    noise |= {d.task: d.noise_multiplier for d in decisions if not d.withheld}
    released = torch.zeros(len(idx), len(data.task_names), *generator.feature_shape)
    if len(idx):  # each task at the noise its gate passed at (every pair released as often as allowed: none)
        for step in sorted(set(noise.values()) or {1.0}):
            noised = feature_dp.model_copy(update={"noise_std": feature_dp.noise_std * step})
            rows = released_features(generator, data.images[idx], noised, randomness)
            for t, name in enumerate(data.task_names):
                if noise.get(name, 1.0) == step:
                    released[:, t] = rows[:, t]
    ledger.record(idx)  # a pair counts as released if any of its tasks' features left
    state.releases = ledger.state_dict()
    state.save(request.folder, durable=durable(context), data_dir=data_dir(context))
    _log_gate(request.folder, request.server_round, decisions)
    tasks = {}
    for t, name in enumerate(data.task_names):
        keep = idx[:0] if name in withheld else idx
        order = torch.randperm(len(keep), generator=randomness.generator())  # rows of two tasks do not line up
        tasks[name] = (released[: len(keep)][order, t], data.labels[keep[order], t])  # a withheld task: 0 rows
    reply = proto.FeaturesReply(request.device, ledger.max_releases, ledger.total_releases, tasks, withheld, noise)
    return Message(content=reply.to_record(), reply_to=msg)


def _gate(cfg, context, generator, data, feature_dp, randomness) -> list[GateDecision]:
    """The release gate's decisions under the weights received (none when the policy and config allow it off)."""
    if not cfg.release_gate.enabled:  # only reaches here when the policy allows it (enforce_policy)
        return []
    reference = None
    if cfg.release_gate.reference:  # which public pairs: the device's secret draw, not the server's seed
        reference = reference_pairs(cfg.data, cfg.train.seed, data, randomness.generator())
    return release_gate(
        generator,
        data.images,
        data.labels,
        data.task_names,
        feature_dp=feature_dp,
        cfg=cfg.release_gate,  # the policy's probe size at least (DevicePolicy.stricter)
        randomness=randomness,
        reference=None if reference is None else (reference.images, reference.labels),
    )


def _log_gate(folder: Path, server_round: int, decisions: list[GateDecision]) -> None:
    """The probe's figures stay on the device, in its own state folder (the owner's record; never sent)."""
    with (folder / "release_gate.jsonl").open("a") as f:
        for d in decisions:
            row = {
                "round": server_round,
                "task": d.task,
                "withheld": d.withheld,
                "noise_multiplier": d.noise_multiplier,
                "probes": [asdict(p) for p in d.probes],
            }
            f.write(json.dumps(row) + "\n")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[proto.CONFIG]
    cfg = device_policy(context).stricter(proto.experiment_from(config))  # never weaker than the owner's
    device, _, test = _local_data(cfg, context)
    randomness = _randomness(cfg, device, int(config.get(proto.SERVER_ROUND, 0)), _EVALUATE)
    generator, heads = _global_model(cfg, msg, test)
    released = released_features(generator, test.images, method_plan(cfg).feature_dp, randomness)
    accs = task_accuracy(heads, released, test.labels)
    reply = proto.EvaluateReply(device, len(test), dict(zip(test.task_names, accs, strict=True)))
    return Message(content=reply.to_record(), reply_to=msg)
