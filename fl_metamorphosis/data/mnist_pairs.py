"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST) composed into side-by-side pairs at 28x28 each.

The user points ``data.root`` at the folder holding the four files, gzipped or not, as the datasets ship
them (``train-images-idx3-ubyte.gz``; some mirrors write ``train-images.idx3-ubyte``). The official
train and test files are the train and test sources, so no test pair shares an item with a training
pair. IDX is a header of big-endian dimensions before raw bytes: it is read here rather than through a
dataset library, which would want to download.

The header is checked before the body is read, against sizes no MNIST-format set exceeds, and the body is read
up to the declared size and no further: a 1 MB gzip of zeros can declare gigabytes, and reading it whole before
comparing would spend that memory first. A folder whose files hold no items is refused by name, not left to
fail later when pairs are drawn from nothing.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .labelled_files import DatasetFileError
from .multitask import TrainTestSplit
from .pairs import PairSources, load_pairs

LAYOUT = (
    "expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each may end in .gz) in data.root"
)
# The most bytes one IDX body may declare: EMNIST ByClass, the largest MNIST-format set, is ~550 MB of images.
MAX_IDX_BYTES = 1 << 30
MAX_IDX_SIDE = 256  # pixels a side of one item (MNIST-format items are 28 x 28)
_CHUNK = 1 << 24  # bytes per read: a bounded buffer per step, however large the file


def read_idx(path: Path, ndim: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX file's uint8 array, checked against its header before a byte of the body is read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            dims = _idx_dims(f, path, ndim)
            _check_idx_size(path, ndim, dims, max_bytes)
            return _read_body(f, path, dims)
    except (OSError, EOFError, zlib.error) as err:  # a damaged gzip stream raises any of the three
        raise DatasetFileError(f"{path}: unreadable ({err}); {LAYOUT}") from None


def _idx_dims(f: BinaryIO, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions the header declares (magic: two zero bytes, 0x08 for unsigned bytes, the number of dims)."""
    head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise DatasetFileError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (bad header); {LAYOUT}")
    return struct.unpack(f">{ndim}I", head[4:])


def _check_idx_size(path: Path, ndim: int, dims: tuple[int, ...], max_bytes: int) -> None:
    """Refuse a header whose size no MNIST-format set has: it is checked before anything is allocated, since a
    gzip of zeros a thousand times smaller than it declares would otherwise fill memory first."""
    size = math.prod(dims)  # Python ints: numpy's int64 product of three 2^31 dims wraps to 0
    if size > max_bytes:
        raise DatasetFileError(
            f"{path}: header declares {' x '.join(map(str, dims))} = {size:,} bytes, above the {max_bytes:,}-byte "
            f"limit of an MNIST-format file (the largest, EMNIST ByClass, is ~550 MB): a damaged or hostile file; "
            f"{LAYOUT}"
        )
    if ndim == 3 and max(dims[1:]) > MAX_IDX_SIDE:
        raise DatasetFileError(
            f"{path}: header declares items of {dims[1]} x {dims[2]} pixels; MNIST-format items are small "
            f"(28 x 28), at most {MAX_IDX_SIDE} a side here, since every pair composed of them is held as float32; "
            f"{LAYOUT}"
        )


def _read_body(f: BinaryIO, path: Path, dims: tuple[int, ...]) -> np.ndarray:
    """Exactly the declared bytes, read in chunks into one array (no second copy), then one more byte to catch
    trailing data: the file must hold what its header says, no less and no more."""
    body = np.empty(math.prod(dims), dtype=np.uint8)
    view, filled = memoryview(body), 0
    while filled < body.size:
        got = f.readinto(view[filled : filled + _CHUNK])
        if not got:
            break
        filled += got
    if filled < body.size:
        raise DatasetFileError(
            f"{path}: header says {dims} = {body.size} bytes, the file holds {filled}: truncated? {LAYOUT}"
        )
    if f.read(1):
        raise DatasetFileError(
            f"{path}: holds more than the {body.size:,} bytes its header {dims} declares: not an IDX file as "
            f"written, or two files joined; {LAYOUT}"
        )
    return body.reshape(dims)


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
        if len(labels) == 0:
            raise DatasetFileError(
                f"{root}: the {split} files hold no items; point data.root at a folder with the full dataset ({LAYOUT})"
            )
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
