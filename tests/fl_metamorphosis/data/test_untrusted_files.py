"""Files a user gives the run, crafted to hurt it: paths out of the dataset folder, decompression bombs (PNG, gzip
IDX, checkpoint and device archives) and datasets with nothing in them.

Every hostile file is made tiny in tmp_path. Each test checks what the reader does with it: refuses it with an
error naming the file and the fix, before the damage (reading the outside file, allocating what the header
declares), or reads it when the user opted in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import make_folder, make_utkface
from PIL import Image
from pydantic import ValidationError
from test_dataset_loading import coded_celeba, coded_folder, coded_image, idx_bytes, make_mnist, write_file

from fl_metamorphosis import checkpoint as ck
from fl_metamorphosis.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from fl_metamorphosis.config import MAX_IMAGE_PIXELS, DataConfig, build_config
from fl_metamorphosis.data import image_cache, load_dataset
from fl_metamorphosis.data.celeba import read_celeba
from fl_metamorphosis.data.device_folder import PAIRS, DeviceDataError, read_device_folder, write_device_folder
from fl_metamorphosis.data.folder_layout import read_folder
from fl_metamorphosis.data.image_cache import decode_images
from fl_metamorphosis.data.labelled_files import DatasetFileError
from fl_metamorphosis.data.mnist_pairs import MAX_IDX_BYTES, read_idx
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.data.utkface import read_utkface

# ------------------------------------------------------------------------------------------ paths out of the folder


def folder_listing(root: Path, paths: list[str]) -> Path:
    """A folder layout whose CSV lists ``paths`` (tasks hair and smile, two classes each)."""
    rows = [{"file": p, "hair": "ab"[k % 2], "smile": "xy"[k % 2]} for k, p in enumerate(paths)]
    return make_folder(root, rows)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """An image outside the dataset folder: what a hostile label file would have the run read."""
    return coded_image(tmp_path / "private" / "secret.png", 7)


def _dotdot(root: Path, secret: Path) -> str:
    return "../private/secret.png"


def _absolute(root: Path, secret: Path) -> str:
    return str(secret)


def _linked_file(root: Path, secret: Path) -> str:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "imgs" / "innocent.png").symlink_to(secret)
    return "imgs/innocent.png"


def _linked_folder(root: Path, secret: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "photos").symlink_to(secret.parent, target_is_directory=True)
    return "photos/secret.png"


def _inner_dotdot(root: Path, secret: Path) -> str:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    return "imgs/../../private/secret.png"


ESCAPES = [_dotdot, _absolute, _linked_file, _linked_folder, _inner_dotdot]


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda f: f.__name__.strip("_"))
def test_a_csv_row_leading_outside_the_folder_is_refused_naming_the_csv_line_and_the_fix(tmp_path, secret, escape):
    root = tmp_path / "faces"
    coded_image(root / "imgs" / "0.png", 0)
    listed = escape(root, secret)
    folder_listing(root, ["imgs/0.png", listed])
    with pytest.raises(DatasetFileError) as err:
        read_folder(root, ["hair", "smile"])
    message = str(err.value)
    assert f"{root / 'labels.csv'} line 3" in message and repr(listed) in message
    assert str(secret.resolve()) in message and "outside the dataset folder" in message
    assert "data.allow_paths_outside_root = true" in message


def test_skip_bad_does_not_quietly_let_an_escaping_row_through(tmp_path, secret):
    root = tmp_path / "faces"
    coded_image(root / "imgs" / "0.png", 0)
    folder_listing(root, ["imgs/0.png", "../private/secret.png"])
    with pytest.raises(DatasetFileError, match="outside the dataset folder"):
        read_folder(root, ["hair", "smile"], skip_bad=True)


def test_links_and_dotdot_that_stay_inside_the_folder_are_read(tmp_path):
    root = tmp_path / "faces"
    coded_image(root / "imgs" / "0.png", 0)
    coded_image(root / "other" / "1.png", 1)
    (root / "imgs" / "alias.png").symlink_to(root / "other" / "1.png")
    folder_listing(root, ["imgs/0.png", "imgs/alias.png", "imgs/../other/1.png"])
    files = read_folder(root, ["hair", "smile"])
    assert len(files.files) == 3


def test_opting_in_reads_the_image_outside_the_folder_end_to_end(tmp_path, secret):
    root = tmp_path / "faces"
    for k in range(6):
        coded_image(root / "imgs" / f"{k}.png", k)
    folder_listing(root, [f"imgs/{k}.png" for k in range(6)] + ["../private/secret.png"])
    cfg = dict(name="folder", root=root, tasks=["hair", "smile"], cache_dir=tmp_path / "cache", image_size=8)
    with pytest.raises(DatasetFileError, match="allow_paths_outside_root"):
        load_dataset(DataConfig(**cfg), seed=0)
    split = load_dataset(DataConfig(**cfg, allow_paths_outside_root=True), seed=0)
    red = torch.cat([split.train.images, split.test.images])[:, 0, 0, 0]
    assert int(torch.round(red * 255).eq(8).sum()) == 1  # the secret's red level (k + 1) was decoded


def test_a_celeba_attribute_file_naming_an_image_outside_the_images_folder_is_refused(tmp_path, secret):
    root = coded_celeba(tmp_path / "celeba", 6)
    attr = root / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace("000002.jpg", "../../private/secret.png"))
    for name in ("list_eval_partition.txt", "identity_CelebA.txt"):
        (root / name).write_text((root / name).read_text().replace("000002.jpg", "../../private/secret.png"))
    with pytest.raises(DatasetFileError) as err:
        read_celeba(root, ["Male", "Smiling"])
    message = str(err.value)
    assert str(attr) in message and "'../../private/secret.png'" in message
    assert "outside the images folder" in message and "allow_paths_outside_root" in message
    assert len(read_celeba(root, ["Male", "Smiling"], allow_outside_root=True).files) == 6


def test_a_celeba_images_folder_that_is_itself_a_link_to_another_disk_is_read(tmp_path):
    elsewhere = coded_celeba(tmp_path / "big-disk" / "celeba", 6)
    root = tmp_path / "celeba"
    root.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
        (root / name).write_text((elsewhere / name).read_text())
    (root / "img_align_celeba").symlink_to(elsewhere / "img_align_celeba", target_is_directory=True)
    assert len(read_celeba(root, ["Male", "Smiling"]).files) == 6


def test_a_utkface_file_that_links_outside_the_folder_is_refused(tmp_path, secret):
    root = make_utkface(tmp_path / "utk", ["20_0_1_1.jpg", "40_1_2_2.jpg"])
    link = next(root.rglob("20_0_1_1.jpg"))
    link.unlink()
    link.symlink_to(secret)
    with pytest.raises(DatasetFileError) as err:
        read_utkface(root, ["gender", "race"], age_buckets=[0, 30])
    assert str(link) in str(err.value) and "outside the dataset folder" in str(err.value)
    assert len(read_utkface(root, ["gender", "race"], age_buckets=[0, 30], allow_outside_root=True).files) == 2


# ----------------------------------------------------------------------------------------------------- image bombs


def png_bomb(path: Path, side: int) -> Path:
    """A side x side PNG of zeros: a few kB on disk, side^2 pixels (x3 bytes as RGB) once decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side), 0).save(path)
    return path


def one_image(tmp_path: Path, image: Path, *others: Path):
    from fl_metamorphosis.data.labelled_files import LabelledFiles
    from fl_metamorphosis.data.multitask import TaskSpec

    files = [image, *others]
    return LabelledFiles(
        root=tmp_path,
        files=files,
        labels=np.zeros((len(files), 1), dtype=np.int64),
        tasks=[TaskSpec("t", 2)],
        classes=[["a", "b"]],
        split=np.array([""] * len(files)),
        identity=None,
    )


@pytest.fixture
def never_decodes(monkeypatch):
    """Fail the test if any image gets past its header: the refusal must come before decoding."""

    def decoded(*args, **kwargs):
        raise AssertionError("an image over the cap was decoded")

    monkeypatch.setattr(image_cache.ImageOps, "exif_transpose", decoded)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns on open above ~89 MP
def test_a_10000_by_10000_png_bomb_is_refused_before_decoding_naming_the_file_and_the_cap(tmp_path, never_decodes):
    bomb = png_bomb(tmp_path / "imgs" / "bomb.png", 10_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DatasetFileError) as err:
        decode_images(one_image(tmp_path, bomb), size=8, colour="rgb", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert str(bomb) in message and "10000 x 10000 = 100,000,000 pixels" in message
    assert f"cap of {MAX_IMAGE_PIXELS:,} pixels" in message and "data.max_image_pixels" in message


def test_an_image_just_over_the_cap_is_refused_without_any_pillow_warning(tmp_path, never_decodes, recwarn):
    bomb = png_bomb(tmp_path / "bomb.png", 6_400)  # 40.96 MP: over the 40 MP cap, under Pillow's own 89 MP
    with pytest.raises(DatasetFileError, match="6400 x 6400 = 40,960,000 pixels, above the cap of 40,000,000"):
        decode_images(one_image(tmp_path, bomb), size=8, colour="grey", cache_dir=tmp_path / "cache")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_image_over_twice_pillows_own_limit_gets_the_same_clear_error(tmp_path, never_decodes):
    bomb = png_bomb(tmp_path / "huge.png", 14_000)  # 196 MP: Image.open itself raises DecompressionBombError
    with pytest.raises(DatasetFileError) as err:
        decode_images(one_image(tmp_path, bomb), size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert str(bomb) in str(err.value) and "larger than even Pillow accepts" in str(err.value)
    assert "the cap is 40,000,000 pixels" in str(err.value)


def test_a_lower_configured_cap_refuses_a_bigger_image_and_skip_bad_drops_it(tmp_path):
    small, big = coded_image(tmp_path / "small.png", 0), coded_image(tmp_path / "big.png", 1)
    Image.new("RGB", (40, 40), (2, 200, 60)).save(big)
    files = one_image(tmp_path, small, big)
    with pytest.raises(DatasetFileError, match=r"big\.png.*40 x 40 = 1,600 pixels, above the cap of 1,000 pixels"):
        decode_images(files, size=8, colour="rgb", cache_dir=tmp_path / "cache", max_pixels=1_000)
    _, kept = decode_images(files, size=8, colour="rgb", cache_dir=tmp_path / "cache", max_pixels=1_000, skip_bad=True)
    assert kept.tolist() == [0]
    _, kept = decode_images(files, size=8, colour="rgb", cache_dir=tmp_path / "cache", max_pixels=2_000, skip_bad=True)
    assert kept.tolist() == [0, 1]  # another cap is another cache, not the one that dropped the image


def test_the_pixel_cap_cannot_be_raised_past_pillows_own_limit():
    with pytest.raises(ValidationError, match="max_image_pixels"):
        DataConfig(max_image_pixels=10**9)


# ------------------------------------------------------------------------------------------------------ IDX bombs


def gzip_idx(path: Path, dims: tuple[int, ...], body: bytes = b"", zeros: int = 0) -> Path:
    """A gzipped IDX file declaring ``dims`` and holding ``body`` then ``zeros`` zero bytes (written in chunks)."""
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body)
        for _ in range(zeros // (1 << 20)):
            f.write(bytes(1 << 20))
    return path


def test_an_idx_header_declaring_gigabytes_is_refused_before_its_body_is_read(tmp_path):
    # 20 million 28x28 items = 15.7 GB declared; 64 MB of zeros actually inside a ~65 kB gzip
    bomb = gzip_idx(tmp_path / "train-images-idx3-ubyte.gz", (20_000_000, 28, 28), zeros=64 << 20)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DatasetFileError) as err:
        read_idx(bomb, 3)
    message = str(err.value)
    assert str(bomb) in message and "20000000 x 28 x 28 = 15,680,000,000 bytes" in message
    assert f"above the {MAX_IDX_BYTES:,}-byte limit" in message and "truncated" not in message


def test_idx_dims_of_2_to_the_31_give_the_exact_size_not_a_numpy_overflow(tmp_path):
    bomb = gzip_idx(tmp_path / "x-idx3-ubyte.gz", (2**31, 2**31, 2**31))
    with pytest.raises(DatasetFileError, match=f"= {2**93:,} bytes") as err:
        read_idx(bomb, 3)
    assert str(bomb) in str(err.value)


def test_idx_items_larger_than_any_mnist_format_item_are_refused(tmp_path):
    big = gzip_idx(tmp_path / "x-idx3-ubyte.gz", (1, 300, 300), zeros=0)
    with pytest.raises(DatasetFileError, match="items of 300 x 300 pixels"):
        read_idx(big, 3)


def test_an_idx_file_with_trailing_bytes_after_its_declared_body_is_refused(tmp_path):
    path = write_file(tmp_path / "x-idx1-ubyte", idx_bytes(np.arange(5)) + b"extra")
    with pytest.raises(DatasetFileError, match="holds more than the 5 bytes") as err:
        read_idx(path, 1)
    assert str(path) in str(err.value)
    assert read_idx(write_file(tmp_path / "y-idx1-ubyte.gz", idx_bytes(np.arange(5))), 1).tolist() == [0, 1, 2, 3, 4]


def test_a_damaged_deflate_stream_is_refused_naming_the_file(tmp_path):
    raw = bytearray(gzip.compress(idx_bytes(np.arange(200) % 7)))
    raw[10] = 0xFF  # the first deflate block's type becomes the reserved 11: zlib.error, which is not an OSError
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetFileError, match="unreadable") as err:
        read_idx(path, 1)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------- checkpoint bombs


def wrapped(body: bytes, kind: str = "model") -> bytes:
    """``body`` behind a valid header and digest: what a hostile file that recomputed them looks like."""
    header = {"version": ck.VERSION, "kind": kind, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return ck.MAGIC + json.dumps(header).encode() + b"\n" + body


def deflated(payload: dict) -> bytes:
    """torch.save's zip of ``payload`` rewritten with deflated entries, which torch.load also reads."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def test_a_checkpoint_whose_payload_inflates_is_refused_before_torch_load(tmp_path, monkeypatch):
    body = deflated({"meta": "{}", "generator": {"w": torch.zeros(4_000_000)}, "heads": {}})  # 16 MB of zeros
    file = tmp_path / "m.ckpt"
    file.write_bytes(wrapped(body))
    assert file.stat().st_size < 100_000

    def loaded(*args, **kwargs):
        raise AssertionError("torch.load ran on a payload that inflates")

    monkeypatch.setattr(ck.torch, "load", loaded)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(file, "model")
    message = str(err.value)
    assert str(file) in message and "compression bomb" in message and "compressed entries" in message
    assert f"from {len(body):,} on disk" in message and "re-run the experiment" in message


def test_a_checkpoint_payload_that_is_not_a_zip_is_refused(tmp_path):
    file = tmp_path / "m.ckpt"
    file.write_bytes(wrapped(b"not a zip archive at all"))
    with pytest.raises(CheckpointError, match="not the zip archive torch.save writes") as err:
        read_checkpoint(file, "model")
    assert str(file) in str(err.value)


def test_checkpoints_written_by_write_checkpoint_still_load(tmp_path):
    payload = {"w": torch.arange(12.0).reshape(3, 4), "meta": "x", "nested": {"n": [1, None]}}
    write_checkpoint(tmp_path / "ok.ckpt", "model", payload)
    back = read_checkpoint(tmp_path / "ok.ckpt", "model")
    assert torch.equal(back["w"], payload["w"]) and back["nested"] == payload["nested"]


# ------------------------------------------------------------------------------------------------- empty datasets


def test_a_folder_whose_every_row_is_dropped_names_the_folder_and_the_fix(tmp_path):
    root = folder_listing(tmp_path / "faces", ["gone/0.png", "gone/1.png"])
    with pytest.raises(DatasetFileError) as err:
        read_folder(root, ["hair", "smile"], skip_bad=True)
    message = str(err.value)
    assert str(root) in message and "has no images (all 2 rows were dropped as bad)" in message
    assert "point data.root at the dataset's folder" in message


def test_idx_files_with_zero_items_are_refused_naming_the_folder(tmp_path):
    root = make_mnist(tmp_path / "mnist", n_train=0)
    with pytest.raises(DatasetFileError) as err:
        load_dataset(DataConfig(name="mnist_pairs", root=root), seed=0)
    assert f"{root}: the train files hold no items" in str(err.value)


def test_a_device_whose_test_share_is_empty_is_refused_naming_the_dataset_and_the_fix(tmp_path):
    root = coded_folder(tmp_path / "shop", 12, split=lambda k: "test" if k < 2 else "train")
    cfg = build_config(
        None,
        [
            "data.name=folder",
            f"data.root={json.dumps(str(root))}",
            'data.tasks=["hair", "smile"]',
            f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
            "data.image_size=8",
            "federated.num_devices=3",
        ],
    )
    train, test = device_datasets(cfg.data, cfg.federated, 1, cfg.train.seed)
    assert len(train) > 0 and len(test) == 1
    with pytest.raises(DatasetFileError) as err:
        device_datasets(cfg.data, cfg.federated, 2, cfg.train.seed)
    message = str(err.value)
    assert "device 2 of federated.num_devices=3 gets no test images" in message and str(root) in message
    assert "use fewer devices" in message


def device_folder(tmp_path: Path, n_train: int, *, compress: bool = False) -> Path:
    """A device folder as prepare-data writes it, with ``n_train`` train pairs (and 2 test pairs)."""
    folder = tmp_path / "device-0"
    images = torch.zeros(2, 1, 4, 4)
    labels = torch.zeros(2, 2, dtype=torch.long)
    from fl_metamorphosis.data.multitask import MultiTaskDataset, TaskSpec

    tasks = [TaskSpec("left", 2), TaskSpec("right", 2)]
    write_device_folder(folder, 0, MultiTaskDataset(images, labels, tasks), MultiTaskDataset(images, labels, tasks))
    arrays = {
        "train_images": np.zeros((n_train, 1, 4, 4), dtype=np.float32),
        "train_labels": np.zeros((n_train, 2), dtype=np.int64),
        "test_images": np.zeros((2, 1, 4, 4), dtype=np.float32),
        "test_labels": np.zeros((2, 2), dtype=np.int64),
    }
    (np.savez_compressed if compress else np.savez)(folder / PAIRS, **arrays)
    return folder


def test_a_device_folder_with_no_train_pairs_is_refused_naming_the_file_and_the_fix(tmp_path):
    folder = device_folder(tmp_path, 0)
    with pytest.raises(DeviceDataError) as err:
        read_device_folder(folder)
    assert f"{folder / PAIRS}: holds no train pairs" in str(err.value) and "prepare-data" in str(err.value)
    assert "unreadable" not in str(err.value)


def test_a_device_folder_whose_arrays_are_compressed_is_refused_before_they_are_unpacked(tmp_path):
    folder = device_folder(tmp_path, 1_000_000, compress=True)  # 64 MB of float32 zeros in a ~70 kB file
    assert (folder / PAIRS).stat().st_size < 200_000
    with pytest.raises(DeviceDataError, match="compressed members") as err:
        read_device_folder(folder)
    assert str(folder / PAIRS) in str(err.value)
    train, test = read_device_folder(device_folder(tmp_path, 3))
    assert (len(train), len(test)) == (3, 2)
