"""Device actors kept from one run of a warm runner to the next.

Flower's Ray backend builds a pool of new actors for every run, terminates them when the run ends and
disconnects from Ray: each run's devices pay new Ray worker processes and, in each, the import of torch,
Opacus and the device app (docs/federated.md measures it). In a warm runner (``warm_runner.py``) runs follow
one another in one process connected to one Ray instance, so the pool can outlive its run: ``install()``
puts ``KeptActorsBackend`` where Flower's simulation engine looks up its Ray backend, and every run after
the first takes the actors its predecessor left idle.

Why that changes nothing a device receives or releases: an actor already serves many devices one message
after another within a run, in whatever order the pool hands them out, so a ClientApp holds nothing of a
device between messages. A device's state lives in its run's folder and each message carries its run's
config; what an actor keeps is its imports and caches keyed by all they depend on (partitions by the data,
federation config and seed; noise calibrations by their inputs; the public reference set). The sweep's
and the warm runtime's tests hold warm runs to the cold runs' figures.

A pool is not passed on when its run failed (an actor may have died with it), when an actor is still busy
(the run ends as Flower ends it), or when the next run asks for other resources per device; its actors are
then terminated, as Flower does.
Before a run takes it, every actor must answer Ray's readiness call: one that died between runs (the OOM
killer) would fail its devices' messages, so a pool with a dead actor is replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool

_kept: BasicActorPool | None = None  # the idle pool the last run left, while its runner lives
READY_TIMEOUT_S = 30.0  # an idle actor answers at once; one that does not within this is not reused


def alive(pool: BasicActorPool) -> bool:
    """Every actor of ``pool`` answers Ray's built-in readiness call."""
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=READY_TIMEOUT_S)
    except ray.exceptions.RayError:  # a dead actor (RayActorError) or none in time (GetTimeoutError)
        return False
    return True


class KeptActorsBackend(raybackend.RayBackend):
    """Flower's ``RayBackend`` that takes the kept pool when it fits and keeps its pool when the run ends
    with every actor idle, staying connected to Ray (Flower's disconnects after every run)."""

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        global _kept
        pool, _kept = _kept, None
        if pool is not None and pool.client_resources == self.client_resources and alive(pool):
            self.pool, self.app_fn = pool, app_fn
            return
        if pool is not None:
            pool.terminate_all_actors()
        super().build(app_fn)

    def terminate(self) -> None:
        global _kept
        if self.pool is not None and len(self.pool.pool) == self.pool.num_actors:  # all idle: nothing under way
            _kept, self.pool = self.pool, None
            return
        # Flower's own end: its idle actors terminated and this process off Ray, which ends the job's busy ones
        super().terminate()


def discard() -> None:
    """Terminate the kept actors: the run that left them failed, or the runner is about to end."""
    global _kept
    pool, _kept = _kept, None
    if pool is not None:
        pool.terminate_all_actors()


def install() -> None:
    """Make Flower's simulation engine build ``KeptActorsBackend``s in this process (it imports
    ``raybackend.RayBackend`` when each run starts), and keep this process connected to Ray between runs."""
    raybackend.RayBackend = KeptActorsBackend  # type: ignore[misc]
