"""Federated building blocks without Flower: device rounds, update checks, server-side heads."""

from .device import LocalUpdate, epsilon_of, planned_history, train_locally

__all__ = ["LocalUpdate", "epsilon_of", "planned_history", "train_locally"]
