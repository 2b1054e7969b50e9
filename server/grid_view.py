"""Views over Flower's grid: ``GridView`` passes every call through; its subclasses change one thing.

``PromptGrid`` is the view every run talks to (``server_app.py`` puts it in front of Flower's grid). Its
``send_and_receive`` is Flower's (push the messages, pull the replies until all are in or the timeout
passes) with another wait between pulls. Flower 1.42's deployed grid (``HttpGrid``) sleeps 3 s between
pulls, so every exchange of a deployed round waited 1.5 s on average after its last reply came in, and a
round has two or three exchanges. Pulling every 0.1 s instead (as the simulation's grid does) made each
wait short, but a pull is a request that the SuperLink serves through its HTTP stack and its database,
ten a second for as long as a round lasts.

So the wait between pulls grows with the time since a reply last came in: 0.1 s, and a tenth of that
time once it passes a second, at most ``MAX_PULL_INTERVAL_S``. A reply late by ``t`` seconds is seen at
most ``0.1 t`` (and 0.1 s) after it arrived, so an exchange lasts at most 10 % longer than its slowest
reply; a 30 s wait costs 45 pulls instead of 300. Each reply resets the clock, since devices that
answer together tend to answer close together.

``PackedGrid`` sends each ArrayRecord as one array and unpacks the replies
(``fl_metamorphosis/flower/packed_records.py``): Flower moves a message object by object, a request each,
and an array is two objects. A reply that cannot be unpacked becomes that device's error reply, which the
round rejects with the reason.

``FleetGrid`` (``fleet_grid.py``) is another view: the fleet model's availability and clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fl_metamorphosis.flower.packed_records import PackingError, pack, unpack

PULL_INTERVAL_S = 0.1  # the least wait between pulls
PULL_WAIT_SHARE = 0.1  # the wait's share of the time since the last reply
MAX_PULL_INTERVAL_S = 2.0


class GridView(Grid):
    """Flower's grid, every call passed through (``get_nodes`` is Grid's own, from ``get_node_ids``, so a
    view that narrows the nodes narrows both)."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run) -> None:  # pragma: no cover - the runtime sets the inner grid's run
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class PackedGrid(GridView):
    """Flower's grid, with each message's ArrayRecords packed on the way out and unpacked on the way in."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(_packed(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [_unpacked(msg) for msg in self.inner.pull_messages(message_ids)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [_unpacked(msg) for msg in self.inner.send_and_receive(_packed(messages), timeout=timeout)]


def _packed(messages: Iterable[Message]) -> list[Message]:
    """The messages with their content packed; the caller's own messages keep theirs (the same metadata, so
    the message id the grid gives a sent message is the caller's too, as without packing). Messages that
    share one content (a round's request to every device) share one packed content, packed once."""
    packed: dict[int, RecordDict] = {}  # id of a caller's content -> its packed form; all alive in ``messages``
    out = []
    for m in messages:
        if m.has_content() and id(m.content) not in packed:
            packed[id(m.content)] = pack(m.content)
        out.append(Message(metadata=m.metadata, content=packed[id(m.content)]) if m.has_content() else m)
    return out


def _unpacked(msg: Message) -> Message:
    if not msg.has_content():
        return msg
    try:
        msg.content = unpack(msg.content)
    except PackingError as err:
        return Message(metadata=msg.metadata, error=Error(ErrorCode.UNKNOWN, f"malformed packed arrays: {err}"))
    return msg


class PromptGrid(GridView):
    """Flower's ``send_and_receive``, pulling the replies after a wait that grows with the time since the
    last one came in (the module's docstring)."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        last_reply = time.monotonic()
        deadline = None if timeout is None else last_reply + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self.pull_messages(waiting))
            now = time.monotonic()
            if pulled:
                last_reply = now
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or (deadline is not None and now >= deadline):
                return replies
            wait = min(MAX_PULL_INTERVAL_S, max(PULL_INTERVAL_S, PULL_WAIT_SHARE * (now - last_reply)))
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - now)))
