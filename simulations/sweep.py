"""``metamorphosis sweep``: which aggregation strategy, with which settings, for my fleet.

The sweep file (``sweep_config.py``) expands into cells; each cell is one ordinary ``simulate`` run in
``OUT/cells/<cell>``, audited like any run (its attacker learns on as many released features as the
server received). Running the same sweep again reuses every finished cell and resumes an interrupted
one from its last checkpoint (``compare.run_or_reuse``), so a killed sweep loses at most the rounds of
the cells it was in. The cells run on one warm runtime (``warm_runtime.py``), started once for the sweep,
``parallel`` at once, each slot with its own Ray and its share of the cores. After every
cell the report is rewritten: ``sweep.json`` (every cell's figures, every setting pooled over seeds, the
attacks' cost, the recommendation), ``sweep.md`` and the plots.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.deployment.flower_processes import RunFailed
from fl_metamorphosis.environment import machine_description
from fl_metamorphosis.methods import method_plan
from fl_metamorphosis.metrics import write_json
from fl_metamorphosis.metrics.sweep_plots import plot_sweep_final, plot_sweep_rounds
from fl_metamorphosis.metrics.sweep_report import attack_costs, cell_figures, pool_settings, recommend, render_sweep
from fl_metamorphosis.tracking import TrackedRun, config_params, params_of

from .compare import run_config, run_or_reuse
from .simulate import APP_DIR
from .sweep_config import Cell, SweepConfig, expand
from .warm_runtime import WarmRuntime


def cell_record(cell: Cell) -> dict[str, Any]:
    return {
        "key": cell.key,
        "setting": cell.setting,
        "blocks": list(cell.blocks),
        "strategy": cell.strategy,
        "params": cell.params,
        "partitioning": cell.partitioning,
        "budget": cell.budget,
        "attack": cell.attack,
        "seed": cell.seed,
        "run": f"cells/{cell.key}",
    }


def write_report(out: Path, sweep_cfg: SweepConfig, cells: list[dict[str, Any]], failed: dict[str, str]) -> dict:
    """``sweep.json``, ``sweep.md`` and the plots from the cells finished so far."""
    settings = pool_settings(cells)
    plots = []
    if settings:
        plot_sweep_rounds(settings, out / "sweep_rounds.png")
        plot_sweep_final(settings, out / "sweep_final.png")
        plots = ["sweep_rounds.png", "sweep_final.png"]
        timed = [s for s in settings if s["simulated_seconds"]]
        if timed:
            plot_sweep_rounds(timed, out / "sweep_simulated_time.png", simulated_time=True)
            plots.append("sweep_simulated_time.png")
    report = {
        "command": "sweep",
        "machine": machine_description(),
        "seeds": sweep_cfg.seeds,
        "cells_total": len(cells),
        "cells_done": sum(1 for c in cells if c.get("figures")),
        "cells": cells,
        "settings": settings,
        "attack_costs": attack_costs(settings),
        "recommendation": recommend(settings),
        "failed": failed,
        "plots": plots,
        "sweep": sweep_cfg.model_dump(),
    }
    write_json(out / "sweep.json", report)
    (out / "sweep.md").write_text(render_sweep(report))
    return report


SWEEP_FILES = ("sweep.md", "sweep.json", "*.png")


def run_sweep(
    sweep_cfg: SweepConfig,
    base: ExperimentConfig,
    out: Path,
    echo: Callable[[str], None] = print,
    app_dir: Path = APP_DIR,
) -> dict[str, Any]:
    """Run every cell not finished yet (``sweep_cfg.parallel`` at once); return the report."""
    cells = expand(sweep_cfg, base)
    out.mkdir(parents=True, exist_ok=True)
    records = {c.key: cell_record(c) for c in cells}
    failed: dict[str, str] = {}
    lock = threading.Lock()
    # cells side by side share the cores: each gets its share, or oversubscribed pools slow all of them
    cores = max(1, (os.cpu_count() or 1) // sweep_cfg.parallel) if sweep_cfg.parallel > 1 else None
    echo(f"[sweep] {len(cells)} cells, {sweep_cfg.parallel} at a time -> {out}")

    def run_cell(index: int, cell: Cell) -> dict[str, Any]:
        def cell_echo(line: str) -> None:
            echo(f"[cell {index}/{len(cells)} {cell.key}] {line}")

        cfg = run_config(cell.cfg, method_plan(cell.cfg).name, cell.seed, out=out)
        return run_or_reuse(cfg, out / "cells" / cell.key, cell_echo, app_dir, cores, runtime, tracked)

    # every cell a tracked run under the sweep's (cfg.tracking); the runtime closes first on the way out:
    # an interrupted sweep's cells end with their runners
    params = {**config_params(base), **params_of(sweep_cfg.model_dump(), "sweep.")}
    with (
        TrackedRun(out, base, title=f"sweep {out.name}", params=params, resume=True, files=SWEEP_FILES) as tracked,
        ThreadPoolExecutor(max_workers=sweep_cfg.parallel) as pool,
        WarmRuntime(out / ".runtime", slots=sweep_cfg.parallel, cores=cores, app_dir=app_dir) as runtime,
    ):
        futures = {pool.submit(run_cell, i, c): c for i, c in enumerate(cells, 1)}
        for future in as_completed(futures):
            cell = futures[future]
            with lock:
                try:
                    records[cell.key]["figures"] = cell_figures(future.result())
                    failed.pop(cell.key, None)
                except RunFailed as err:  # the others go on; the next call of the sweep retries it
                    failed[cell.key] = str(err)
                    echo(f"[sweep] cell {cell.key} failed: {err}")
                report = write_report(out, sweep_cfg, list(records.values()), failed)
                echo(f"[sweep] {report['cells_done']}/{len(cells)} cells done ({len(failed)} failed)")
    return report
