"""Training on one machine: one method at a time (``trainer.py``), a device's local round
(``local_round.py``), and what a trained model releases and scores (``inference.py``, below).

Only the inference names are imported with the package: a device's process that releases features or
evaluates (one per message on a board) imports this package, and the trainers' modules import Opacus."""

from .inference import evaluate, released_features, task_accuracy

__all__ = ["evaluate", "released_features", "task_accuracy"]
