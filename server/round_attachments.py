"""What a round's stages call where a run's setup changes how a stage works: attachments, not branches.

Two things change a round without changing its stages: the fleet model (which devices can take part,
and what their participation costs in simulated time) and secure aggregation (how the train requests
and replies are exchanged, and what the server gets back). Each is an attachment: an object with one
implementation per setup, chosen once when the run starts (``round_loop.start``, from the config) and
held by the ``Federation``. The stages call it and never ask which one it is.

* ``Participation``: who takes part in a round. ``FlowerParticipation`` (``round_loop.py``): Flower's
  grid as it is, every connected node. ``FleetParticipation`` (``fleet_grid.py``): the fleet model's
  availability, dropouts, deadline and simulated time, through a ``FleetGrid``.
* ``TrainExchange``: a round's train requests out, its sorted replies in (the ledger booked, the budget
  checked). ``PlainExchange`` (``round_loop.py``): ``train`` then ``check_replies``, each update seen.
  ``SecureExchange`` (``secure_aggregation.py``): Flower's SecAgg+, the server receives only the sum.

Neither is in a checkpoint: a resumed run chooses them again from its config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from flwr.app import Message
from flwr.serverapp import Grid

from .replies import SortedReplies

if TYPE_CHECKING:
    from .round_loop import Federation


class Participation(Protocol):
    """Who takes part in a round: the grid the run talks to, and the round's view of the devices."""

    def connect(self, grid: Grid, fed: Federation) -> Grid:
        """Before the first query: the grid every stage of the run uses."""
        ...

    def open_round(self, rnd: int) -> None:
        """Before the round's sampling."""
        ...

    def enough_devices(self, grid: Grid, fed: Federation, rnd: int) -> bool:
        """Whether the round can sample (False: the round is skipped, with the reason logged)."""
        ...

    def close_round(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The round's own metrics for its row (``rows``: the rows of the rounds before it)."""
        ...


class TrainExchange(Protocol):
    """A round's training: the sampled requests out, the replies sorted and booked in the ledger."""

    def exchange(self, grid: Grid, fed: Federation, messages: list[Message], rnd: int) -> SortedReplies: ...
