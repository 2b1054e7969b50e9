"""Cost of a sweep's cells: a tiny cell cold (its own ``flwr run``, SuperLink, Ray and imports) against the
same cell on a warm runtime (``simulations/warm_runtime.py``), measured side by side in one run, alternating,
on this machine; and, with ``--default-sweep``, the wall time of the default sweep (configs/sweep.toml).

For each cell: **start-up to round 1**, the seconds from the launch call until round 1 began (the moment
the launcher sees round 1's progress line, less that round's own seconds as the ServerApp timed them), and
the **whole cell**, launch to return (the audit included). The warm runtime's first cell also pays the
runtime's start (its runner's imports and Ray): it is shown apart, and the later warm cells are the ones
a sweep pays for each cell after its first.

    python benchmarks/sweep_cost.py [--cells 4] [--set key=value ...] [--default-sweep OUT]
    python benchmarks/sweep_cost.py --cells 0 --default-sweep OUT      # the default sweep alone
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config, preset_overrides  # noqa: E402
from fl_metamorphosis.environment import machine_description  # noqa: E402
from fl_metamorphosis.metrics import read_jsonl  # noqa: E402
from simulations.simulate import simulate  # noqa: E402
from simulations.warm_runtime import WarmRuntime  # noqa: E402

# docs/sweep.md: the default sweep, cold cells (one flwr run each), two at a time, on this kind of machine
EARLIER_DEFAULT_SWEEP_MIN = 47.9


def timed_cell(cfg, out: Path, runtime: WarmRuntime | None) -> tuple[float, float]:
    """(start-up to round 1, whole cell) in seconds."""
    seen: dict[str, float] = {}

    def echo(line: str) -> None:
        if line.startswith("[round 1/") and "round1" not in seen:
            seen["round1"] = time.perf_counter()

    started = time.perf_counter()
    simulate(cfg, out, echo=echo, runtime=runtime)
    whole = time.perf_counter() - started
    round1 = read_jsonl(out / "metrics.jsonl")[0]["seconds"]
    return seen["round1"] - round1 - started, whole


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:6.1f}"
    return f"{statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})"


def tiny_cells(cells: int, extra: list[str], scratch: Path) -> None:
    cfg = build_config(None, [*preset_overrides(ROOT / "configs" / "tiny.toml"), *extra])
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    with WarmRuntime(scratch / "runtime") as runtime:
        first = timed_cell(cfg, scratch / "warm-first", runtime)
        for i in range(cells):  # alternating, so drift on the machine hits both sides alike
            cold.append(timed_cell(cfg, scratch / f"cold-{i}", None))
            warm.append(timed_cell(cfg, scratch / f"warm-{i}", runtime))
            print(
                f"  cell {i + 1}/{cells}: cold {cold[-1][0]:.1f} / {cold[-1][1]:.1f} s, warm {warm[-1][0]:.1f} / "
                f"{warm[-1][1]:.1f} s",
                flush=True,
            )
    print(
        f"\ntiny cell ({cfg.federated.num_devices} devices, {cfg.federated.rounds} rounds), {cells} of each, "
        "median (min-max) seconds:"
    )
    print(f"{'':28s} {'start-up to round 1':>22s} {'whole cell':>22s}")
    print(f"{'cold (flwr run)':28s} {spread([c[0] for c in cold]):>22s} {spread([c[1] for c in cold]):>22s}")
    print(f"{'warm, first (runtime start)':28s} {spread([first[0]]):>22s} {spread([first[1]]):>22s}")
    print(f"{'warm':28s} {spread([w[0] for w in warm]):>22s} {spread([w[1] for w in warm]):>22s}")
    ratios_start = [c[0] / w[0] for c, w in zip(cold, warm, strict=True)]
    ratios_whole = [c[1] / w[1] for c, w in zip(cold, warm, strict=True)]
    print(f"{'cold / warm':28s} {spread(ratios_start):>22s} {spread(ratios_whole):>22s}")


def default_sweep(out: Path) -> None:
    from simulations.sweep import run_sweep
    from simulations.sweep_config import read_sweep

    sweep_cfg, base = read_sweep(ROOT / "configs" / "sweep.toml")
    started = time.perf_counter()
    report = run_sweep(sweep_cfg, base, out, echo=lambda line: print(line, flush=True) if "[sweep]" in line else None)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\ndefault sweep: {report['cells_done']}/{report['cells_total']} cells, {sweep_cfg.parallel} at a time, "
        f"{len(report['failed'])} failed: {minutes:.1f} min warm, against {EARLIER_DEFAULT_SWEEP_MIN} min cold "
        f"(docs/sweep.md): {EARLIER_DEFAULT_SWEEP_MIN / minutes:.2f}x"
    )
    print("(a finished cell in OUT is reused, not rerun: give an empty OUT to time the whole sweep)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=4, help="tiny cells of each kind (default 4; 0: none)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides of the tiny cell")
    parser.add_argument("--default-sweep", type=Path, metavar="OUT", help="also time configs/sweep.toml into OUT")
    args = parser.parse_args()
    print(machine_description())
    if args.cells > 0:
        with tempfile.TemporaryDirectory(prefix="sweep-cost-") as scratch:
            tiny_cells(args.cells, args.set, Path(scratch))
    if args.default_sweep:
        default_sweep(args.default_sweep)


if __name__ == "__main__":
    main()
