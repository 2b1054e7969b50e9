"""A Flower strategy's own state between rounds, out to tensors and back, for the run's checkpoint.

Flower 1.42's strategies keep their state in plain attributes: the global arrays they last sent
(``current_arrays``: a dict of arrays in FedOpt's family, an ArrayRecord in FedAvgM), FedAdam's, FedYogi's
and FedAdagrad's moments (``m_t``, ``v_t``) and FedAvgM's momentum (``momentum_vector``, a list). The
rest (FedAvg, FedProx, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan) keep none. A test checks
that every strategy of the registry changes no other attribute in a round, so a Flower upgrade that
adds state fails it instead of resuming silently without that state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")


def strategy_state(strategy: Any) -> dict[str, dict[str, torch.Tensor]]:
    """``{"<attribute>:<form>": {name: tensor}}`` for each state attribute the strategy holds."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            out[f"{name}:arrayrecord"] = {k: torch.from_numpy(a.numpy().copy()) for k, a in value.items()}
        elif isinstance(value, dict):
            out[f"{name}:dict"] = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in value.items()}
        elif isinstance(value, list):
            out[f"{name}:list"] = {str(i): torch.from_numpy(np.array(a, copy=True)) for i, a in enumerate(value)}
        else:
            raise TypeError(f"{type(strategy).__name__}.{name} is a {type(value).__name__}: not saved")
    return out


def load_strategy_state(strategy: Any, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Put the state ``strategy_state`` took back into a freshly built strategy of the same kind."""
    for key, arrays in state.items():
        name, _, form = key.partition(":")
        if name not in STATE_ATTRIBUTES or not hasattr(strategy, name):
            raise ValueError(f"checkpoint holds strategy state {name!r} that {type(strategy).__name__} does not have")
        if form == "arrayrecord":
            value: Any = ArrayRecord({k: Array(t.numpy()) for k, t in arrays.items()})
        elif form == "dict":
            value = {k: t.numpy() for k, t in arrays.items()}
        elif form == "list":
            value = [arrays[str(i)].numpy() for i in range(len(arrays))]
        else:
            raise ValueError(f"unknown strategy state form {form!r}")
        setattr(strategy, name, value)
