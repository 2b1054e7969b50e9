"""Decoding Flower arrays: equal to ``Array.numpy()``, and an array whose bytes disagree with its header,
or that holds pickled objects, is refused."""

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fl_metamorphosis.flower.arrays import decode, torch_state

ARRAYS = [
    np.random.default_rng(0).normal(size=(16, 3, 3, 3)).astype(np.float32),
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.asfortranarray(np.arange(20, dtype=np.float64).reshape(4, 5)),
    np.zeros((0, 3), np.float32),
    np.array(3.0),
    np.array([True, False]),
]


@pytest.mark.parametrize("value", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_decode_equals_flowers_reader_and_is_writable(value):
    array = Array(value)
    decoded, reference = decode(array), array.numpy()
    assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
    assert np.array_equal(decoded, reference)
    decoded[...] = 0  # the caller owns it (a model loads it, an aggregator sums into it)
    assert np.array_equal(array.numpy(), reference)


def test_torch_state_equals_flowers_state_dict():
    record = ArrayRecord({"a.weight": Array(ARRAYS[0]), "b.steps": Array(ARRAYS[1])})
    ours, flowers = torch_state(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers)
    assert all(torch.equal(ours[k], flowers[k]) for k in ours)


@pytest.mark.parametrize("cut", [-4, +4])
def test_bytes_that_disagree_with_the_header_are_refused(cut):
    good = Array(np.ones(4, np.float32))
    data = good.data[:cut] if cut < 0 else good.data + b"\0" * cut
    with pytest.raises(ValueError, match="do not match its header"):
        decode(Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=data))


def test_pickled_objects_are_never_loaded():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects"):
        decode(Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue()))
