"""Large populations: rounds per minute and peak memory of a simulation at 100, 1,000 and 10,000 devices.

Each run is a normal ``simulate`` on the synthetic set (the embedded digits have about 1,400 source
digits, too few for 10,000 disjoint devices), the default mixed fleet, the audit off. A sampler thread
reads every process of the run (found by its private ``FLWR_HOME``, as ``simulate`` stops them) from
``/proc`` every 0.2 s and keeps each one's peak RSS (``VmHWM``), grouped into the server side (the
SuperLink and the simulation process that runs the ServerApp and the Ray driver) and the Ray workers
(the devices). Rounds per minute come from the per-round wall seconds in ``metrics.jsonl`` (start-up
and the final evaluation excluded); start-up is the launcher's wall time to the first round's start.

    python benchmarks/population_scale.py [--devices 100 1000 10000] [--sampled 50] [--rounds 3]
    python benchmarks/population_scale.py --devices 10000 --fraction 0.05   # the issue's 5 % run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config  # noqa: E402
from fl_metamorphosis.deployment.flower_processes import processes_of  # noqa: E402
from fl_metamorphosis.metrics import read_jsonl  # noqa: E402
from simulations.simulate import simulate  # noqa: E402


def _peak_kb(pid: int) -> tuple[str, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return cmdline, int(line.split()[1])
    return None


class PeakMemory(threading.Thread):
    """Peak RSS per process of a run, sampled until ``stop``."""

    def __init__(self, home: Path) -> None:
        super().__init__(daemon=True)
        self.home, self.peaks, self.done = home, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in processes_of(self.home):
                seen = _peak_kb(pid)
                if seen is not None:
                    cmd, kb = seen
                    self.peaks[pid] = (cmd, max(kb, self.peaks.get(pid, ("", 0))[1]))
            time.sleep(0.2)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        workers = [kb for cmd, kb in self.peaks.values() if cmd.startswith("ray::")]
        server = [kb for cmd, kb in self.peaks.values() if "flwr-simulation" in cmd or "flower-superlink" in cmd]
        return {
            "server_mb": sum(server) / 1024,
            "worker_max_mb": max(workers, default=0) / 1024,
            "workers_mb": sum(workers) / 1024,
            "workers": len(workers),
        }


def one_run(devices: int, fraction: float, rounds: int, out: Path) -> dict[str, float]:
    cfg = build_config(
        None,
        [
            "data.name=synthetic",
            'methods=["metamorphosis"]',
            "audit.enabled=false",
            f"federated.num_devices={devices}",
            f"federated.fraction_train={fraction}",
            f"federated.rounds={rounds}",
            "federated.fleet.enabled=true",
        ],
    )
    sampler = PeakMemory(out / ".flwr")
    started = time.perf_counter()
    first_round: list[float] = []

    def echo(line: str) -> None:
        if line.startswith("[round 1/") and not first_round:
            first_round.append(time.perf_counter() - started)

    sampler.start()
    simulate(cfg, out, echo=echo)
    wall = time.perf_counter() - started
    memory = sampler.stop()
    rows = read_jsonl(out / "metrics.jsonl")
    round_s = [r["seconds"] for r in rows]
    return {
        "devices": devices,
        "sampled": sum(r["sampled"] for r in rows) / len(rows),
        "rounds_per_min": 60 * len(rows) / sum(round_s),
        "startup_s": first_round[0] - round_s[0] if first_round else float("nan"),
        "wall_s": wall,
        **memory,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 10_000])
    p.add_argument("--sampled", type=int, default=50, help="devices sampled per round (of the available)")
    p.add_argument("--fraction", type=float, default=None, help="instead of --sampled: this share of devices")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            fraction = args.fraction if args.fraction is not None else min(1.0, args.sampled / n)
            results.append(one_run(n, fraction, args.rounds, Path(tmp) / f"run{n}"))
            r = results[-1]
            print(
                f"  {n} devices done: {r['rounds_per_min']:.2f} rounds/min, server {r['server_mb']:.0f} MB", flush=True
            )
    base = results[0]
    print(
        f"{'devices':>8} {'sampled':>8} {'rounds/min':>11} {'start-up s':>11} {'server MB':>10} "
        f"{'worker MB':>10} {'workers MB':>11} {'peak vs first':>14}"
    )
    for r in results:
        total, first = r["server_mb"] + r["workers_mb"], base["server_mb"] + base["workers_mb"]
        print(
            f"{r['devices']:>8} {r['sampled']:>8.1f} {r['rounds_per_min']:>11.2f} {r['startup_s']:>11.1f} "
            f"{r['server_mb']:>10.0f} {r['worker_max_mb']:>10.0f} {r['workers_mb']:>11.0f} {total / first:>13.2f}x"
        )
    print("(peak RSS per process, VmHWM; server: SuperLink + simulation process; workers: Ray actors running devices)")


if __name__ == "__main__":
    main()
