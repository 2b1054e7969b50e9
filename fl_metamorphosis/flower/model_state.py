"""The model's wire format: one flat state dict (``generator.*``, ``heads.*``) that devices and server exchange.

The ServerApp sends it in every train request and aggregates it from the replies; the ClientApp splits it
into the encoder + Cross-SEC part and the heads part before its local round, and joins them after.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def join_state(generator: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One flat state dict of the generator's and the heads' state dicts (the same tensors, renamed: a
    ``state_dict`` is already detached, and the message copies them into its own arrays)."""
    return {**{f"generator.{k}": v for k, v in generator.items()}, **{f"heads.{k}": v for k, v in heads.items()}}


def joint_state(generator: nn.Module, heads: nn.ModuleList) -> dict[str, torch.Tensor]:
    """The flat state dict of the two modules: what devices and server exchange."""
    return join_state(generator.state_dict(), heads.state_dict())


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The generator's and the heads' state dicts of a flat one."""
    gen = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    heads = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")}
    return gen, heads
