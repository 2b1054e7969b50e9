"""Training on one machine: one method at a time, and the centralized comparison run."""

from .inference import evaluate, released_features, task_accuracy
from .trainer import TrainedModel, train_method

__all__ = ["TrainedModel", "evaluate", "released_features", "task_accuracy", "train_method"]
