"""The one place where third-party logging and warnings are tamed (library, apps, CLI and tests alike).

Opacus calls ``logging.basicConfig()`` when imported: with no handler on the root logger yet, that adds
one, and every log line then prints twice next to Flower's own handler. A ``NullHandler`` first makes
that call a no-op. The warnings filtered are notices that repeat every round and carry no action for a
user: Opacus' secure-RNG and RDP alpha-range notices, and the full-backward-hook notice Opacus triggers on
the first layer, whose input (the image) needs no gradient. Two loggers are raised to ERROR: Opacus'
data loader says at every round that it ignores ``drop_last`` (Poisson sampling has no last batch), and
dp-accounting says when it drops an RDP order whose series did not converge (dropping an order can only
loosen the bound it reports, never tighten it).
"""

from __future__ import annotations

import logging
import warnings


def quiet_third_party() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    for name in ("opacus.data_loader", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
