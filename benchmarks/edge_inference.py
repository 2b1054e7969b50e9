"""What a board pays to release task features: torch eager against ONNX Runtime fp32 and int8, side by side.

Each measurement is a fresh process that only infers, on one thread (as a small board would), so that
its import time and peak memory are its own:

* torch eager: the run's checkpoint in the library's ``FeatureGenerator``, clip and noise as a training
  device releases (``privacy.feature_noise.release`` with the OS CSPRNG);
* ONNX fp32 and int8: the export through the torch-free edge runtime (``fl_metamorphosis.edge``).

Per process: the seconds its imports take, the seconds from start to ready (imports and model load),
milliseconds per image at batch 1 and batch 32 (median over the timed calls, after warm-up), and peak
RSS. ``--repeats`` rounds run the three back ends in turn; the table gives the median (min-max) over
rounds, and each ratio is taken within a round, so the machine's drift hits both sides.

    python benchmarks/edge_inference.py --export runs/demo/export [--repeats 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from timing import spread

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx_fp32", "onnx_int8")
BATCHES = (1, 32)

CHILD = r"""
import time
start = time.perf_counter()
import json, os, resource, sys
sys.path.insert(0, {root!r})
backend, export, calls = {backend!r}, {export!r}, {calls!r}
import numpy as np
if backend == "torch":
    import torch
    from fl_metamorphosis.checkpoint import load_model
    from fl_metamorphosis.config import build_config
    from fl_metamorphosis.edge.manifest import load_manifest
    from fl_metamorphosis.model import FeatureGenerator
    from fl_metamorphosis.privacy import release
    from fl_metamorphosis.privacy.randomness import Randomness
else:
    from fl_metamorphosis.edge import EdgeDevice
imported = time.perf_counter() - start
if backend == "torch":
    torch.set_num_threads(1)
    manifest = load_manifest(export)
    method, config, generator_state, _ = load_model(manifest.source["checkpoint"])
    cfg = build_config(config)
    generator = FeatureGenerator(method, manifest.input_shape, len(manifest.tasks), cfg.model,
                                 [t.num_classes for t in manifest.tasks])
    generator.load_state_dict(generator_state)
    generator.eval()
    secret = Randomness.secret()

    def infer(x):
        with torch.no_grad():
            features, _ = generator(torch.from_numpy(x))
            return release(features, cfg.feature_dp, secret)
else:
    device = EdgeDevice(export, int8=backend == "onnx_int8", threads=1)
    infer = device.release
ready = time.perf_counter() - start
with np.load(os.path.join(export, "samples.npz")) as s:
    images = s["images"]
out = {{"import_s": imported, "ready_s": ready}}
for batch, n in calls.items():
    x = np.ascontiguousarray(np.resize(images, (int(batch), *images.shape[1:])))
    for _ in range(max(3, n // 10)):
        infer(x)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - t)
    times.sort()
    out[f"ms_per_image_b{{batch}}"] = 1000 * times[len(times) // 2] / int(batch)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def measure(backend: str, export: Path, calls: dict[int, int]) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), backend=backend, export=str(export), calls=calls)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{backend}: {done.stderr.strip().splitlines()[-1] if done.stderr else 'failed'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", type=Path, required=True, help="a folder of `metamorphosis export ... --quantize int8`")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=200, help="timed calls at batch 1 (batch 32: a tenth)")
    p.add_argument("--out", type=Path, help="also write every measurement as JSON")
    args = p.parse_args()
    if not (args.export / "device.int8.onnx").is_file():
        raise SystemExit(f"{args.export}: no int8 model: run `metamorphosis export RUN --out DIR --quantize int8`")
    calls = {1: args.calls, 32: max(10, args.calls // 10)}
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.repeats):
        rounds.append({b: measure(b, args.export.resolve(), calls) for b in BACKENDS})
        print(f"round {r + 1}/{args.repeats}: " + "  ".join(
            f"{b} b1 {m['ms_per_image_b1']:.3f} ms" for b, m in rounds[-1].items()), file=sys.stderr)  # fmt: skip
    metrics = [("ms_per_image_b1", "ms / image, batch 1"), ("ms_per_image_b32", "ms / image, batch 32"),
               ("import_s", "imports, s"), ("ready_s", "start to ready (imports, model), s"),
               ("peak_rss_mb", "peak RSS, MiB")]  # fmt: skip
    print(f"\n{args.repeats} rounds, one thread, {sys.platform}; median (min-max) over rounds\n")
    print("| | torch eager | ONNX fp32 | ONNX int8 | torch / fp32 | torch / int8 |")
    print("|---|---|---|---|---|---|")
    for key, label in metrics:
        cells = [spread([rd[b][key] for rd in rounds]) for b in BACKENDS]
        ratios = [spread([rd["torch"][key] / rd[b][key] for rd in rounds], ".2f") + "x" for b in BACKENDS[1:]]
        print(f"| {label} | " + " | ".join(cells + ratios) + " |")
    if args.out:
        args.out.write_text(json.dumps({"export": str(args.export), "calls": calls, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
