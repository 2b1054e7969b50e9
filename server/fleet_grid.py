"""The fleet model applied to a simulation's messages: a Grid around Flower's own.

With ``federated.fleet.enabled`` the run's participation (``round_attachments.Participation``) is
``FleetParticipation``, chosen once at start: it puts a ``FleetGrid`` in front of Flower's grid, which
the round loop then talks to, opens and closes each round of the fleet, and skips a round whose available
devices are fewer than the strategy needs (Flower's sampling would wait for devices the fleet keeps
offline). The ``FleetGrid``:

* during a round, ``get_node_ids`` returns the nodes the fleet makes available, so the strategy samples
  among them (its own sampling, unchanged);
* every train request is delivered and every device really trains (and counts it in its own ledger);
  the replies then meet the fleet's clock (``fl_metamorphosis/fleet/clock.py``): a device that drops
  out, or whose reply comes after the deadline or after the first ``target_replies``, is removed, so
  the round loop sees a missing reply, exactly as from a real device that never answered;
* the feature query costs the slowest queried device's time; nothing is dropped there.

Node ids are slots in sorted order. Flower draws node ids at random when a simulation starts, so which
data partition sits in which slot (and so on which device class) changes between runs and on resume;
the fleet itself (the classes' shares, every availability and dropout draw) does not.
``end_round`` returns the round's fleet metrics for ``metrics.jsonl``; ``FleetParticipation`` adds the
simulated time elapsed since the run's first round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.fleet import Fleet, Work
from fl_metamorphosis.flower import messages as proto

from .grid_view import GridView

if TYPE_CHECKING:
    from .round_loop import Federation

log = logging.getLogger(__name__)

# Peak memory of a device's local round of the demo model, rounded up from the measured peak RSS of the
# device process (docs/devices/raspberry-pi.md); a class with less memory is never available.
ROUND_MEMORY_MB = 700.0


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's arrays (the weights, the features): what dominates its size on the wire."""
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


def _pairs(reply: Message) -> int:
    if reply.has_error() or proto.METRICS not in reply.content.metric_records:
        return 0
    return int(reply.content.metric_records[proto.METRICS].get("num-examples", 0))


class FleetGrid(GridView):
    """Flower's grid, seen through the fleet: availability, dropouts, deadline, simulated time."""

    def __init__(self, inner: Grid, cfg: ExperimentConfig) -> None:
        super().__init__(inner)
        self.nodes = sorted(inner.get_node_ids())
        self.slot = {node: i for i, node in enumerate(self.nodes)}
        self.fleet = Fleet(cfg.federated.fleet, len(self.nodes), ROUND_MEMORY_MB)
        self.local_epochs = cfg.federated.local_epochs
        self.round = 0  # 0: outside a round (start, final evaluation): every node
        self.stats: dict[str, Any] = {}
        self._available: list[int] = self.nodes

    # --- the round's fleet view --------------------------------------------------------------------
    def begin_round(self, rnd: int) -> None:
        self.round = rnd
        self._available = [self.nodes[s] for s in self.fleet.available(rnd)]
        self.stats = {
            "fleet.available": len(self._available),
            "fleet.dropped": 0,
            "fleet.stragglers": 0,
            "fleet.train_seconds": 0.0,
            "fleet.features_seconds": 0.0,
            "fleet.bytes_down": 0,
            "fleet.bytes_up": 0,
        }

    def end_round(self) -> dict[str, Any]:
        """The round's fleet metrics; the grid shows every node again until the next round."""
        stats, self.round, self._available = self.stats, 0, self.nodes
        stats["fleet.round_seconds"] = stats["fleet.train_seconds"] + stats["fleet.features_seconds"]
        return stats

    def get_node_ids(self) -> Iterable[int]:
        return list(self._available)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        if not self.round or not messages:
            return replies
        kind = messages[0].metadata.message_type
        if kind == proto.TRAIN:
            return self._train(messages, replies)
        if kind == proto.FEATURES:
            self._features(messages, replies)
        return replies

    def _works(self, messages: list[Message], replies: list[Message], epochs: int) -> dict[str, Work]:
        """Request id (each reply's ``reply_to_message_id``) -> the sender's work (pairs, bytes both ways)."""
        down = {m.metadata.message_id: (m.metadata.dst_node_id, payload_bytes(m.content)) for m in messages}
        works = {}
        for reply in replies:
            node, bytes_down = down.get(reply.metadata.reply_to_message_id, (reply.metadata.src_node_id, 0))
            if node in self.slot:
                up = 0 if reply.has_error() else payload_bytes(reply.content)
                work = Work(self.slot[node], _pairs(reply) * epochs, bytes_down, up)
                works[reply.metadata.reply_to_message_id] = work
        self.stats["fleet.bytes_down"] += sum(b for _, b in down.values())
        return works

    def _train(self, messages: list[Message], replies: list[Message]) -> list[Message]:
        works = self._works(messages, replies, self.local_epochs)
        phase = self.fleet.train_phase(self.round, list(works.values()))
        outcome = {a.slot: a.outcome for a in phase.arrivals}
        kept = []
        for reply in replies:
            work = works.get(reply.metadata.reply_to_message_id)
            fate = outcome.get(work.slot, "arrived") if work is not None else "arrived"
            if fate != "dropped" and work is not None:
                self.stats["fleet.bytes_up"] += work.bytes_up  # a straggler's reply was sent, too late
            if fate == "arrived":
                kept.append(reply)
        self.stats["fleet.dropped"] += phase.count("dropped")
        self.stats["fleet.stragglers"] += phase.count("straggler")
        self.stats["fleet.train_seconds"] += phase.seconds
        return kept

    def _features(self, messages: list[Message], replies: list[Message]) -> None:
        works = self._works(messages, replies, 1)
        self.stats["fleet.bytes_up"] += sum(w.bytes_up for w in works.values())
        self.stats["fleet.features_seconds"] += self.fleet.release_phase(list(works.values()))


class FleetParticipation:
    """Who takes part in a round under the fleet model (``round_attachments.Participation``)."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.grid: FleetGrid | None = None  # set by ``connect``

    def connect(self, grid: Grid, fed: Federation) -> Grid:
        """The fleet's view of ``grid``; no waiting for devices: a fleet keeps some offline on purpose,
        its rounds skip instead (``enough_devices``)."""
        self.grid = FleetGrid(grid, self.cfg)
        return self.grid

    def _fleet(self) -> FleetGrid:
        if self.grid is None:
            raise RuntimeError("FleetParticipation.connect must come before the rounds")
        return self.grid

    def open_round(self, rnd: int) -> None:
        self._fleet().begin_round(rnd)

    def enough_devices(self, grid: Grid, fed: Federation, rnd: int) -> bool:
        online, needed = len(list(grid.get_node_ids())), fed.strategy.min_available_nodes
        if online < needed:
            log.warning(f"  round {rnd}: {online} devices available, the strategy needs {needed}: round skipped")
            return False
        return True

    def close_round(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The round's fleet metrics, and the simulated seconds elapsed since the first round."""
        stats = self._fleet().end_round()
        stats["fleet.elapsed_seconds"] = stats["fleet.round_seconds"] + (
            rows[-1].get("fleet.elapsed_seconds", 0.0) if rows else 0.0
        )
        return stats
