import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fl_metamorphosis.data import MultiTaskDataset, TaskSpec
from fl_metamorphosis.data.digits import load_digit_pairs
from fl_metamorphosis.data.synthetic import FACTORS, load_synthetic


def test_digit_pairs_shapes_and_tasks():
    split = load_digit_pairs(500, 100, 0.22, seed=0)
    assert split.train.images.shape == (500, 1, 8, 16)
    assert split.test.labels.shape == (100, 2)
    assert split.train.task_names == ["left", "right"]
    assert 0.0 <= float(split.train.images.min()) and float(split.train.images.max()) <= 1.0


def test_no_source_digit_in_both_train_and_test():
    split = load_digit_pairs(3000, 1000, 0.22, seed=3)
    assert not set(split.train.source_indices) & set(split.test.source_indices)
    # Check the pixels too: every half of every image comes from its own side's source digits.
    images = (load_digits().images / 16.0).astype(np.float32)
    train_src = {images[i].tobytes() for i in split.train.source_indices}
    test_src = {images[i].tobytes() for i in split.test.source_indices}
    for data, own in ((split.train, train_src), (split.test, test_src)):
        for img in data.images[:, 0].numpy():
            assert img[:, :8].tobytes() in own and img[:, 8:].tobytes() in own
    shared = train_src & test_src  # identical drawings that occur twice in load_digits, if any
    test_halves = {h.tobytes() for img in split.test.images[:, 0].numpy() for h in (img[:, :8], img[:, 8:])}
    train_halves = {h.tobytes() for img in split.train.images[:, 0].numpy() for h in (img[:, :8], img[:, 8:])}
    assert (test_halves & train_halves) <= shared


def test_seeded_and_reproducible():
    a, b = load_digit_pairs(200, 50, 0.2, seed=1), load_digit_pairs(200, 50, 0.2, seed=1)
    c = load_digit_pairs(200, 50, 0.2, seed=2)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


def test_left_and_right_labels_independent():
    split = load_digit_pairs(20000, 100, 0.22, seed=0)
    y = split.train.labels.numpy()
    assert abs(np.corrcoef(y[:, 0], y[:, 1])[0, 1]) < 0.03
    assert split.train.chance_level(0) < 0.13  # ten roughly balanced classes


def test_synthetic_chance_levels_and_independence():
    split = load_synthetic(6000, 100, ["shape", "position"], size=16, seed=0)
    assert split.train.images.shape == (6000, 3, 16, 16)
    y = split.train.labels.numpy()
    for t, name in enumerate(["shape", "position"]):
        assert np.bincount(y[:, t]).min() / len(y) > 0.9 / FACTORS[name]
    agreement = (y[:, 0] == y[:, 1] % 3).mean()  # what a copy would make 1
    assert abs(agreement - 1 / 3) < 0.03


def test_synthetic_injected_correlation():
    split = load_synthetic(6000, 100, ["shape", "colour"], correlation=0.6, seed=0)
    y = split.train.labels.numpy()
    # copied with prob 0.6, else independent: P(equal) = 0.6 + 0.4 / 3
    assert abs((y[:, 0] == y[:, 1]).mean() - (0.6 + 0.4 / 3)) < 0.03


def test_synthetic_images_show_their_factors():
    split = load_synthetic(40, 10, ["colour", "position"], size=16, seed=0)
    for img, (colour, pos) in zip(split.train.images, split.train.labels, strict=False):
        assert int(img.sum(dim=(1, 2)).argmax()) == int(colour)
        ys, xs = torch.nonzero(img.sum(0) > 0, as_tuple=True)
        assert int(ys.float().mean() >= 8) * 2 + int(xs.float().mean() >= 8) == int(pos)


def test_dataset_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        MultiTaskDataset(torch.zeros(3, 1, 4, 4), torch.tensor([[0], [1], [5]]), [TaskSpec("a", 3)])
    with pytest.raises(ValueError, match="labels must be"):
        MultiTaskDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, 2).long(), [TaskSpec("a", 3)])
    with pytest.raises(ValueError, match="distinct names"):
        load_synthetic(10, 10, ["shape", "weight"])
