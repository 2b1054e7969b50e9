"""Federated building blocks without Flower: device rounds, device state, update checks, server-side heads."""

from .device import LocalUpdate, train_locally

__all__ = ["LocalUpdate", "train_locally"]
