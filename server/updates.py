"""Checks on what a device sends back, before anything of it is aggregated.

A reply with a missing or extra tensor, a wrong shape or dtype, or a NaN/Inf value is rejected with a
reason naming the tensor, so the server can log it by device and go on with the valid replies.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class InvalidUpdate(ValueError):
    """A device's update cannot be aggregated; the message says which tensor and why."""


def _as_numpy(value: object) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def validate_update(update: Mapping[str, object], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise InvalidUpdate unless ``update`` has exactly the reference's tensors, shapes, dtypes, finite values."""
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        raise InvalidUpdate(f"tensor names differ: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, ref in reference.items():
        value = _as_numpy(update[name])
        want = _as_numpy(ref)
        if value.shape != want.shape:
            raise InvalidUpdate(f"{name}: shape {value.shape}, expected {want.shape}")
        if value.dtype != want.dtype:
            raise InvalidUpdate(f"{name}: dtype {value.dtype}, expected {want.dtype}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise InvalidUpdate(f"{name}: contains NaN or Inf")
