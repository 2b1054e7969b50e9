"""Flower ``Array`` bytes to numpy and torch, with numpy's ``.npy`` header parsed once per distinct header.

An ``Array`` holds its tensor as an ``.npy`` file: a short text header (dtype, order, shape) and the raw
bytes. ``Array.numpy()`` reads it with ``np.load``, which evaluates the header with ``ast.literal_eval``
every time; for the small tensors of this model that parse costs more than the copy, and every message
carries the whole model (a device decodes it for each request, the server each device's update).
The headers repeat from message to message (same names, same shapes), so ``decode`` parses each distinct
header once, with numpy's own reader, and checks every array's byte count against it: what it accepts,
``np.load(allow_pickle=False)`` accepts too, and a header that names an object dtype or a size the bytes
do not have is refused, as an untrusted sender's update must be.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

_MAGIC = b"\x93NUMPY"
_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@lru_cache(maxsize=4096)
def _header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    shape, fortran_order, dtype = _READERS[version](fp)
    if dtype.hasobject:
        raise ValueError("an array of Python objects (pickled) is never loaded")
    return shape, fortran_order, dtype


def decode(array: Array) -> np.ndarray:
    """``array`` as a writable numpy array (what ``array.numpy()`` returns, faster)."""
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != _MAGIC or (data[6], data[7]) not in _READERS:
        return array.numpy()  # anything unusual: Flower's own reader, and its errors
    size_bytes = 2 if data[6] == 1 else 4
    start = 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")
    shape, fortran_order, dtype = _header(bytes(data[:start]))
    count = math.prod(shape)
    if len(data) - start != count * dtype.itemsize:
        raise ValueError(f"array bytes ({len(data) - start}) do not match its header ({shape}, {dtype})")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if fortran_order else "C").copy()


def torch_state(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, decoded with ``decode``."""
    return OrderedDict((key, torch.from_numpy(decode(array))) for key, array in record.items())
