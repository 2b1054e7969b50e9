import numpy as np
import pytest
import torch
from torch import nn

from fl_metamorphosis.model import ClassificationHead
from server.server_heads import train_head
from server.updates import InvalidUpdate, validate_update


@pytest.fixture
def reference():
    return nn.Linear(4, 3).state_dict()


def test_a_valid_update_passes_unchanged_and_the_same_one_with_a_nan_does_not(reference):
    update = {k: v.numpy().copy() for k, v in reference.items()}
    assert validate_update(update, reference) is None
    assert all(np.array_equal(update[k], v.numpy()) for k, v in reference.items())  # checked, not modified
    update["weight"][0, 0] = np.nan
    with pytest.raises(InvalidUpdate):
        validate_update(update, reference)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda u: u.pop("bias"), "missing"),
        (lambda u: u.update(extra=np.zeros(1, np.float32)), "unexpected"),
        (lambda u: u.update(weight=np.zeros((4, 3), np.float32)), "shape"),
        (lambda u: u.update(bias=np.zeros(3, np.float64)), "dtype"),
        (lambda u: u["weight"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda u: u["bias"].__setitem__(1, np.inf), "NaN or Inf"),
    ],
)
def test_malformed_updates_are_rejected_with_the_tensor_named(reference, mutate, reason):
    update = {k: v.numpy().copy() for k, v in reference.items()}
    mutate(update)
    with pytest.raises(InvalidUpdate, match=reason):
        validate_update(update, reference)


def test_server_head_learns_its_own_task_features():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() + 0.3 * torch.randn(800, 4, generator=g)
    head = ClassificationHead(4, 4, hidden=16)
    before = head.per_sample_loss(head(x), y).mean().item()
    after = train_head(head, x, y, epochs=20, lr=1e-2, seed=0)
    assert after < 0.5 * before
    assert float((head.predict(head(x)) == y).float().mean()) > 0.9
