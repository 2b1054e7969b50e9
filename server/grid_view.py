"""Views over Flower's grid: ``GridView`` passes every call through; its subclasses change one thing.

``PromptGrid`` is the view every run talks to (``server_app.py`` puts it in front of Flower's grid). Its
``send_and_receive`` is Flower's (push the messages, pull the replies until all are in or the timeout
passes) with a shorter wait between pulls. Flower 1.42's deployed grid (``HttpGrid``) sleeps 3 s between
pulls, so every exchange of a deployed round waited 1.5 s on average after its last reply came in, and a
round has two or three exchanges. The simulation's grid pulls every 0.1 s, as this one does; a pull on
the deployed grid is one request to the SuperLink on the same host.

``FleetGrid`` (``fleet_grid.py``) is another view: the fleet model's availability and clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.1


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


class PromptGrid(GridView):
    """Flower's ``send_and_receive``, pulling the replies every ``PULL_INTERVAL_S``."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                return replies
            time.sleep(PULL_INTERVAL_S)
