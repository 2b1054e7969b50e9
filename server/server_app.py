"""Flower ServerApp: reads the experiment file named in the run config and runs the round loop.

Run config: ``config-path`` (the validated experiment, JSON), ``out-dir`` (the run folder), ``resume``
(continue from the run folder's last checkpoint) and ``command`` (the launcher, which the report names).
Progress goes through the ``server`` loggers to stdout, which ``flwr run --stream`` relays to the launcher.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.environment import cores_from_env

from .grid_view import PackedGrid, PromptGrid
from .round_loop import run_federated

app = ServerApp()


def _progress_to_stdout() -> None:
    logger = logging.getLogger("server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    _progress_to_stdout()
    cfg = ExperimentConfig.model_validate_json(Path(str(context.run_config["config-path"])).read_text())
    # Ray sets OMP_NUM_THREADS=1 for the driver; the server's own work (heads, evaluation, audit) may use
    # every core while the devices wait between rounds, or the cores the launcher gave this run (a sweep
    # that runs cells side by side: oversubscribed thread pools spin and slow every run several-fold).
    threads = cfg.train.threads or cores_from_env() or os.cpu_count() or 1
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # the BLAS and OpenMP pools of numpy, scipy and scikit-learn (the audit)
    resume = str(context.run_config.get("resume", False)).lower() == "true"
    command = str(context.run_config.get("command", "simulate"))  # "deploy" from `metamorphosis deploy run`
    grid = PromptGrid(PackedGrid(grid))
    run_federated(grid, cfg, Path(str(context.run_config["out-dir"])), resume=resume, command=command)
