"""Sorting a round's train replies: valid updates, devices that declined, and rejected replies.

Each reply is read as the protocol's ``TrainReply`` (``fl_metamorphosis/flower/messages.py``): a reply of
another protocol version, or with a missing or extra record or field, is rejected with the reason. A
well-formed reply's weights are then checked against the global model's names, shapes, dtypes and for
NaN/Inf. A node speaks for one device (``DeviceBinding``): a reply claiming another node's device, or a
second reply of one node in a round, is rejected, so no device's spending, releases or FedAvg weight can
be booked to another. ``book_report`` books a well-formed report in the server's ledger and checks the
device's budget, for both train exchanges (plain and secure). Nothing here raises: one bad device never
stops a round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Message

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.flower.messages import MessageError, TrainReply, is_policy_refusal
from fl_metamorphosis.privacy import ServerLedger
from fl_metamorphosis.privacy.accounting import pair_plan

from .updates import InvalidUpdate, validate_update

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 3600.0  # how long a round waits for its replies (Flower answers a dead node's earlier)


@dataclass
class SortedReplies:
    valid: list[Message] = field(default_factory=list)  # aggregated by the strategy
    contributors: list[int] = field(default_factory=list)  # nodes whose update is in ``valid``
    contributing_devices: dict[int, int] = field(default_factory=dict)  # node -> device id, of the contributors
    declined: dict[int, str] = field(default_factory=dict)  # device -> reason
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> reason
    refused: dict[int, str] = field(default_factory=dict)  # node id -> the device policy's refusal (fields, floors)
    # every well-formed reply (valid, declined, or rejected for its weights): the device's privacy report
    # and its message (None under secure aggregation, where the server never holds one device's update)
    reports: list[tuple[TrainReply, Message | None]] = field(default_factory=list)

    def reject(self, msg: Message, reason: str) -> None:
        self.valid.remove(msg)
        self.contributors.remove(msg.metadata.src_node_id)
        self.contributing_devices.pop(msg.metadata.src_node_id, None)
        self.rejected[msg.metadata.src_node_id] = reason


@dataclass
class DeviceBinding:
    """Which device each node speaks for, fixed by its first well-formed reply of the run."""

    device_of: dict[int, int] = field(default_factory=dict)  # node -> device
    node_of: dict[int, int] = field(default_factory=dict)  # device -> node

    def claim(self, node: int, device: int) -> str | None:
        """None if ``node`` may speak for ``device`` (binding it on first use), else the reason it may not."""
        bound, other = self.device_of.get(node), self.node_of.get(device)
        if bound is not None and bound != device:
            return f"claims device {device}, but node {node} is device {bound}"
        if other is not None and other != node:
            return f"claims device {device}, which is node {other}"
        self.device_of[node], self.node_of[device] = device, node
        return None

    def state_dict(self) -> dict[str, int]:
        return {str(node): device for node, device in self.device_of.items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, int]) -> DeviceBinding:
        binding = cls()
        for node, device in state.items():
            binding.device_of[int(node)], binding.node_of[int(device)] = int(device), int(node)
        return binding


def server_plan(cfg: ExperimentConfig, report: TrainReply) -> tuple[float, float, int] | None:
    """(sigma, q, steps this round) that the server's own config gives a pair-level device of the reply's
    size (at most ``federated.max_device_examples``); None where the server cannot know them: DP-SGD off,
    groups of pairs (their sampling depends on the device's data), a device that did not train."""
    if not cfg.dp_sgd.enabled or report.grouped or report.declined is not None or report.num_examples <= 0:
        return None
    plan = pair_plan(cfg.dp_sgd, cfg.train.batch_size, min(report.num_examples, cfg.federated.max_device_examples))
    sigma = plan.noise_multiplier(cfg.federated.rounds * cfg.federated.local_epochs)  # as the device calibrates
    return sigma, plan.sample_rate, cfg.federated.local_epochs * plan.steps_per_epoch


def record_report(ledger: ServerLedger, report: TrainReply, cfg: ExperimentConfig) -> str | None:
    """A train reply's privacy report into the server's ledger (what ``ServerLedger.record_train`` returns:
    a message when the device's count is below the server's). Whether its update is aggregated is
    known only after the round's aggregation: ``ServerLedger.mark_aggregated``."""
    return ledger.record_train(
        report.device,
        epsilon=report.epsilon,
        noise_multiplier=report.noise_multiplier,
        sample_rate=report.sample_rate,
        steps=report.steps,
        round_steps=report.round_steps,
        grouped=report.grouped,
        planned=server_plan(cfg, report),
    )


def book_report(
    ledger: ServerLedger, report: TrainReply, cfg: ExperimentConfig, rnd: int, *, aggregatable: bool
) -> str | None:
    """The one place a train report meets the ledger and the budget, with or without secure aggregation:
    every well-formed report is booked (its update left the device whether or not it is aggregated), and
    for an update that would be aggregated (``aggregatable``) the reason to leave it out when the
    server's count puts its device past ``federated.device_epsilon_budget``; else None."""
    lost = record_report(ledger, report, cfg)
    if lost:
        log.warning(f"  round {rnd}: device {report.device} {lost}")
    budget = cfg.federated.device_epsilon_budget
    if aggregatable and ledger.epsilon(report.device) > budget * (1 + 1e-9):
        return f"the server's ledger puts device {report.device} past its budget {budget}"
    return None


def sender(msg: Message, destinations: Mapping[str, int]) -> int:
    """The node a reply is about: an error reply for a node that became unavailable comes FROM the
    SuperLink (node 1), so it is found by the message it replies to."""
    return destinations.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)


def sort_replies(
    replies: Iterable[Message],
    reference: Mapping[str, torch.Tensor],
    destinations: Mapping[str, int],
    *,
    binding: DeviceBinding,
    max_examples: int,
) -> SortedReplies:
    """``destinations``: message id -> node id of the messages sent this round; ``binding``: the run's
    nodes and devices; ``max_examples``: the largest ``num-examples`` accepted (FedAvg's weight)."""
    out = SortedReplies()
    seen: set[int] = set()
    for msg in replies:
        node = sender(msg, destinations)
        if node in seen:
            out.rejected[node] = "a second reply in one round (the first one stands)"
            continue
        seen.add(node)
        if msg.has_error():
            if is_policy_refusal(msg.error.reason):
                out.refused[node] = msg.error.reason
            else:
                out.rejected[node] = f"device error: {msg.error.reason}"
            continue
        try:
            reply = TrainReply.from_record(msg.content)
        except (MessageError, KeyError, TypeError, ValueError) as err:
            out.rejected[node] = str(err)
            continue
        wrong_device = binding.claim(node, reply.device)
        if wrong_device is not None:
            out.rejected[node] = wrong_device  # not booked: the ledger is the claimed device's
            continue
        out.reports.append((reply, msg))
        if reply.declined is not None:
            out.declined[reply.device] = reply.declined
            continue
        try:
            if not 0 < reply.num_examples <= max_examples:
                raise InvalidUpdate(
                    f"num-examples {reply.num_examples} outside [1, federated.max_device_examples={max_examples}]"
                )
            validate_update(reply.weights or {}, reference)
        except InvalidUpdate as err:
            out.rejected[node] = str(err)
            continue
        out.valid.append(msg)
        out.contributors.append(node)
        out.contributing_devices[node] = reply.device
    return out
