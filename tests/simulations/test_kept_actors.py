"""Which device actors a warm runner passes from one run to the next (``simulations/kept_actors.py``), with
stand-in pools: an idle pool of the same resources is taken, anything else is terminated."""

import pytest

from simulations import kept_actors
from simulations.kept_actors import KeptActorsBackend

CPU1 = {"num_cpus": 1, "num_gpus": 0}


class Pool:
    def __init__(self, resources, actors=2, busy=0):
        self.client_resources, self.num_actors = resources, actors
        self.pool = [object()] * (actors - busy)  # Flower's BasicActorPool: its idle actors
        self.terminated = False

    def terminate_all_actors(self):
        self.terminated = True


@pytest.fixture
def backends(monkeypatch):
    """New backends (no Ray): Flower's own ``build`` makes a new stand-in pool and counts itself."""
    built = []

    def flower_build(self, app_fn):
        self.pool, self.app_fn = Pool(self.client_resources), app_fn
        built.append(self.pool)

    monkeypatch.setattr(KeptActorsBackend.__mro__[1], "build", flower_build)  # Flower's RayBackend
    monkeypatch.setattr(kept_actors, "_kept", None)
    monkeypatch.setattr(kept_actors, "alive", lambda pool: not getattr(pool, "dead", False))

    def backend(resources=CPU1):
        made = object.__new__(KeptActorsBackend)  # RayBackend.__init__ would connect to Ray
        made.client_resources, made.pool, made.app_fn = resources, None, None
        return made

    backend.built = built
    return backend


def test_an_idle_pool_serves_the_next_run_with_its_app(backends):
    first = backends()
    first.build(lambda: "app 1")
    pool = first.pool
    first.terminate()
    assert not pool.terminated and first.pool is None
    second = backends()
    second.build(lambda: "app 2")
    assert second.pool is pool and second.app_fn() == "app 2" and len(backends.built) == 1


def test_a_pool_with_a_busy_actor_is_terminated_not_kept(backends):
    first = backends()
    first.build(lambda: "app")
    first.pool = busy = Pool(CPU1, busy=1)
    first.terminate()
    assert busy.terminated and kept_actors._kept is None


def test_other_resources_per_device_get_new_actors_and_the_kept_ones_end(backends):
    first = backends()
    first.build(lambda: "app")
    kept = first.pool
    first.terminate()
    second = backends({"num_cpus": 2, "num_gpus": 0})
    second.build(lambda: "app")
    assert kept.terminated and second.pool is not kept and len(backends.built) == 2


def test_a_failed_run_discards_what_it_left(backends):
    first = backends()
    first.build(lambda: "app")
    kept = first.pool
    first.terminate()
    kept_actors.discard()  # the runner saw the run fail
    assert kept.terminated and kept_actors._kept is None
    backends().build(lambda: "app")
    assert len(backends.built) == 2


def test_a_pool_with_an_actor_that_died_between_runs_is_replaced(backends):
    first = backends()
    first.build(lambda: "app")
    kept = first.pool
    first.terminate()
    kept.dead = True  # an actor no longer answers (killed while idle)
    second = backends()
    second.build(lambda: "app")
    assert kept.terminated and second.pool is not kept and len(backends.built) == 2
