"""Cost of a sweep's cells: a tiny cell cold (its own ``flwr run``, SuperLink, Ray and imports) against the
same cell on a warm runtime (``simulations/warm_runtime.py``), with new device actors for every run and with
the actors kept from run to run (its default), measured side by side in one run, alternating, on this machine;
and, with ``--default-sweep``, the wall time of the default sweep (configs/sweep.toml).

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


KINDS = ("cold", "warm, new actors", "warm")  # a cold flwr run; the warm runtime without and with kept actors


def tiny_cells(cells: int, extra: list[str], scratch: Path) -> None:
    cfg = build_config(None, [*preset_overrides(ROOT / "configs" / "tiny.toml"), *extra])
    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    with (
        WarmRuntime(scratch / "runtime-new", keep_actors=False) as fresh,
        WarmRuntime(scratch / "runtime") as kept,
    ):
        runtimes = {"cold": None, "warm, new actors": fresh, "warm": kept}
        first = timed_cell(cfg, scratch / "warm-first", kept)
        timed_cell(cfg, scratch / "warm-new-first", fresh)  # its runtime's start, not timed
        for i in range(cells):  # alternating, so drift on the machine hits every kind alike
            for n, kind in enumerate(KINDS):
                times[kind].append(timed_cell(cfg, scratch / f"cell-{i}-{n}", runtimes[kind]))
            print(
                f"  cell {i + 1}/{cells}: "
                + ", ".join(f"{kind} {times[kind][-1][0]:.1f} / {times[kind][-1][1]:.1f} s" for kind in KINDS),
                flush=True,
            )
    print(
        f"\ntiny cell ({cfg.federated.num_devices} devices, {cfg.federated.rounds} rounds), {cells} of each, "
        "median (min-max) seconds:"
    )
    print(f"{'':28s} {'start-up to round 1':>22s} {'whole cell':>22s}")
    rows = {"cold (flwr run)": times["cold"], "warm, first (runtime start)": [first]}
    rows.update({kind: times[kind] for kind in KINDS[1:]})
    for name, values in rows.items():
        print(f"{name:28s} {spread([v[0] for v in values]):>22s} {spread([v[1] for v in values]):>22s}")
    for slow, fast in (("cold", "warm"), ("warm, new actors", "warm")):
        pairs = list(zip(times[slow], times[fast], strict=True))
        start, whole = spread([a[0] / b[0] for a, b in pairs]), spread([a[1] / b[1] for a, b in pairs])
        print(f"{slow + ' / ' + fast:28s} {start:>22s} {whole:>22s}")


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
