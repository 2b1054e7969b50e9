"""PromptGrid: Flower's send_and_receive contract (every reply, or those in before the timeout), pulling
at its own interval."""

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server import grid_view
from server.grid_view import PromptGrid


class _SlowLink:
    """A grid whose replies come in one pull at a time, as devices finish; ``silent`` never answer."""

    def __init__(self, silent: frozenset[int] = frozenset()):
        self.silent, self.pulls, self.pending = silent, 0, []

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            ids.append(f"m{i}")
            if msg.metadata.dst_node_id not in self.silent:
                self.pending.append(msg)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [m for m in self.pending if m.metadata.message_id in set(message_ids)][:1]
        for m in ready:
            self.pending.remove(m)
        return [Message(RecordDict({"c": ConfigRecord({"node": m.metadata.dst_node_id})}), reply_to=m) for m in ready]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - PromptGrid must not call it
        raise AssertionError("PromptGrid waits for the replies itself")


def _messages(nodes):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    return [Message(RecordDict(), dst_node_id=n, message_type="train", group_id="1") for n in nodes]


def test_every_reply_is_collected_pulling_at_the_grids_interval(monkeypatch):
    monkeypatch.setattr(grid_view, "PULL_INTERVAL_S", 0.01)
    link = _SlowLink()
    replies = list(PromptGrid(link).send_and_receive(_messages([5, 6, 7]), timeout=10))
    assert sorted(int(r.content.config_records["c"]["node"]) for r in replies) == [5, 6, 7]
    assert link.pulls == 3  # one reply a pull: it stops as soon as the last one is in


def test_a_silent_node_costs_the_timeout_and_the_others_replies_are_kept(monkeypatch):
    monkeypatch.setattr(grid_view, "PULL_INTERVAL_S", 0.01)
    start = time.monotonic()
    replies = list(PromptGrid(_SlowLink(silent=frozenset({6}))).send_and_receive(_messages([5, 6]), timeout=0.3))
    assert 0.3 <= time.monotonic() - start < 5
    assert [int(r.content.config_records["c"]["node"]) for r in replies] == [5]


class _Clock:
    """``time`` for grid_view: ``sleep`` advances ``monotonic`` at once (no test waits)."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class _LateLink(_SlowLink):
    """Each reply comes in at its own time on ``clock`` (seconds after the push)."""

    def __init__(self, clock, at: dict[int, float]):
        super().__init__(silent=frozenset())
        self.clock, self.at, self.seen, self.pull_times = clock, at, {}, []

    def pull_messages(self, message_ids):
        self.pulls += 1
        self.pull_times.append(self.clock.now)
        ready = [m for m in self.pending if self.clock.now >= self.at[m.metadata.dst_node_id]]
        for m in ready:
            self.pending.remove(m)
            self.seen[m.metadata.dst_node_id] = self.clock.now
        return [Message(RecordDict({"c": ConfigRecord({"node": m.metadata.dst_node_id})}), reply_to=m) for m in ready]


def test_the_wait_between_pulls_grows_with_the_time_since_the_last_reply_and_a_late_one_is_seen_within_a_tenth(
    monkeypatch,
):
    clock = _Clock()
    monkeypatch.setattr(grid_view, "time", clock)
    link = _LateLink(clock, {5: 5.0, 6: 30.0})
    replies = list(PromptGrid(link).send_and_receive(_messages([5, 6]), timeout=120))
    assert sorted(int(r.content.config_records["c"]["node"]) for r in replies) == [5, 6]
    assert 5.0 <= link.seen[5] <= 5.0 + 0.1 * 5.0  # each reply seen within a tenth of its wait
    assert 30.0 <= link.seen[6] <= 30.0 + 0.1 * (30.0 - link.seen[5])
    assert link.pulls < 80  # against 300 at a fixed 0.1 s
    assert min(clock.sleeps) >= grid_view.PULL_INTERVAL_S - 1e-9
    assert max(clock.sleeps) <= grid_view.MAX_PULL_INTERVAL_S
    first = link.pull_times.index(link.seen[5])  # the waits had grown; after a reply they are short again
    assert clock.sleeps[first - 1] > 0.4 and clock.sleeps[first] == grid_view.PULL_INTERVAL_S


def test_the_timeout_holds_with_long_waits(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(grid_view, "time", clock)
    replies = list(PromptGrid(_LateLink(clock, {5: 1.0, 6: 1e9})).send_and_receive(_messages([5, 6]), timeout=60))
    assert [int(r.content.config_records["c"]["node"]) for r in replies] == [5]
    assert clock.now == pytest.approx(60.0)
