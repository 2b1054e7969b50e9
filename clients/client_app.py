"""Flower ClientApp: what a SuperNode loads for every message, kept light.

Flower's deployment runtime starts a fresh ClientApp process for each message a device receives
(docs/deploy.md). Three of the four stages of SecAgg+ (setup, key shares, unmasking) are key exchange and
arithmetic on a few numbers, and would each pay the import of torch and Opacus for nothing, per stage, per
round (docs/deploy.md has the seconds). So this module imports Flower and the SecAgg+ mod only; the device's
handlers and its privacy mods live in ``clients/device_app.py``, imported by the first message that reaches
a handler (in a simulation's warm actor, once).

Outermost first: ``release_memory`` (every message), ``packed_arrays`` (each ArrayRecord travels as one
array, ``fl_metamorphosis/flower/packed_records.py``: the mods within see the message as the server built
it), ``secure_aggregation`` (Flower's SecAgg+ for the
requests that ask for it, translating its training stage into this project's train request,
``clients/secure_aggregation.py``), then the device app: the owner's policy, the state folder's lock, the
replay of repeated requests and the handlers.
"""

from __future__ import annotations

import ctypes
import functools
import gc

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_metamorphosis.flower.packed_records import packed_arrays

from .secure_aggregation import secure_aggregation


def release_memory(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: collect the reference cycles a DP-SGD round leaves (Opacus' hooks) and hand the freed
    heap back to the OS. Without it a simulated device's Ray actor grows every round (docs/federated.md).

    Before the first message, everything imported so far (Flower; in a simulation's actor, Ray), which lives
    as long as the process, is frozen: out of the cyclic collector's scans, so the full collection after
    every message stays cheap (benchmarks/gc_freeze.py, docs/federated.md). Here, not at import: importing
    this module does no work. The device app's modules are frozen when they are imported (``_device_app``).
    What survives each collection lives on too (the runtime's state, caches) and is frozen after it, so
    the next collection scans only what the next message allocates. Whether the first freeze was done is a
    flag: ``gc.get_freeze_count()`` walks every frozen object, and took half a simulated device's time at
    100 devices (docs/federated.md)."""
    global _FROZEN
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True
    reply = call_next(msg, context)
    gc.collect()
    gc.freeze()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return reply


_FROZEN = False  # this process's imports are frozen (release_memory's first message)

try:  # glibc only (Linux devices); elsewhere the collection alone still runs
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 - probe that the symbol exists
except (OSError, AttributeError):
    _LIBC = None

app = ClientApp(mods=[release_memory, packed_arrays, secure_aggregation])


@functools.cache
def _device_app() -> ClientApp:
    """``clients/device_app.py``'s app, imported by the first message that reaches a handler. What the import
    brings in (torch, the library) lives as long as the process, so it is frozen at once, as
    ``release_memory`` freezes the process's imports before its first message: the collection after the
    message then scans what the message allocated, not every torch object (a deployed device pays that
    once per message, since every message is a process of its own)."""
    from .device_app import app

    gc.freeze()
    return app


def _device(msg: Message, context: Context) -> Message:
    return _device_app()(msg, context)


app.train()(_device)
app.query("features")(_device)
app.evaluate()(_device)
