"""A warm ClientApp for deployed devices: the libraries imported once, one forked process per message.

Flower 1.42's SuperExec starts a new ``flwr-clientapp`` process for every message a device receives
(``SubprocessExecutor``), and that process imports Flower, numpy, torch and Opacus again: 1-4 s of a
core per message on this project's 2-core test machine (docs/deploy.md), several times that on a board.
Flower's own warm executor pools are for Kubernetes and not for ClientApps.

This module runs in place of ``flower-superexec`` (``launch.start_device`` puts a ``flower-superexec``
that calls it first on the device's PATH). Before Flower's SuperExec starts, and before it has any
thread, the process forks a *zygote*: a single-threaded child that imports the third-party libraries
(``PRELOAD``) and then waits. The SuperExec is then Flower's own, with one change: where its
``SubprocessExecutor`` would start ``flwr-clientapp ARGS``, it hands ARGS to the zygote, which forks a
child that runs Flower's ``flwr-clientapp`` main with the same ARGS. Nothing else of Flower changes: the
child pulls its message over the same Runtime API with the same token, watches the same parent PID and
reports its end as the process would.

What a forked child shares with its siblings, and why that is safe:

* **Only imported libraries.** The zygote never handles a message, connects anywhere or runs a torch
  operation (a fork after OpenMP has started its threads can hang). Some imports start helper threads of
  their own (torch's; jemalloc's background thread, through scikit-learn's pandas and pyarrow): a fork
  copies only the forking thread, and jemalloc takes its locks around a fork (``pthread_atfork``). The
  app's own code (``clients/``, ``fl_metamorphosis``) is not preloaded: each child loads it from the app
  (FAB) the SuperLink sent, as a cold process does.
* **No randomness.** Every privacy draw of this project reads ``os.urandom`` at the draw
  (``privacy/randomness.py``), which a fork does not copy. The libraries' global generators, which a fork
  does copy, are seeded afresh from the OS in each child, as a new process seeds them: Python's ``random``
  reseeds itself at fork; numpy's (Flower's SecAgg+ quantisation draws from it) and torch's default
  generator are reseeded by ``_run_clientapp``.

If the zygote is gone (killed, out of memory), the SuperExec starts ``flwr-clientapp`` as Flower does:
slower, never wrong. ``deploy device --cold-clientapp`` turns the zygote off (a board short of memory:
the zygote holds the imported libraries between messages: docs/deploy.md has the memory).

    python -m fl_metamorphosis.flower.warm_clientapp <flower-superexec arguments>
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback

# The libraries a ClientApp of this project imports, heaviest first; never the app's own modules.
# torch._dynamo: torch imports it lazily, in every optimizer's constructor (each train message).
# sklearn.datasets: the release gate's reference digits (each features message).
PRELOAD = (
    "torch",
    "numpy",
    "opacus",
    "torch._dynamo",
    "sklearn.datasets",
    "scipy.special",
    "cryptography.hazmat.primitives.ciphers",
    "pydantic",
    "flwr.clientapp",
    "flwr.supernode.cli.flwr_clientapp",
)
CLIENTAPP = "flwr-clientapp"  # the command Flower's SubprocessExecutor starts per message
EXECUTOR = "flwr.supercore.superexec.executor.subprocess_executor"  # where it calls subprocess.Popen


def _name_process(name: str) -> None:
    """Set the process name (``/proc/PID/comm``, ``ps -o comm``), so a forked ClientApp reads as one."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _run_clientapp(argv: list[str], quiet: bool) -> None:
    """In the forked child: Flower's ``flwr-clientapp`` main with ``argv``, then exit. Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote's SIG_IGN would break waiting for children
        _name_process(CLIENTAPP)
        import numpy as np
        import torch

        np.random.seed()  # fresh from the OS, as a new process's are (the zygote's states are every child's)
        torch.seed()
        if quiet:  # as Flower's Popen(stdout=DEVNULL, stderr=DEVNULL)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        sys.argv = list(argv)
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        flwr_clientapp()
        code = 0
    except SystemExit as done:  # flwr_exit ends the process with sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported, then the child ends as a crashed process would
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _zygote(conn: socket.socket) -> None:
    """Import ``PRELOAD``, then fork a ClientApp for each line ``conn`` brings. Ends when the SuperExec closes
    its end (it exited or was killed). Never returns."""
    _name_process("mm-zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal stops the SuperNode, which closes conn
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # a library missing here is imported by the child, if it needs it
            importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # the imports are never collected: children do not scan (or copy) them
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children: no zombies
    with conn.makefile("rb") as requests:
        for line in requests:
            request = json.loads(line)
            if os.fork() == 0:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # the child must not hold the zygote's end open: were the zygote gone, the SuperExec's next
                # request would queue behind a live child instead of failing over to a cold start
                os.close(conn.detach())
                _run_clientapp(request["argv"], request["quiet"])
    os._exit(0)


class _ForkingSubprocess:
    """Stands in for the ``subprocess`` module inside Flower's ``SubprocessExecutor``: ``Popen`` of a
    ClientApp goes to the zygote, anything else (or a ClientApp once the zygote is gone) to ``subprocess``."""

    DEVNULL = subprocess.DEVNULL

    def __init__(self, conn: socket.socket) -> None:
        self._conn: socket.socket | None = conn
        self._lock = threading.Lock()

    def Popen(self, args, **kwargs):  # noqa: N802 - the name Flower calls
        if args and args[0] == CLIENTAPP:
            request = {"argv": list(args), "quiet": kwargs.get("stdout") is subprocess.DEVNULL}
            with self._lock:
                if self._conn is not None:
                    try:
                        self._conn.sendall(json.dumps(request).encode() + b"\n")
                        return None  # Flower keeps no handle: the child is the zygote's, reaped there
                    except OSError as err:
                        print(f"warm ClientApp: the zygote is gone ({err}); starting ClientApps cold", file=sys.stderr)
                        self._conn = None
        return subprocess.Popen(args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = socket.socketpair()
    if os.fork() == 0:  # now, while this process has one thread and has imported nothing of Flower
        ours.close()
        _zygote(theirs)
    theirs.close()
    executor = importlib.import_module(EXECUTOR)
    if getattr(executor, "subprocess", None) is not subprocess:
        raise SystemExit(f"{EXECUTOR} no longer calls subprocess.Popen: this Flower version moved it; start the "
                         "device with --cold-clientapp")  # fmt: skip
    executor.subprocess = _ForkingSubprocess(ours)
    from flwr.supercore.cli import flower_superexec

    sys.argv = ["flower-superexec", *argv]
    return flower_superexec() or 0


if __name__ == "__main__":
    sys.exit(main())
