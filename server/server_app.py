"""Flower ServerApp: reads the experiment file named in the run config and runs the round loop."""

from __future__ import annotations

import logging

logging.getLogger().addHandler(logging.NullHandler())  # before opacus' basicConfig

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fl_metamorphosis.config import ExperimentConfig  # noqa: E402

from .round_loop import run_federated  # noqa: E402

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = ExperimentConfig.model_validate_json(Path(str(context.run_config["config-path"])).read_text())
    # Ray sets OMP_NUM_THREADS=1 for the driver; the server's own work (heads, evaluation, audit) may use
    # every core while the devices wait between rounds.
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    run_federated(grid, cfg, Path(str(context.run_config["out-dir"])))
