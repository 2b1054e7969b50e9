"""The tracking backends by the name ``tracking.backend`` gives."""

from __future__ import annotations

from ..config import TrackingConfig
from .base import Tracker

INSTALL = "pip install 'fl-metamorphosis[tracking]' (make setup installs it)"


def make_tracker(cfg: TrackingConfig) -> Tracker:
    if cfg.backend == "mlflow":
        from .mlflow_tracker import MlflowTracker

        return MlflowTracker(cfg.uri, cfg.experiment)
    if cfg.backend == "tensorboard":
        from .tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker()
    raise ValueError(f"tracking.backend={cfg.backend!r}: no tracker to make")
