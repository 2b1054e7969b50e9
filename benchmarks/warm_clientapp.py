"""A deployed run with warm ClientApps (forked from a zygote that imported the libraries once,
``fl_metamorphosis/flower/warm_clientapp.py``) against Flower's cold ones (a new process that imports them
for every message), side by side.

Each trial runs the same tiny deployment twice, in alternating order: a TLS SuperLink and ``--devices``
registered SuperNodes on loopback (``simulations/loopback.py``), configs/tiny.toml, ``--rounds`` rounds, the
audit off. It measures the run's wall time (from ``deploy run`` to its summary) and the CPU time the whole
machine spent in it (``/proc/stat``: every process, the ServerApp's and the ClientApps' included). The table
gives the median and range over ``--trials``, and the warm/cold ratio within each trial.

    python benchmarks/warm_clientapp.py [--trials 3] [--devices 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import spread  # noqa: E402

from fl_metamorphosis.config import build_config, preset_overrides  # noqa: E402
from fl_metamorphosis.deployment import launch  # noqa: E402
from simulations.loopback import loopback_federation  # noqa: E402


def busy_cpu_s() -> float:
    """Seconds of CPU the machine has spent outside idle, all cores together."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tiny_deployment(devices: int, rounds: int):
    """configs/tiny.toml for ``devices`` devices and ``rounds`` rounds, MetaMorphosis only, the audit off."""
    overrides = [*preset_overrides(ROOT / "configs" / "tiny.toml"), 'methods=["metamorphosis"]',
                 "audit.enabled=false", f"federated.rounds={rounds}", f"federated.num_devices={devices}"]  # fmt: skip
    return build_config(None, overrides)


def one_run(warm: bool, devices: int, rounds: int) -> tuple[float, float]:
    cfg = tiny_deployment(devices, rounds)
    cold = () if warm else tuple(range(devices))
    with tempfile.TemporaryDirectory(prefix="mm-warm-") as root:
        with loopback_federation(Path(root), cfg, devices=devices, cold=cold) as fed:
            cpu, start = busy_cpu_s(), time.perf_counter()
            launch.run(cfg, Path(root) / "run", fed.server_state, app_dir=ROOT, echo=lambda _line: None)
            return time.perf_counter() - start, busy_cpu_s() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for trial in range(args.trials):
        for warm in (True, False) if trial % 2 == 0 else (False, True):
            wall, cpu = one_run(warm, args.devices, args.rounds)
            got[warm].append((wall, cpu))
            print(f"trial {trial + 1}/{args.trials} {'warm' if warm else 'cold'}: {wall:.1f} s, {cpu:.1f} CPU s",
                  flush=True)  # fmt: skip
    print(f"\n{args.devices} devices, {args.rounds} rounds, {args.trials} trials; median (min-max)\n")
    print("| ClientApps | run s | CPU s (all processes) |\n|---|---|---|")
    for warm in (False, True):
        print(f"| {'warm' if warm else 'cold'} | {spread([w for w, _ in got[warm]], '.1f')} | "
              f"{spread([c for _, c in got[warm]], '.1f')} |")  # fmt: skip
    ratios = [[w[i] / c[i] for w, c in zip(got[True], got[False], strict=True)] for i in (0, 1)]
    print(f"| warm / cold | {spread(ratios[0], '.2f')} | {spread(ratios[1], '.2f')} |")


if __name__ == "__main__":
    main()
