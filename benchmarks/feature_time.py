"""Per-image feature time on one CPU thread: what a single-core edge board pays to emit its task features.

Side by side in one run, the embedded digit pairs' model (1x8x16), the same model on MNIST-format pairs
(1x28x56) and the 64x64 RGB preset (configs/rgb64.toml), each as MetaMorphosis (encoder + Cross-SEC +
clip-and-noise release). One image at a time (a camera frame) and batches of 32. Ratios are to the
digit pairs' model, measured in the same run.

    python benchmarks/feature_time.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_seconds  # noqa: E402

from fl_metamorphosis.config import load_config  # noqa: E402
from fl_metamorphosis.model.feature_generator import FeatureGenerator  # noqa: E402
from fl_metamorphosis.privacy import release  # noqa: E402
from fl_metamorphosis.privacy.randomness import Randomness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "digit pairs, default model": (None, (1, 8, 16)),
    "MNIST-format pairs, default model": (None, (1, 28, 56)),
    "64x64 RGB, configs/rgb64.toml": (ROOT / "configs" / "rgb64.toml", (3, 64, 64)),
}


def per_image_ms(config: Path | None, shape: tuple[int, int, int], batch: int) -> tuple[float, int]:
    cfg = load_config(config)
    generator = FeatureGenerator("metamorphosis", shape, 2, cfg.model).eval()
    rng = Randomness.seeded(0)
    x = torch.rand(batch, *shape)

    @torch.no_grad()
    def emit() -> None:
        feats, _ = generator(x)
        release(feats, cfg.feature_dp, rng)

    seconds = median_seconds(emit, repeats=50 if batch == 1 else 30, warm_up=True)
    return 1000 * seconds / batch, sum(p.numel() for p in generator.parameters())


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median per-image milliseconds (ratio to the digit pairs)")
    print(f"{'model':38s} {'parameters':>10s} {'1 image':>14s} {'batch 32':>14s}")
    base: dict[int, float] = {}
    for name, (config, shape) in CASES.items():
        row = []
        for batch in (1, 32):
            ms, params = per_image_ms(config, shape, batch)
            base.setdefault(batch, ms)
            row.append(f"{ms:6.3f} ({ms / base[batch]:4.1f}x)")
        print(f"{name:38s} {params:10,d} {row[0]:>14s} {row[1]:>14s}")


if __name__ == "__main__":
    main()
