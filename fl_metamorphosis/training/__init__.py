"""Training on one machine: one method at a time, and the centralized comparison run."""

from .inference import evaluate, released_features, task_accuracy
from .trainer import TrainedModel, method_feature_dp, train_method

__all__ = ["TrainedModel", "evaluate", "method_feature_dp", "released_features", "task_accuracy", "train_method"]
