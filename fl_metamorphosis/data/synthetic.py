"""Synthetic images with independent generative factors, for tests.

Each image is one shape on a dark background; four factors are drawn independently and uniformly:
shape (square, cross, ring), colour (red, green, blue), position (4 quadrants) and size (small, large).
Chance levels are therefore known exactly (1/3, 1/3, 1/4, 1/2). ``correlation`` injects a chosen
dependence: with that probability the second task's factor copies the first task's (modulo its number
of classes), so a cross-task attack must beat chance by a predictable margin.
"""

from __future__ import annotations

import numpy as np
import torch

from .multitask import MultiTaskDataset, TaskSpec, TrainTestSplit

FACTORS = {"shape": 3, "colour": 3, "position": 4, "size": 2}
_RGB = np.array([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.15, 0.15, 1.0]], dtype=np.float32)


def _mask(shape: int, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    c = (side - 1) / 2
    r = np.maximum(abs(yy - c), abs(xx - c))
    if shape == 0:  # filled square
        return np.ones((side, side), np.float32)
    if shape == 1:  # cross
        w = max(1, side // 4)
        return ((abs(yy - c) < w) | (abs(xx - c) < w)).astype(np.float32)
    return (r >= c - max(1, side // 4)).astype(np.float32)  # ring (square outline)


def _render(factors: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(factors), 3, size, size), np.float32)
    half = size // 2
    for i, (shape, colour, pos, big) in enumerate(factors):
        side = half if big else max(3, half // 2 + 1)
        oy, ox = (pos // 2) * half, (pos % 2) * half
        oy += (half - side) // 2
        ox += (half - side) // 2
        patch = _mask(shape, side)[None] * _RGB[colour][:, None, None]
        out[i, :, oy : oy + side, ox : ox + side] = patch
    return out


def make_factors(n: int, rng: np.random.Generator, tasks: list[str], correlation: float) -> np.ndarray:
    names = list(FACTORS)
    f = np.stack([rng.integers(0, FACTORS[k], size=n) for k in names], axis=1)
    if correlation > 0:
        a, b = names.index(tasks[0]), names.index(tasks[1])
        copy = rng.random(n) < correlation
        f[copy, b] = f[copy, a] % FACTORS[names[b]]
    return f


def load_synthetic(
    train: int,
    test: int,
    tasks: list[str],
    size: int = 16,
    correlation: float = 0.0,
    seed: int | np.random.Generator = 0,
) -> TrainTestSplit:
    unknown = [t for t in tasks if t not in FACTORS]
    if unknown or len(set(tasks)) != len(tasks):
        raise ValueError(f"synthetic tasks must be distinct names from {list(FACTORS)}, got {tasks}")
    rng = np.random.default_rng(seed)
    specs = [TaskSpec(t, FACTORS[t]) for t in tasks]
    cols = [list(FACTORS).index(t) for t in tasks]

    def build(n: int) -> MultiTaskDataset:
        f = make_factors(n, rng, tasks, correlation)
        x = torch.from_numpy(_render(f, size))
        return MultiTaskDataset(x, torch.from_numpy(f[:, cols]).long(), specs)

    return TrainTestSplit(build(train), build(test))
