"""MLflow and TensorBoard tracking of runs, sweeps and searches (``tracking`` in the config, ``--track``)."""

from .run_tracking import TrackedRun, config_params

__all__ = ["TrackedRun", "config_params"]
