"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST) composed into side-by-side pairs at 28x28 each.

The user points ``data.root`` at the folder holding the four files, gzipped or not, as the datasets ship
them (``train-images-idx3-ubyte.gz``; some mirrors write ``train-images.idx3-ubyte``). The official
train and test files are the train and test sources, so no test pair shares an item with a training
pair. IDX is a header of big-endian dimensions before raw bytes: it is read here rather than through a
dataset library, which would want to download.
"""

from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from .labelled_files import DatasetFileError
from .multitask import TrainTestSplit
from .pairs import PairSources, load_pairs

LAYOUT = (
    "expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each may end in .gz) in data.root"
)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file's uint8 array, checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetFileError(f"{path}: unreadable ({err}); {LAYOUT}") from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetFileError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (bad header); {LAYOUT}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DatasetFileError(
            f"{path}: header says {dims} = {int(np.prod(dims))} bytes, the file holds {len(body)}: truncated?"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(root: Path, split: str, kind: str, ndim: int) -> Path:
    for name in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetFileError(f"{root}: no {split}-{kind}-idx{ndim}-ubyte[.gz]; {LAYOUT}")


@lru_cache(maxsize=2)
def mnist_sources(root: Path) -> PairSources:
    """The train and test items of the IDX files in ``root`` (read once per process)."""
    if not root.is_dir():
        raise DatasetFileError(f"data.root {str(root)!r} is not a folder; {LAYOUT}")
    parts = {}
    for split in ("train", "t10k"):
        images = read_idx(_find(root, split, "images", 3), 3)
        labels = read_idx(_find(root, split, "labels", 1), 1).astype(np.int64)
        if len(images) != len(labels):
            raise DatasetFileError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        parts[split] = images, labels
    images = np.concatenate([parts["train"][0], parts["t10k"][0]])
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    n_train = len(parts["train"][1])
    return PairSources(
        images,
        labels,
        train=np.arange(n_train),
        test=np.arange(n_train, len(labels)),
        scale=1 / 255,
        num_classes=int(labels.max()) + 1,
    )


def load_mnist_pairs(root: Path, train_pairs: int, test_pairs: int, seed: int) -> TrainTestSplit:
    """Left/right pairs of the IDX items; seeded and reproducible."""
    return load_pairs(mnist_sources(Path(root)), train_pairs, test_pairs, np.random.default_rng(seed))
