"""PromptGrid: Flower's send_and_receive contract (every reply, or those in before the timeout), pulling
at its own interval."""

import time

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
