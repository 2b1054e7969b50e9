"""Why the ClientApp freezes its imports out of the garbage collector.

A simulated device runs a full ``gc.collect()`` after every message (Opacus' hooks leave reference
cycles, ``clients/client_app.py``). In a process that has imported torch, Ray, Flower and Opacus, that
scan walks about half a million long-lived objects. This measures one full collection before and after
``gc.freeze()`` side by side in one process, and one privacy-accountant evaluation uncached and cached.

    python benchmarks/gc_freeze.py
"""

from __future__ import annotations

import gc

import flwr.clientapp  # noqa: F401 - what a device process imports
import opacus  # noqa: F401
import ray  # noqa: F401
import torch  # noqa: F401
from timing import median_seconds

from fl_metamorphosis.privacy.accounting import _opacus_epsilon


def main() -> None:
    tracked = len(gc.get_objects())
    before = median_seconds(gc.collect)
    gc.freeze()
    after = median_seconds(gc.collect)
    print(
        f"gc.collect() with {tracked} tracked objects: {before * 1e3:.1f} ms; after gc.freeze(): {after * 1e3:.3f} ms"
    )
    history = ((1.56, 1 / 7, 70),)
    uncached = median_seconds(lambda: _opacus_epsilon.__wrapped__(history, 1e-5, "rdp"))
    cached = median_seconds(lambda: _opacus_epsilon(history, 1e-5, "rdp"))
    print(f"RDP epsilon of one history: {uncached * 1e3:.1f} ms; cached: {cached * 1e6:.1f} us")


if __name__ == "__main__":
    main()
