"""Datasets as ``load_dataset`` and the federated partitioner see them.

MNIST-format IDX pairs, image files on disk (folder, CelebA, UTKFace), the config checks in front of them, and
how the training images are dealt out to devices. Every fixture is a handful of tiny files in tmp_path whose
pixels encode the item they belong to, so a split, a pair or a device's share can be checked item by item.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import CELEBA_ATTRIBUTES, make_celeba, make_folder, make_utkface, solid
from PIL import Image
from pydantic import ValidationError

from fl_metamorphosis.config import ConfigError, DataConfig, build_config
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.data.labelled_files import DatasetFileError
from fl_metamorphosis.data.partition import device_datasets, split_by_identity

# ------------------------------------------------------------------------------------------------- MNIST-format IDX

N_TRAIN, N_TEST = 20, 8
TRAIN_CODE, TEST_CODE = 10, 100  # train item i has every pixel TRAIN_CODE + i, test item j TEST_CODE + j
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def item_label(code: np.ndarray | torch.Tensor):
    """An item's label, a function of its pixel code (not of its position, so a swapped pair is caught)."""
    return (code * 7 + 3) % 10


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: two zero bytes, 0x08 (unsigned bytes), the number of dims, big-endian uint32 dims, the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_file(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def idx_name(split: str, kind: str, *, gz: bool = True, dotted: bool = False) -> str:
    ndim = 3 if kind == "images" else 1
    return f"{split}-{kind}{'.' if dotted else '-'}idx{ndim}-ubyte" + (".gz" if gz else "")


def make_mnist(root: Path, *, gz: bool = True, dotted: bool = False, n_train: int = N_TRAIN) -> Path:
    """The four IDX files of a tiny MNIST: 28x28 items, each a solid grey level that names it."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, first in (("train", n_train, TRAIN_CODE), ("t10k", N_TEST, TEST_CODE)):
        codes = first + np.arange(n)
        images = np.broadcast_to(codes[:, None, None], (n, 28, 28))
        write_file(root / idx_name(split, "images", gz=gz, dotted=dotted), idx_bytes(images))
        write_file(root / idx_name(split, "labels", gz=gz, dotted=dotted), idx_bytes(item_label(codes)))
    return root


def mnist_cfg(root: Path, train_pairs: int = 30, test_pairs: int = 12) -> DataConfig:
    return DataConfig(name="mnist_pairs", root=root, train_pairs=train_pairs, test_pairs=test_pairs)


def halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel codes of each pair's left and right item."""
    codes = torch.round(images * 255).long()
    return codes[:, 0, 0, 0], codes[:, 0, 0, 28]


@pytest.mark.parametrize(
    ("gz", "dotted"),
    [(True, False), (False, False), (False, True), (True, True)],
    ids=["gzipped", "plain", "dotted-plain", "dotted-gzipped"],
)
def test_mnist_pairs_are_read_from_gzipped_plain_and_dotted_idx_files(tmp_path, gz, dotted):
    root = make_mnist(tmp_path / "mnist", gz=gz, dotted=dotted)
    split = load_dataset(mnist_cfg(root), seed=0)
    assert len(split.train) == 30 and len(split.test) == 12
    assert [(t.name, t.num_classes) for t in split.train.tasks] == [("left", 10), ("right", 10)]


def test_mnist_pairs_put_two_items_side_by_side_with_their_labels_in_0_1(tmp_path):
    split = load_dataset(mnist_cfg(make_mnist(tmp_path / "mnist")), seed=0)
    for part in (split.train, split.test):
        x, y = part.images, part.labels
        assert x.shape == (len(part), 1, 28, 56) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        left, right = halves(x)
        # each half is one whole item: every pixel of it carries that item's code
        assert torch.equal(torch.round(x[:, 0, :, :28] * 255).long(), left[:, None, None].expand(-1, 28, 28))
        assert torch.equal(torch.round(x[:, 0, :, 28:] * 255).long(), right[:, None, None].expand(-1, 28, 28))
        assert y.shape == (len(part), 2) and y.dtype == torch.int64
        assert torch.equal(y[:, 0], item_label(left)) and torch.equal(y[:, 1], item_label(right))


def test_mnist_train_pairs_use_only_train_items_and_test_pairs_only_t10k_items(tmp_path):
    split = load_dataset(mnist_cfg(make_mnist(tmp_path / "mnist"), train_pairs=200, test_pairs=100), seed=0)
    train_items = set(torch.cat(halves(split.train.images)).tolist())
    test_items = set(torch.cat(halves(split.test.images)).tolist())
    assert train_items <= set(range(TRAIN_CODE, TRAIN_CODE + N_TRAIN))
    assert test_items <= set(range(TEST_CODE, TEST_CODE + N_TEST))
    assert len(train_items) > N_TRAIN // 2 and len(test_items) > N_TEST // 2  # drawn from many items, not one


def test_mnist_pairs_are_reproducible_for_a_seed_and_differ_between_seeds(tmp_path):
    cfg = mnist_cfg(make_mnist(tmp_path / "mnist"))
    a, b, c = load_dataset(cfg, seed=5), load_dataset(cfg, seed=5), load_dataset(cfg, seed=6)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.test.images, c.test.images)


def test_a_missing_idx_file_names_the_folder_the_file_and_every_expected_name(tmp_path):
    root = make_mnist(tmp_path / "mnist")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetFileError) as err:
        load_dataset(mnist_cfg(root), seed=0)
    message = str(err.value)
    assert str(root) in message and "no t10k-labels-idx1-ubyte" in message
    assert all(name in message for name in IDX_NAMES)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x0d\x03" + struct.pack(">3I", N_TRAIN, 28, 28) + bytes(4 * N_TRAIN * 28 * 28),  # float32 data
        b"\x00\x00\x08\x01" + struct.pack(">I", N_TRAIN * 28 * 28) + bytes(N_TRAIN * 28 * 28),  # 1-D, not 3-D
        b"\x01\x00\x08\x03" + struct.pack(">3I", N_TRAIN, 28, 28) + bytes(N_TRAIN * 28 * 28),  # bad magic
        b"\x00\x00\x08\x03\x00\x00",  # header cut short
        b"",
    ],
    ids=["float-type", "wrong-ndim", "bad-magic", "short-header", "empty"],
)
def test_an_idx_file_with_a_bad_header_is_refused_naming_it(tmp_path, raw):
    root = make_mnist(tmp_path / "mnist")
    bad = write_file(root / "train-images-idx3-ubyte.gz", raw)
    with pytest.raises(DatasetFileError, match="bad header") as err:
        load_dataset(mnist_cfg(root), seed=0)
    assert str(bad) in str(err.value)


def test_an_idx_file_shorter_than_its_header_says_is_refused_as_truncated(tmp_path):
    root = make_mnist(tmp_path / "mnist", gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetFileError, match="truncated") as err:
        load_dataset(mnist_cfg(root), seed=0)
    assert str(path) in str(err.value) and str(N_TRAIN * 28 * 28 - 5) in str(err.value)


def test_a_cut_off_gzip_stream_is_refused_as_unreadable_naming_it(tmp_path):
    root = make_mnist(tmp_path / "mnist")
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetFileError, match="unreadable") as err:
        load_dataset(mnist_cfg(root), seed=0)
    assert str(path) in str(err.value)


def test_idx_images_and_labels_of_different_counts_are_refused(tmp_path):
    root = make_mnist(tmp_path / "mnist")
    write_file(root / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(N_TRAIN - 1)))
    with pytest.raises(DatasetFileError, match=f"train has {N_TRAIN} images but {N_TRAIN - 1} labels") as err:
        load_dataset(mnist_cfg(root), seed=0)
    assert str(root) in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "a-file"])
def test_an_mnist_root_that_is_not_a_folder_is_refused_naming_it(tmp_path, kind):
    root = tmp_path / "mnist"
    if kind == "a-file":
        root.write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(DatasetFileError, match="is not a folder") as err:
        load_dataset(mnist_cfg(root), seed=0)
    assert str(root) in str(err.value)


# --------------------------------------------------------------------------------------------- image files on disk


def coded_image(path: Path, k: int) -> Path:
    """An image whose red level is k + 1, stored losslessly (PNG bytes, whatever the suffix) so it decodes exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (k + 1, 200, 60)).save(path, format="PNG")
    return path


def codes(images: torch.Tensor) -> list[int]:
    """The k of every decoded coded_image (rgb)."""
    return (torch.round(images[:, 0, 0, 0] * 255).long() - 1).tolist()


def smiling(k: int) -> int:
    return (k // 3) % 2  # half of each CelebA split smiles


def male(k: int) -> int:
    return (k // 6) % 2  # independent of smiling over the train rows (k % 3 == 0)


def person(k: int) -> int:
    return 100 + k % 8


def coded_celeba(root: Path, n: int, *, male_of=male, identity: bool = True) -> Path:
    """make_celeba's layout (partition k % 3: 0 train, 1 val, 2 test) with coded images, Smiling and Male as given by
    smiling() and male_of(), the other attributes -1, and person() as the identity."""
    make_celeba(root, n, identity=identity)
    value = {"Smiling": smiling, "Male": male_of}
    rows = []
    for k in range(n):
        name = f"{k + 1:06d}.jpg"
        coded_image(root / "img_align_celeba" / name, k)
        bits = [("1" if value[a](k) else "-1") if a in value else "-1" for a in CELEBA_ATTRIBUTES]
        rows.append(f"{name} {' '.join(bits)}")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    if identity:
        (root / "identity_CelebA.txt").write_text("".join(f"{k + 1:06d}.jpg {person(k)}\n" for k in range(n)))
    return root


def coded_folder(root: Path, n: int, *, people: int | None = None, split=None, missing: int | None = None) -> Path:
    """A folder layout of n coded PNGs: tasks hair (k % 2) and smile (k % 3); optional identity (k % people) and
    split (split(k)) columns; image ``missing`` is listed but not written."""
    rows = []
    for k in range(n):
        row = {"file": f"imgs/{k}.png", "hair": "ab"[k % 2], "smile": "xyz"[k % 3]}
        if people is not None:
            row["identity"] = f"p{k % people}"
        if split is not None:
            row["split"] = split(k)
        if k != missing:
            coded_image(root / row["file"], k)
        rows.append(row)
    return make_folder(root, rows)


def files_cfg(tmp_path: Path, name: str, root: Path, **kw) -> DataConfig:
    return DataConfig(name=name, root=root, cache_dir=tmp_path / "cache", image_size=8, **kw)


def test_celeba_official_partition_gives_train_and_test_and_leaves_validation_out(tmp_path):
    root = coded_celeba(tmp_path / "celeba", 12)
    split = load_dataset(files_cfg(tmp_path, "celeba", root), seed=0)
    assert sorted(codes(split.train.images)) == [0, 3, 6, 9]
    assert sorted(codes(split.test.images)) == [2, 5, 8, 11]
    assert split.train.task_names == ["Male", "Smiling"] and split.skipped == 0
    by_code = dict(zip(codes(split.train.images), split.train.labels.tolist(), strict=True))
    assert by_code == {k: [male(k), smiling(k)] for k in (0, 3, 6, 9)}


def test_a_folder_split_column_is_used_as_the_split(tmp_path):
    root = coded_folder(tmp_path / "faces", 12, split=lambda k: ["train", "TEST", "val"][k % 3])
    split = load_dataset(files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"]), seed=0)
    assert sorted(codes(split.train.images)) == [0, 3, 6, 9]
    assert sorted(codes(split.test.images)) == [1, 4, 7, 10]


def test_a_folder_without_a_split_but_with_identities_holds_out_whole_people(tmp_path):
    root = coded_folder(tmp_path / "faces", 18, people=6)
    split = load_dataset(files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"], test_fraction=0.34), seed=0)
    train, test = codes(split.train.images), codes(split.test.images)
    assert sorted(train + test) == list(range(18))
    train_people, test_people = {k % 6 for k in train}, {k % 6 for k in test}
    assert not train_people & test_people
    assert len(test_people) == round(6 * 0.34) and len(test) == 3 * len(test_people)


def test_a_folder_without_split_or_identities_holds_out_test_fraction_of_the_rows(tmp_path):
    root = coded_folder(tmp_path / "faces", 20)
    split = load_dataset(files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"], test_fraction=0.25), seed=0)
    train, test = codes(split.train.images), codes(split.test.images)
    assert len(test) == 5 and len(train) == 15
    assert sorted(train + test) == list(range(20))
    labels = dict(zip(train + test, split.train.labels.tolist() + split.test.labels.tolist(), strict=True))
    assert labels == {k: [k % 2, k % 3] for k in range(20)}


def test_train_and_test_pairs_cap_each_split_with_a_seeded_subsample(tmp_path):
    root = coded_folder(tmp_path / "faces", 40)

    def load(seed, **caps):
        cfg = files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"], test_fraction=0.5, **caps)
        split = load_dataset(cfg, seed=seed)
        return set(codes(split.train.images)), set(codes(split.test.images))

    full_train, full_test = load(0)
    assert len(full_train) == 20 and len(full_test) == 20
    train, test = load(0, train_pairs=12, test_pairs=10)
    assert len(train) == 12 and len(test) == 10
    assert train < full_train and test < full_test  # a subsample of the same split, not a new split
    assert load(0, train_pairs=12, test_pairs=10) == (train, test)
    other_train, _ = load(1, train_pairs=12, test_pairs=10)
    assert other_train != train
    assert load(0, train_pairs=500, test_pairs=500) == (full_train, full_test)  # a cap above the split keeps it all


@pytest.mark.parametrize(("colour", "channels"), [("grey", 1), ("rgb", 3)])
def test_colour_sets_the_channels_and_image_size_the_side(tmp_path, colour, channels):
    root = coded_celeba(tmp_path / "celeba", 6)
    cfg = DataConfig(name="celeba", root=root, cache_dir=tmp_path / "cache", image_size=10, colour=colour)
    split = load_dataset(cfg, seed=0)
    for part in (split.train, split.test):
        assert part.images.shape == (2, channels, 10, 10) and part.images.dtype == torch.float32
        assert float(part.images.min()) >= 0.0 and float(part.images.max()) <= 1.0


def test_a_folder_with_skip_bad_files_drops_a_missing_image_and_counts_it(tmp_path):
    root = coded_folder(tmp_path / "faces", 12, missing=4)
    cfg = files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"], skip_bad_files=True)
    split = load_dataset(cfg, seed=0)
    assert split.skipped == 1
    assert sorted(codes(split.train.images) + codes(split.test.images)) == [k for k in range(12) if k != 4]
    with pytest.raises(DatasetFileError, match="missing on disk") as err:
        load_dataset(files_cfg(tmp_path, "folder", root, tasks=["hair", "smile"]), seed=0)
    assert str(root / "imgs" / "4.png") in str(err.value)


def test_utkface_labels_follow_the_configured_tasks_and_age_buckets(tmp_path):
    names = ["UTKFace/25_0_3_201701.png", "8_1_0_201701.png", "61_0_1_201701.png", "30_1_4_201701.png"]
    root = make_utkface(tmp_path / "utk", names)
    cfg = files_cfg(tmp_path, "utkface", root, tasks=["race", "gender", "age"], age_buckets=[0, 18, 30])
    split = load_dataset(cfg, seed=0)
    assert [(t.name, t.num_classes) for t in split.train.tasks] == [("race", 5), ("gender", 2), ("age", 3)]
    assert len(split.train) + len(split.test) == 4 and len(split.test) == 1  # no split: a 0.22 hold-out
    got = sorted(split.train.labels.tolist() + split.test.labels.tolist())
    assert got == sorted([[3, 0, 1], [0, 1, 0], [1, 0, 2], [4, 1, 2]])
    assert load_dataset(files_cfg(tmp_path, "utkface", root), seed=0).train.task_names == ["age", "race"]


@pytest.mark.parametrize("name", ["folder", "celeba", "utkface"])
def test_a_missing_dataset_root_is_refused_naming_it(tmp_path, name):
    root = tmp_path / "not-there"
    cfg = files_cfg(tmp_path, name, root, tasks=["hair", "smile"] if name == "folder" else None)
    with pytest.raises(DatasetFileError, match="does not exist") as err:
        load_dataset(cfg, seed=0)
    assert str(root) in str(err.value)


# ------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.name=celeba"], "data.root is required for data.name='celeba'"),
        (["data.name=mnist_pairs"], "data.root is required for data.name='mnist_pairs'"),
        (["data.name=folder", "data.root=/data/faces"], "data.name='folder' needs data.tasks"),
        (['data.tasks=["a", "b"]'], "data.tasks applies to folder, celeba and utkface; data.name='digits'"),
        (
            ["data.name=celeba", "data.root=/data/celeba", 'data.tasks=["Male", "Male"]'],
            r"data.tasks names a task twice: \['Male', 'Male'\]",
        ),
        (["data.age_buckets=[0, 30, 18]"], r"data.age_buckets must ascend strictly, got \[0, 30, 18\]"),
        (["data.age_buckets=[0, 18, 18]"], "data.age_buckets must ascend strictly"),
        (["federated.partitioning=identity"], "partitioning='identity' needs people's ids.*data.name='digits'"),
        (
            ["federated.partitioning=identity", "data.name=utkface", "data.root=/data/utk"],
            "partitioning='identity' needs people's ids.*data.name='utkface'",
        ),
        (
            ["data.name=celeba", "data.root=/data/celeba", "federated.partition_task=Young"],
            r"federated.partition_task='Young' is not a task of data.name='celeba' \(tasks: \['Male', 'Smiling'\]\)",
        ),
        (
            [
                "data.name=utkface",
                "data.root=/data/utk",
                'data.tasks=["age", "race"]',
                "federated.partition_task=gender",
            ],
            "federated.partition_task='gender' is not a task of data.name='utkface'",
        ),
        (["federated.partition_task=left"], "federated.partition_task='left' is not a task of data.name='digits'"),
    ],
    ids=[
        "celeba-no-root",
        "mnist-no-root",
        "folder-no-tasks",
        "digits-with-tasks",
        "duplicate-tasks",
        "descending-buckets",
        "repeated-bucket",
        "identity-digits",
        "identity-utkface",
        "celeba-partition-task",
        "utkface-partition-task",
        "digits-partition-task",
    ],
)
def test_build_config_refuses_data_settings_that_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, overrides)


def test_data_config_raises_a_validation_error_for_a_file_dataset_without_a_root():
    with pytest.raises(ValidationError, match="data.root is required"):
        DataConfig(name="utkface")


def test_identity_partitioning_and_a_partition_task_are_accepted_where_they_apply():
    cfg = build_config(
        None,
        [
            "data.name=celeba",
            "data.root=/data/celeba",
            "federated.partitioning=identity",
            "federated.partition_task=Smiling",
        ],
    )
    assert cfg.federated.partitioning == "identity" and cfg.data.task_names() == ["Male", "Smiling"]


def test_a_relative_data_root_and_cache_dir_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = build_config(None, ["data.name=celeba", "data.root=datasets/celeba", "data.cache_dir=~/decoded"])
    assert cfg.data.root == tmp_path / "datasets" / "celeba" and cfg.data.root.is_absolute()
    assert cfg.data.cache_dir == Path.home() / "decoded"


# ------------------------------------------------------------------------------------------------------ partitioning

N_CELEBA = 60  # 20 train rows (k % 3 == 0), 20 validation, 20 test; 8 people
TRAIN_ROWS = {k for k in range(N_CELEBA) if k % 3 == 0}
TEST_ROWS = {k for k in range(N_CELEBA) if k % 3 == 2}


@pytest.fixture(scope="module")
def celeba_dirs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("partition")
    return coded_celeba(base / "celeba", N_CELEBA), base / "cache"


def fed_cfg(root: Path, cache: Path, *extra: str):
    return build_config(
        None,
        [
            "data.name=celeba",
            f"data.root={json.dumps(str(root))}",
            f"data.cache_dir={json.dumps(str(cache))}",
            "data.image_size=8",
            "federated.num_devices=3",
            *extra,
        ],
    )


def by_smiling(celeba_dirs, scheme: str, *extra: str):
    """The CelebA config partitioned by ``scheme`` on the Smiling attribute."""
    return fed_cfg(*celeba_dirs, f"federated.partitioning={scheme}", *extra, "federated.partition_task=Smiling")


def device_codes(cfg) -> tuple[list[list[int]], list[list[int]]]:
    """Each device's train and local test items (by their codes)."""
    parts = [device_datasets(cfg.data, cfg.federated, d, cfg.train.seed) for d in range(cfg.federated.num_devices)]
    return [codes(train.images) for train, _ in parts], [codes(test.images) for _, test in parts]


def assert_disjoint_cover(parts: list[list[int]], everything: set[int]) -> None:
    flat = [k for part in parts for k in part]
    assert len(flat) == len(set(flat)), "an item is on two devices"
    assert set(flat) == everything


def test_identity_partitioning_gives_each_persons_train_images_to_exactly_one_device(celeba_dirs):
    train, _ = device_codes(fed_cfg(*celeba_dirs, "federated.partitioning=identity"))
    assert_disjoint_cover(train, TRAIN_ROWS)
    owner = {}
    for device, items in enumerate(train):
        assert items, f"device {device} holds nobody"
        for k in items:
            assert owner.setdefault(person(k), device) == device, f"person {person(k)} is on two devices"
    assert len(owner) == 8


def test_iid_devices_are_disjoint_balanced_and_cover_the_train_split(celeba_dirs):
    train, _ = device_codes(fed_cfg(*celeba_dirs, "federated.partitioning=iid"))
    assert_disjoint_cover(train, TRAIN_ROWS)
    assert sorted(len(items) for items in train) == [6, 7, 7]


def smiling_share(items: list[int]) -> float:
    return sum(smiling(k) for k in items) / len(items)


@pytest.mark.filterwarnings("ignore:The specified min_partition_size:UserWarning")
def test_dirichlet_partitioning_skews_the_devices_by_the_partition_task(celeba_dirs):
    train, _ = device_codes(by_smiling(celeba_dirs, "dirichlet", "federated.dirichlet_alpha=0.2"))
    assert_disjoint_cover(train, TRAIN_ROWS)
    assert all(len(items) >= 2 for items in train)
    shares = [smiling_share(items) for items in train]
    assert max(abs(s - 0.5) for s in shares) >= 0.3, shares  # the train split smiles half the time


@pytest.mark.filterwarnings("ignore:The specified min_partition_size:UserWarning")
def test_dirichlet_shares_depend_on_the_partition_tasks_labels_only(celeba_dirs, tmp_path):
    settings = ["federated.partitioning=dirichlet", "federated.partition_task=Smiling"]
    by_smiling, _ = device_codes(fed_cfg(*celeba_dirs, *settings))
    # the same faces with another Male column: partitioned by Smiling, every device holds the same images
    other = coded_celeba(tmp_path / "celeba", N_CELEBA, male_of=lambda k: (k // 9) % 2)
    same, _ = device_codes(fed_cfg(other, tmp_path / "cache", *settings))
    assert same == by_smiling
    by_male, _ = device_codes(fed_cfg(other, tmp_path / "cache", "federated.partitioning=dirichlet"))  # default: Male
    assert by_male != by_smiling


@pytest.mark.filterwarnings("ignore:Classes:UserWarning")
def test_pathological_partitioning_with_one_class_per_device_gives_each_device_one_smiling_value(celeba_dirs):
    train, _ = device_codes(by_smiling(celeba_dirs, "pathological", "federated.classes_per_device=1"))
    flat = [k for items in train for k in items]
    assert len(flat) == len(set(flat)) and set(flat) <= TRAIN_ROWS
    for items in train:
        assert items and len({smiling(k) for k in items}) == 1
    assert any(len({male(k) for k in items}) == 2 for items in train)  # Male, not the partition task, stays mixed


def test_pathological_partitioning_still_puts_every_train_image_on_some_device(celeba_dirs):
    settings = ["federated.classes_per_device=1", "federated.partition_task=Smiling"]
    train, _ = device_codes(fed_cfg(*celeba_dirs, "federated.partitioning=pathological", *settings))
    assert_disjoint_cover(train, TRAIN_ROWS)


@pytest.mark.parametrize("partitioning", ["iid", "identity"])
def test_each_devices_local_test_set_is_its_share_of_the_test_split(celeba_dirs, partitioning):
    _, test = device_codes(fed_cfg(*celeba_dirs, f"federated.partitioning={partitioning}"))
    assert_disjoint_cover(test, TEST_ROWS)
    assert sorted(len(items) for items in test) == [6, 7, 7]


def test_identity_partitioning_of_a_dataset_without_identities_is_refused(tmp_path):
    root = coded_celeba(tmp_path / "celeba", 12, identity=False)
    cfg = fed_cfg(root, tmp_path / "cache", "federated.partitioning=identity")
    with pytest.raises(ValueError, match="has no identities"):
        device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)


def test_split_by_identity_needs_at_least_one_person_per_device():
    with pytest.raises(ValueError, match="at least one person per device: 2 people for federated.num_devices=3"):
        split_by_identity(np.array([7, 7, 9, 9, 9]), 3, seed=0)
    parts = split_by_identity(np.array([7, 7, 9, 9, 9, 4]), 3, seed=0)
    assert sorted(sorted(p.tolist()) for p in parts) == [[0, 1], [2, 3, 4], [5]]


def test_a_folder_of_jpeg_and_png_files_in_subfolders_loads_its_mixed_case_split_column(tmp_path):
    root = make_folder(tmp_path / "faces")  # 6 solid JPEG/PNG images under a/ and b/deep/, splits in any case
    split = load_dataset(files_cfg(tmp_path, "folder", root, tasks=["hair", "age"]), seed=0)
    assert split.train.labels.tolist() == [[2, 1], [0, 0], [1, 0], [2, 2]]
    assert split.test.labels.tolist() == [[2, 2], [0, 1]]
    assert split.train.images.shape == (4, 3, 8, 8)


def test_a_hold_out_without_a_split_keeps_someone_in_train_even_at_a_high_test_fraction(tmp_path):
    folder = tmp_path / "folder"
    rows = [
        {"file": f"img{i}.png", "hair": "red" if i % 2 else "black", "eyes": "blue" if i < 3 else "brown"}
        | {"identity": str(i // 2)}
        for i in range(6)
    ]  # three people
    for i, row in enumerate(rows):
        solid(folder / row["file"], (10 * i, 0, 0))
    make_folder(folder, rows)
    cfg = DataConfig(
        name="folder", root=folder, tasks=["hair", "eyes"], test_fraction=0.9, image_size=8, cache_dir=tmp_path / "c"
    )
    split = load_dataset(cfg, 0)
    assert len(split.train) == 2 and len(split.test) == 4  # one person of three trains


def test_simulate_refuses_a_missing_dataset_before_launching_flower(tmp_path):
    from simulations.simulate import simulate

    cfg = build_config(None, ["data.name=celeba", f'data.root="{tmp_path / "nowhere"}"'])
    with pytest.raises(DatasetFileError, match="nowhere"):
        simulate(cfg, tmp_path / "run", echo=lambda _: None)
    assert not (tmp_path / "run").exists()  # nothing launched, no run folder
