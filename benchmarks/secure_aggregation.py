"""What secure aggregation costs a round: the same experiment with and without SecAgg+, side by side.

Each run is a whole deployment on loopback (``simulations/loopback.py``: a TLS SuperLink with device
authentication and registered SuperNodes, each with its own data and state folder), started fresh so
that no device carries privacy spending from the run before. Runs alternate (plain, secure, plain,
secure, ...) so that drift on this noisy machine falls on both. A round's seconds come from the run's
``metrics.jsonl`` (the whole round: training, feature query, heads, evaluation); round 1 is reported
apart, since it includes the devices' first ClientApp start. The aggregates' accuracy is reported beside
the time, for the same seeds.

Run: .venv/bin/python benchmarks/secure_aggregation.py [--devices 3] [--rounds 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_metamorphosis.config import build_config, preset_overrides  # noqa: E402
from fl_metamorphosis.metrics import read_jsonl  # noqa: E402
from simulations.compare import TINY_PRESET  # noqa: E402
from simulations.loopback import loopback_federation  # noqa: E402


def one_run(secure: bool, devices: int, rounds: int) -> list[dict]:
    overrides = [
        *preset_overrides(TINY_PRESET),
        'methods=["metamorphosis"]',
        f"federated.num_devices={devices}",
        f"federated.rounds={rounds}",
        "audit.enabled=false",
        f"federated.secure_aggregation={str(secure).lower()}",
    ]
    cfg = build_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp, loopback_federation(Path(tmp), cfg, devices) as fed:
        out = Path(tmp) / "run"
        fed.run(cfg, out, echo=lambda _line: None)
        return read_jsonl(out / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: dict[bool, list[list[dict]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for secure in (False, True):
            rows = one_run(secure, args.devices, args.rounds)
            runs[secure].append(rows)
            label = "secure" if secure else "plain"
            print(f"repeat {repeat + 1} {label:>6}: round seconds " + ", ".join(f"{r['seconds']:.1f}" for r in rows))

    def figures(secure: bool) -> dict:
        rows = runs[secure]
        later = [r["seconds"] for run in rows for r in run[1:]]
        accs = [v for run in rows for k, v in run[-1].items() if k.startswith("test_acc.")]
        return {
            "first_round_s": statistics.median(run[0]["seconds"] for run in rows),
            "later_round_s": statistics.median(later) if later else float("nan"),
            "final_accuracy_mean": statistics.mean(accs),
        }

    plain, secure = figures(False), figures(True)
    print(f"\n{args.devices} devices on loopback (TLS, authenticated SuperNodes), tiny preset, {args.rounds} rounds, "
          f"{args.repeats} runs each, medians")  # fmt: skip
    print(f"{'':>8} {'round 1 s':>10} {'rounds 2+ s':>12} {'final acc':>10}")
    for name, f in (("plain", plain), ("secure", secure)):
        print(f"{name:>8} {f['first_round_s']:>10.2f} {f['later_round_s']:>12.2f} {f['final_accuracy_mean']:>10.3f}")
    print(
        f"secure / plain: round 1 {secure['first_round_s'] / plain['first_round_s']:.2f}x, rounds 2+ "
        f"{secure['later_round_s'] / plain['later_round_s']:.2f}x"
    )
    print(json.dumps({"plain": plain, "secure": secure, "args": vars(args)}))


if __name__ == "__main__":
    main()
