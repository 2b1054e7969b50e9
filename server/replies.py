"""Sorting a round's train replies: valid updates, devices that declined, and rejected replies."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Message

from fl_metamorphosis.federated.updates import InvalidUpdate, validate_update


@dataclass
class SortedReplies:
    valid: list[Message] = field(default_factory=list)
    declined: dict[int, str] = field(default_factory=dict)  # device -> reason
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> reason
    epsilons: dict[int, float] = field(default_factory=dict)  # device -> cumulative epsilon it reported
    # device -> (noise multiplier, sample rate, cumulative steps, accounted per group) it reported, for an
    # independent re-count
    accounting: dict[int, tuple[float, float, int, bool]] = field(default_factory=dict)
    trained: list[int] = field(default_factory=list)  # devices whose update is valid


def sort_replies(replies: Iterable[Message], reference: Mapping[str, torch.Tensor]) -> SortedReplies:
    """Check every reply against the global weights' names, shapes and dtypes; never raise."""
    out = SortedReplies()
    for msg in replies:
        node = msg.metadata.src_node_id
        try:
            if msg.has_error():
                raise InvalidUpdate(f"device error: {msg.error.reason}")
            metrics = msg.content.metric_records.get("metrics")
            if metrics is None:
                raise InvalidUpdate("no 'metrics' record")
            device = int(metrics.get("device", node))
            eps = float(metrics.get("epsilon", math.nan))
            if not math.isfinite(eps) or eps < 0:
                raise InvalidUpdate(f"epsilon {eps} is not a finite, non-negative number")
            acct = (
                (
                    float(metrics["noise-multiplier"]),
                    float(metrics["sample-rate"]),
                    int(metrics["steps"]),
                    bool(metrics.get("grouped", 0)),
                )
                if "steps" in metrics
                else None
            )
            if int(metrics.get("declined", 0)):
                status = msg.content.config_records.get("status")
                out.declined[device] = str(status["declined"]) if status else "declined"
                out.epsilons[device] = eps
                if acct:
                    out.accounting[device] = acct
                continue
            if "arrays" not in msg.content.array_records:
                raise InvalidUpdate("no 'arrays' record")
            if int(metrics.get("num-examples", 0)) <= 0:
                raise InvalidUpdate("num-examples must be positive")
            update = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            validate_update(update, reference)
        except (InvalidUpdate, KeyError, TypeError, ValueError) as err:
            out.rejected[node] = str(err)
            continue
        out.valid.append(msg)
        out.trained.append(device)
        out.epsilons[device] = eps
        if acct:
            out.accounting[device] = acct
    return out
