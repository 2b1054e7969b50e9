"""Flower's SuperNode heartbeat and idle poll, and its SuperLink upload window, set per process: Flower
1.42 has no flag for any of them.

* **The heartbeat.** A SuperNode tells the SuperLink every ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s) that it is
  alive, and the SuperLink declares it dead after two missed intervals. A device that loses power is
  therefore noticed after up to 60 s. In the meantime its round waits, and the restarted board is refused
  ("could not be activated"). ``--heartbeat-s S`` makes that 2 x S. The SuperLink takes any interval in
  [10, 1800] s that a node reports, and the node reports its own, so only the device's process changes.
* **The idle poll.** A SuperNode asks the SuperLink for a message, and when none is waiting it sleeps 3 s
  (a literal in ``flwr.supernode.start_client_internal``) before it asks again. Each phase of a round (the
  training, the feature query) therefore reaches a device up to 3 s after the server sent it, which is much
  of a small round on loopback (docs/deploy.md). ``--poll-s S`` makes that wait S while the device is in a
  run's rounds, and lets it grow back towards Flower's 3 s as the device stays without a message: a tenth
  of the time since its last one, so a device idle between runs asks as seldom as Flower's. Each poll is a
  request to the SuperLink, so a fleet keeps Flower's 3 s; a loopback federation polls faster.
* **The upload window.** A reply is pushed to the SuperLink object by object, in a push session that
  lives ``OBJECT_PUSH_SESSION_TTL_SECONDS`` (180 s). A device killed in the middle of an upload leaves
  its round waiting for that session to expire. ``--upload-ttl-s S`` shortens it. It must stay longer
  than the slowest device takes to upload one reply.

* **The shutdown window.** The SuperLink serves its APIs with uvicorn, which on SIGTERM waits for every
  open connection to close before it shuts the app down, with no limit: a run's log stream (``flwr run
  --stream``) or a ServerApp's connection kept it waiting until its launcher's grace ran out and killed it
  (10 s, ``launch.stop``). ``--shutdown-grace-s S`` gives open requests S seconds, then uvicorn cancels
  them and shuts Flower's app down as usual.

The heartbeat and the upload window are module constants that Flower's modules copy at import (``from
... import NAME``). This entry point sets each copy that the process uses, then runs Flower's own command
with the remaining arguments. The copies are named one by one, so a Flower version that moves them fails
here, at start, and does not silently keep the default (``flwr`` is pinned in
requirements/constraints.txt). The idle poll is a literal: the SuperNode's loop module gets a ``time``
whose ``sleep(3)`` sleeps S instead, and the entry point first checks that the module's source has that
one ``time.sleep(3)``. The shutdown window is an argument of ``uvicorn.run``, which the SuperLink's module
calls; it is checked the same way.

    python -m fl_metamorphosis.flower.process_timing supernode --heartbeat-s 10 --poll-s 0.5 -- <flower-supernode args>
    python -m fl_metamorphosis.flower.process_timing superlink --upload-ttl-s 30 --shutdown-grace-s 3 -- <...>

``deployment/launch.py`` builds these commands (``deploy device --heartbeat-s``, ``deploy server
--upload-ttl-s``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from collections.abc import Callable
from types import ModuleType

# (module, name): the copies to set, and only those. Not ``flwr.common.constant`` itself: the SuperNode's
# task bookkeeping also reads the heartbeat constant, for the heartbeats of its ClientApp processes, which
# beat at Flower's own interval.
HEARTBEAT_COPIES = (
    ("flwr.supernode.fleet_http_connection", "HEARTBEAT_DEFAULT_INTERVAL"),  # the interval the node reports
    ("flwr.supercore.heartbeat", "HEARTBEAT_DEFAULT_INTERVAL"),  # how often this process's senders beat
)
UPLOAD_TTL_COPIES = (
    ("flwr.supercore.corestate.in_memory_corestate", "OBJECT_PUSH_SESSION_TTL_SECONDS"),
    ("flwr.supercore.corestate.sql_corestate", "OBJECT_PUSH_SESSION_TTL_SECONDS"),
)


def set_copies(copies: tuple[tuple[str, str], ...], value: float) -> None:
    for module_name, name in copies:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"{module_name} has no {name}: this Flower version moved it; drop the timing option")
        setattr(module, name, value)


IDLE_LOOP = "flwr.supernode.start_client_internal"  # the SuperNode's pull-and-push loop
FLOWER_POLL_S = 3.0  # its one wait after a pull that found no message, and the longest the idle poll grows to
IDLE_WAIT = f"time.sleep({FLOWER_POLL_S:g})"  # that wait, as its source writes it
BACKOFF = 0.1  # the idle poll: this share of the time since the device's last message, at least poll_s
AWAY_S = 1.0  # a loop that took longer than a pull between two idle waits was handling a message


def idle_poll_s(idle_s: float, poll_s: float) -> float:
    """The wait after a pull that found nothing, ``idle_s`` seconds after the device's last message."""
    return max(poll_s, min(FLOWER_POLL_S, BACKOFF * idle_s))


class _IdlePollTime:
    """``time`` for Flower's SuperNode loop, whose idle ``sleep(3)`` sleeps ``idle_poll_s`` instead; every
    other call is ``time``'s own. The device had a message when the loop waited for anything else (a
    ClientApp's reply, to push it) or was away longer than a pull takes since its last idle wait."""

    def __init__(
        self, poll_s: float, *, clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None
    ) -> None:
        self.poll_s = poll_s
        self._clock, self._sleep = clock or time.monotonic, sleep  # sleep None: ``time.sleep`` when called
        self._last_message: float | None = None  # None: a message came since the last idle wait, or none yet
        self._woke = 0.0  # when the last idle wait ended

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds != FLOWER_POLL_S:
            self._last_message = None
            self._wait(seconds)
            return
        now = self._clock()
        if self._last_message is None or now - self._woke > AWAY_S:
            self._last_message = now
        self._wait(idle_poll_s(now - self._last_message, self.poll_s))
        self._woke = self._clock()

    def _wait(self, seconds: float) -> None:
        (self._sleep or time.sleep)(seconds)  # ``time.sleep`` looked up now: a test may have replaced it


def set_idle_poll(poll_s: float) -> None:
    """Make the SuperNode wait ``poll_s`` instead of 3 s between pulls that found no message, growing back to
    3 s while it gets none (``idle_poll_s``)."""
    module: ModuleType = importlib.import_module(IDLE_LOOP)
    if inspect.getsource(module).count(IDLE_WAIT) != 1 or getattr(module, "time", None) is not time:
        raise SystemExit(f"{IDLE_LOOP} no longer waits with one {IDLE_WAIT}: this Flower version changed its "
                         "loop; drop --poll-s")  # fmt: skip
    module.time = _IdlePollTime(poll_s)


def bound_shutdown(grace_s: float) -> None:
    """Make the SuperLink's ``uvicorn.run`` wait at most ``grace_s`` for open requests when it shuts down."""
    import uvicorn

    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not its main
    if getattr(flower_superlink, "uvicorn", None) is not uvicorn:
        raise SystemExit("flwr.superlink.cli.flower_superlink no longer calls uvicorn.run: this Flower version "
                         "moved it; drop --shutdown-grace-s")  # fmt: skip
    run = uvicorn.run

    def run_bounded(*args, **kwargs):
        kwargs.setdefault("timeout_graceful_shutdown", grace_s)
        return run(*args, **kwargs)

    uvicorn.run = run_bounded


# component -> its options, each with what sets it in this process
SETTERS: dict[str, dict[str, Callable[[float], None]]] = {
    "supernode": {
        "heartbeat_s": lambda s: set_copies(HEARTBEAT_COPIES, s),
        "poll_s": set_idle_poll,
    },
    "superlink": {
        "upload_ttl_s": lambda s: set_copies(UPLOAD_TTL_COPIES, s),
        "shutdown_grace_s": bound_shutdown,
    },
}


def _flags(names) -> str:
    return " or ".join("--" + name.replace("_", "-") for name in names)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="process_timing", description="Flower's command with a timing of ours")
    p.add_argument("component", choices=list(SETTERS))
    p.add_argument("--heartbeat-s", type=float, help="supernode: its heartbeat interval")
    p.add_argument("--poll-s", type=float, help="supernode: its wait between pulls that found no message, in a run")
    p.add_argument("--upload-ttl-s", type=float, help="superlink: how long a push session lives")
    p.add_argument("--shutdown-grace-s", type=float, help="superlink: how long a shutdown waits for open requests")
    args = p.parse_args(ours)
    setters = SETTERS[args.component]
    given = {name: value for name, value in vars(args).items() if name != "component" and value is not None}
    if wrong := [name for name in given if name not in setters]:
        p.error(f"{args.component} does not take {_flags(wrong)}; it takes {_flags(setters)}")
    if not given:
        p.error(f"{args.component} needs {_flags(setters)}")
    for name, value in given.items():
        setters[name](value)
    if args.component == "supernode":
        from flwr.supernode.cli import flower_supernode as flower_main
    else:
        from flwr.superlink.cli import flower_superlink as flower_main
    sys.argv = [f"flower-{args.component}", *rest]
    return flower_main() or 0


if __name__ == "__main__":
    sys.exit(main())
