"""Readers of image datasets on disk (folder + CSV, CelebA, UTKFace) and the decoded-image cache.

Every fixture is a handful of tiny images written into tmp_path, each a solid colour (or a known pattern) so
decoded pixels can be checked against what was written.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_files import (
    BLUE,
    CELEBA_ATTRIBUTES,
    COLOURS,
    GREEN,
    JPEG_TOLERANCE,
    RED,
    WHITE,
    make_celeba,
    make_folder,
    make_utkface,
    solid,
    write_labels,
)
from PIL import Image

from fl_metamorphosis.data import image_cache, labelled_files
from fl_metamorphosis.data.celeba import read_celeba
from fl_metamorphosis.data.folder_layout import read_folder
from fl_metamorphosis.data.image_cache import decode_images
from fl_metamorphosis.data.labelled_files import DatasetFileError, LabelledFiles
from fl_metamorphosis.data.utkface import read_utkface

UTK_NAMES = [
    "UTKFace/25_0_3_20170119171211427.jpg.chip.jpg",
    "UTKFace/8_1_0_20170109204617245.jpg.chip.jpg",
    "61_0_1_20170117195405372.jpg",
    "30_1_4_20170117195405372.jpg",
    "17_0_2_20170117195405372.jpg",
]


# ---------------------------------------------------------------------------------------------------- folder


def test_folder_reader_returns_files_labels_classes_splits_and_identity(tmp_path):
    root = make_folder(tmp_path / "faces")
    data = read_folder(root, ["hair", "age"])
    assert data.root == root.resolve()
    assert [p.relative_to(data.root).as_posix() for p in data.files] == [
        "a/img0.jpg",
        "a/img1.png",
        "a/img2.jpg",
        "b/deep/img3.png",
        "b/deep/img4.jpg",
        "b/deep/img5.png",
    ]
    assert all(p.is_absolute() for p in data.files)
    assert [(t.name, t.num_classes) for t in data.tasks] == [("hair", 3), ("age", 3)]
    assert data.classes == [["black", "blond", "red"], ["9", "10", "30"]]  # ages sorted as numbers
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [[2, 1], [0, 0], [2, 2], [1, 0], [0, 1], [2, 2]]
    assert data.split.tolist() == ["train", "train", "test", "train", "test", "train"]
    assert data.identity.dtype == np.int64 and data.identity.tolist() == [7, 7, 12, 3, 3, 12]
    assert data.skipped == 0


def test_folder_class_ids_cover_the_whole_file_so_a_class_seen_only_in_test_still_has_an_id(tmp_path):
    root = make_folder(tmp_path / "faces")
    data = read_folder(root, ["hair"])
    train_ids = set(data.labels[data.split == "train", 0].tolist())
    assert data.classes[0] == ["black", "blond", "red"] and train_ids == {0, 1, 2}
    test_only = read_folder(root, ["age"])
    assert test_only.tasks[0].num_classes == 3  # every age, whichever split it appears in


def test_folder_without_split_or_identity_columns_leaves_splitting_to_the_caller(tmp_path):
    root = make_folder(tmp_path / "faces")
    write_labels(root, "file,hair\na/img0.jpg,red\na/img1.png,black\n")
    data = read_folder(root, ["hair"])
    assert data.split.tolist() == ["", ""] and data.identity is None


def test_folder_string_identities_become_int64_ids_and_custom_column_names_are_honoured(tmp_path):
    root = make_folder(tmp_path / "faces")
    (root / "meta.csv").write_text(
        "path,hair,fold,person\na/img0.jpg,red,valid,bob\na/img1.png,black,train,alice\na/img2.jpg,red,test,bob\n"
    )
    data = read_folder(
        root, ["hair"], labels_file="meta.csv", file_column="path", split_column="fold", identity_column="person"
    )
    assert data.identity.dtype == np.int64 and data.identity.tolist() == [1, 0, 1]
    assert data.split.tolist() == ["val", "train", "test"]  # validation rows are kept, marked "val"


def test_folder_labels_are_reread_each_time_not_cached(tmp_path):
    root = make_folder(tmp_path / "faces")
    assert read_folder(root, ["hair"]).labels[0, 0] == 2
    write_labels(root, (root / "labels.csv").read_text().replace("a/img0.jpg,red", "a/img0.jpg,black"))
    assert read_folder(root, ["hair"]).labels[0, 0] == 0


def test_folder_missing_root_names_the_folder_and_the_layout(tmp_path):
    with pytest.raises(DatasetFileError, match=r"nowhere.*does not exist.*labels\.csv"):
        read_folder(tmp_path / "nowhere", ["hair"])


def test_folder_missing_labels_file_names_the_file(tmp_path):
    (tmp_path / "faces").mkdir()
    with pytest.raises(DatasetFileError, match=r"labels\.csv.*does not exist.*header row"):
        read_folder(tmp_path / "faces", ["hair"])


def test_folder_missing_task_column_names_it_and_lists_the_header(tmp_path):
    root = make_folder(tmp_path / "faces")
    with pytest.raises(DatasetFileError, match=r"no column 'eyes'.*\['file', 'hair', 'age', 'split', 'identity'\]"):
        read_folder(root, ["eyes"])


def test_folder_missing_file_column_names_it(tmp_path):
    root = make_folder(tmp_path / "faces")
    with pytest.raises(DatasetFileError, match=r"no column 'files' \(did you mean 'file'\?\)"):
        read_folder(root, ["hair"], file_column="files")


@pytest.mark.parametrize(
    ("labels", "tasks", "message"),
    [
        pytest.param("file,hair\na/img0.jpg,red\na/img1.png,\n", ["hair"],
                     r"labels\.csv line 3: column 'hair' is empty", id="empty-cell-names-line-and-column"),
        pytest.param("file,hair,age\na/img0.jpg,red,3\na/img1.png,black\n", ["hair"],
                     r"line 3: has 2 cells but the header has 3 columns", id="too-few-cells-names-the-line"),
        pytest.param("file,hair,glasses\na/img0.jpg,red,no\na/img1.png,black,no\n", ["hair", "glasses"],
                     r"task 'glasses'.*1 class\(es\) \['no'\].*at least 2", id="single-class-task-is-rejected"),
        pytest.param("file,hair\n", ["hair"], r"faces.*has no images", id="header-but-no-rows-is-empty"),
        # a vocabulary mistake, not a bad row: never skipped, even with skip_bad
        pytest.param("file,hair,split\na/img0.jpg,red,train\na/img1.png,black,holdout\n", ["hair"],
                     r"line 3: 'split' is 'holdout'; accepted values are train, test, val",
                     id="unknown-split-names-line-value-and-accepted-ones"),
    ],
)  # fmt: skip
def test_folder_labels_with_a_mistake_are_refused_naming_it(tmp_path, labels, tasks, message):
    root = make_folder(tmp_path / "faces")
    write_labels(root, labels)
    with pytest.raises(DatasetFileError, match=message):
        read_folder(root, tasks, skip_bad="holdout" in labels)


def test_folder_image_listed_but_missing_names_the_path(tmp_path):
    root = make_folder(tmp_path / "faces")
    (root / "a" / "img1.png").unlink()
    with pytest.raises(DatasetFileError, match=r"img1\.png.*missing on disk.*skip_bad=True"):
        read_folder(root, ["hair"])


def test_folder_skip_bad_drops_missing_images_and_malformed_rows_and_counts_them(tmp_path, caplog):
    root = make_folder(tmp_path / "faces")
    (root / "a" / "img1.png").unlink()
    text = (root / "labels.csv").read_text().replace("a/img2.jpg,red,", "a/img2.jpg,,")
    write_labels(root, text + "too,few\n")
    with caplog.at_level(logging.WARNING, logger=labelled_files.__name__):
        data = read_folder(root, ["hair", "age"], skip_bad=True)
    assert data.skipped == 3
    assert [p.name for p in data.files] == ["img0.jpg", "img3.png", "img4.jpg", "img5.png"]
    assert data.classes[0] == ["black", "blond", "red"]  # the missing image's row still counts for the ids
    assert data.labels[:, 0].tolist() == [2, 1, 0, 2] and data.identity.tolist() == [7, 3, 3, 12]
    assert "dropped 3 of 7 rows" in caplog.text


def test_folder_duplicate_task_names_are_rejected(tmp_path):
    root = make_folder(tmp_path / "faces")
    with pytest.raises(DatasetFileError, match=r"\['hair'\] are named more than once"):
        read_folder(root, ["hair", "age", "hair"])


# ---------------------------------------------------------------------------------------------------- celeba


def test_celeba_reader_returns_attributes_as_no_yes_with_official_split_and_identity(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    data = read_celeba(root, ["Male", "Smiling"])
    assert [p.name for p in data.files] == [f"{k:06d}.jpg" for k in range(1, 7)]
    assert all(p.parent == root.resolve() / "img_align_celeba" for p in data.files)
    assert [(t.name, t.num_classes) for t in data.tasks] == [("Male", 2), ("Smiling", 2)]
    assert data.classes == [["no", "yes"], ["no", "yes"]]
    male, smiling = CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Smiling")
    expected = [[int((male + k) % 2 == 0), int((smiling + k) % 2 == 0)] for k in range(6)]
    assert data.labels.tolist() == expected
    assert data.split.tolist() == ["train", "val", "test", "train", "val", "test"]
    assert data.identity.tolist() == [100, 100, 101, 101, 102, 102]


def test_celeba_images_nested_twice_as_kaggle_ships_them_are_found(tmp_path):
    root = make_celeba(tmp_path / "celeba", nested=True, identity=False)
    data = read_celeba(root, ["Young"])
    assert data.files[0].parent == root.resolve() / "img_align_celeba" / "img_align_celeba"
    assert data.identity is None


def test_celeba_unknown_attribute_lists_the_valid_names_and_suggests_the_closest(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    with pytest.raises(DatasetFileError, match=r"unknown task 'Smilling'.*Wavy_Hair.*did you mean 'Smiling'"):
        read_celeba(root, ["Male", "Smilling"])


def test_celeba_missing_partition_file_is_an_error(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"list_eval_partition\.txt.*does not exist.*CelebA's own layout"):
        read_celeba(root, ["Male"])


def test_celeba_missing_images_folder_names_it(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(DatasetFileError, match=r"img_align_celeba.*does not exist"):
        read_celeba(root, ["Male"])


def test_celeba_count_on_line_one_must_match_the_rows(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    attr = root / "list_attr_celeba.txt"
    attr.write_text("7" + attr.read_text()[1:])
    with pytest.raises(DatasetFileError, match=r"list_attr_celeba\.txt line 1: says 7 images but .* 6 rows"):
        read_celeba(root, ["Male"])


@pytest.mark.parametrize(
    ("bad_row", "line"),
    [("000003.jpg " + " ".join(["1"] * 39), 5), ("000002.jpg " + " ".join(["1"] * 39 + ["0"]), 4)],
    ids=["39 values", "a zero"],
)
def test_celeba_attribute_row_without_40_values_of_minus_one_or_one_names_the_line(tmp_path, bad_row, line):
    root = make_celeba(tmp_path / "celeba")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[line - 1] = bad_row
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFileError, match=rf"list_attr_celeba\.txt line {line}: expected .* 40 values of -1 or 1"):
        read_celeba(root, ["Male"], skip_bad=True)


def test_celeba_partition_value_outside_0_1_2_names_the_line(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 5\n")
    with pytest.raises(DatasetFileError, match=r"list_eval_partition\.txt line 2"):
        read_celeba(root, ["Male"])


def test_celeba_missing_image_is_an_error_unless_skip_bad_drops_and_counts_it(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    (root / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(DatasetFileError, match=r"000004\.jpg.*missing on disk"):
        read_celeba(root, ["Male"])
    data = read_celeba(root, ["Male"], skip_bad=True)
    assert data.skipped == 1 and len(data.files) == 5 and "000004.jpg" not in [p.name for p in data.files]
    assert data.split.tolist() == ["train", "val", "test", "val", "test"]


# ---------------------------------------------------------------------------------------------------- utkface


def test_utkface_reader_parses_gender_race_and_bucketed_age_from_file_names(tmp_path):
    root = make_utkface(tmp_path / "utk", UTK_NAMES)
    data = read_utkface(root, ["age", "gender", "race"], age_buckets=[0, 18, 30, 45, 60])
    assert [p.name for p in data.files] == sorted(Path(n).name for n in UTK_NAMES)  # sorted by name, subfolder too
    assert data.classes == [
        ["0-17", "18-29", "30-44", "45-59", "60+"],
        ["male", "female"],
        ["White", "Black", "Asian", "Indian", "Others"],
    ]
    assert [t.num_classes for t in data.tasks] == [5, 2, 5]
    # 17_0_2, 25_0_3, 30_1_4, 61_0_1, 8_1_0
    assert data.labels.tolist() == [[0, 0, 2], [1, 0, 3], [2, 1, 4], [4, 0, 1], [0, 1, 0]]
    assert data.split.tolist() == [""] * 5 and data.identity is None


def test_utkface_unparseable_file_name_names_the_file_and_the_pattern(tmp_path):
    root = make_utkface(tmp_path / "utk", [*UTK_NAMES, "UTKFace/39_1_20170116174525125.jpg.chip.jpg"])
    with pytest.raises(DatasetFileError, match=r"39_1_20170116174525125\.jpg\.chip\.jpg.*age_gender_race_date\.jpg"):
        read_utkface(root, ["gender"], age_buckets=[0, 30])


def test_utkface_skip_bad_drops_and_counts_unparseable_names(tmp_path):
    root = make_utkface(tmp_path / "utk", [*UTK_NAMES, "39_1_20170116174525125.jpg.chip.jpg", "UTKFace/x.png"])
    data = read_utkface(root, ["gender"], age_buckets=[0, 30], skip_bad=True)
    assert data.skipped == 2 and len(data.files) == 5


def test_utkface_age_below_the_first_bucket_edge_is_an_error(tmp_path):
    root = make_utkface(tmp_path / "utk", UTK_NAMES)
    with pytest.raises(DatasetFileError, match=r"8_1_0_.*age 8, below the first age_buckets edge 10"):
        read_utkface(root, ["age"], age_buckets=[10, 30], skip_bad=True)


@pytest.mark.parametrize(
    ("buckets", "message"),
    [([0, 30, 18], r"strictly ascending"), ([0], r"1 age class\(es\).*at least 2")],
    ids=["descending", "one edge"],
)
def test_utkface_bad_age_buckets_are_rejected(tmp_path, buckets, message):
    root = make_utkface(tmp_path / "utk", UTK_NAMES)
    with pytest.raises(DatasetFileError, match=message):
        read_utkface(root, ["age"], age_buckets=buckets)


def test_utkface_unknown_task_suggests_the_closest_name(tmp_path):
    root = make_utkface(tmp_path / "utk", UTK_NAMES)
    with pytest.raises(DatasetFileError, match=r"unknown task 'gendre'.*gender, race, age.*did you mean 'gender'"):
        read_utkface(root, ["gendre"], age_buckets=[0, 30])


def test_utkface_folder_without_images_is_an_empty_dataset(tmp_path):
    (tmp_path / "utk" / "UTKFace").mkdir(parents=True)
    with pytest.raises(DatasetFileError, match=r"utk.*has no images.*age_gender_race_date"):
        read_utkface(tmp_path / "utk", ["race"], age_buckets=[0, 30])


# ---------------------------------------------------------------------------------------------------- decode


@pytest.fixture
def folder_data(tmp_path) -> LabelledFiles:
    return read_folder(make_folder(tmp_path / "faces"), ["hair"])


def test_decode_gives_uint8_chw_images_of_the_written_colours_in_row_order(folder_data, tmp_path):
    images, kept = decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert images.dtype == np.uint8 and images.shape == (6, 3, 8, 8)
    assert kept.dtype == np.int64 and kept.tolist() == list(range(6))
    for i, colour in enumerate(COLOURS):
        tolerance = 0 if folder_data.files[i].suffix == ".png" else JPEG_TOLERANCE
        assert np.abs(images[i].astype(int) - np.array(colour)[:, None, None]).max() <= tolerance


def test_decode_in_grey_gives_one_channel_of_luminance(folder_data, tmp_path):
    images, _ = decode_images(folder_data, size=5, colour="grey", cache_dir=tmp_path / "cache")
    assert images.shape == (6, 1, 5, 5)
    luma = [round((r * 299 + g * 587 + b * 114) / 1000) for r, g, b in COLOURS]
    assert np.abs(images[:, 0].reshape(6, -1).astype(int) - np.array(luma)[:, None]).max() <= JPEG_TOLERANCE


def test_decode_centre_crops_a_wide_image_to_its_middle(tmp_path):
    root = tmp_path / "wide"
    stripes = np.zeros((10, 30, 3), dtype=np.uint8)
    stripes[:, :10], stripes[:, 10:20], stripes[:, 20:] = RED, GREEN, BLUE
    root.mkdir()
    Image.fromarray(stripes).save(root / "stripes.png")
    solid(root / "plain.png", WHITE)
    write_labels(root, "file,kind\nstripes.png,a\nplain.png,b\n")
    images, _ = decode_images(read_folder(root, ["kind"]), size=6, colour="rgb", cache_dir=tmp_path / "cache")
    # Only the green middle third survives the crop; the bilinear filter's support reaches a little past the crop
    # box, so the outermost columns are tinted by their neighbours but stay green.
    assert (images[0][:, :, 1:-1] == np.array(GREEN, dtype=np.uint8)[:, None, None]).all()
    assert (images[0].argmax(axis=0) == 1).all()


def test_decode_second_call_reads_the_cache_without_opening_any_image(folder_data, tmp_path, monkeypatch):
    first, kept = decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    first = np.array(first)

    def no_open(*args, **kwargs):
        raise AssertionError("an image was opened although the cache is valid")

    monkeypatch.setattr(Image, "open", no_open)
    second, kept_again = decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(kept_again, kept)
    (folder,) = (tmp_path / "cache").iterdir()  # one folder, no temporary leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "kept.npy", "meta.json"]
    assert '"count": 6' in (folder / "meta.json").read_text()


def test_decode_cache_survives_relabelling_because_labels_are_not_cached(folder_data, tmp_path, monkeypatch):
    decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    write_labels(folder_data.root, (folder_data.root / "labels.csv").read_text().replace(",red,", ",auburn,"))
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("cache not reused"))
    relabelled = read_folder(folder_data.root, ["hair"])
    decode_images(relabelled, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert relabelled.classes[0] == ["auburn", "black", "blond"]


def test_decode_cache_is_invalidated_when_one_image_is_replaced(folder_data, tmp_path):
    cache = tmp_path / "cache"
    before, _ = decode_images(folder_data, size=8, colour="rgb", cache_dir=cache)
    assert before[1, 0, 0, 0] == GREEN[0]
    target = folder_data.files[1]
    stat = target.stat()
    solid(target, BLUE)  # same size in bytes or not, the mtime moves on
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after, _ = decode_images(folder_data, size=8, colour="rgb", cache_dir=cache)
    assert tuple(after[1, :, 0, 0]) == BLUE
    assert len(list(cache.iterdir())) == 2


def test_decode_settings_each_get_their_own_cache_folder(folder_data, tmp_path):
    cache = tmp_path / "cache"
    decode_images(folder_data, size=8, colour="rgb", cache_dir=cache)
    decode_images(folder_data, size=4, colour="rgb", cache_dir=cache)
    decode_images(folder_data, size=4, colour="grey", cache_dir=cache)
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 3 and all(n.startswith("faces-") for n in names)


def test_decode_uses_the_other_process_cache_when_it_wins_the_race(folder_data, tmp_path, monkeypatch):
    decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "winner")
    (winner,) = (tmp_path / "winner").iterdir()
    real_replace = os.replace

    def lose_the_race(src, dst):
        shutil.copytree(winner, dst)  # the other process renames its folder in just before us
        real_replace(src, dst)

    monkeypatch.setattr(image_cache.os, "replace", lose_the_race)
    images, kept = decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert images.shape == (6, 3, 8, 8) and kept.tolist() == list(range(6))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [winner.name]  # our temporary folder is gone


def test_decode_rebuilds_a_damaged_cache(folder_data, tmp_path):
    cache = tmp_path / "cache"
    decode_images(folder_data, size=8, colour="rgb", cache_dir=cache)
    (folder,) = cache.iterdir()
    (folder / "kept.npy").unlink()
    images, kept = decode_images(folder_data, size=8, colour="rgb", cache_dir=cache)
    assert images.shape == (6, 3, 8, 8) and (folder / "kept.npy").exists()


def test_decode_unreadable_image_names_the_file(folder_data, tmp_path):
    folder_data.files[2].write_bytes(b"not an image at all")
    with pytest.raises(DatasetFileError, match=r"img2\.jpg.*unreadable.*skip_bad=True"):
        decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written cache left behind


def test_decode_skip_bad_drops_unreadable_images_counts_and_warns(folder_data, tmp_path, caplog):
    folder_data.files[2].write_bytes(b"not an image at all")
    folder_data.files[4].write_bytes(folder_data.files[4].read_bytes()[:40])  # a truncated JPEG
    with caplog.at_level(logging.WARNING, logger=image_cache.__name__):
        images, kept = decode_images(folder_data, size=8, colour="rgb", cache_dir=tmp_path / "cache", skip_bad=True)
    assert kept.tolist() == [0, 1, 3, 5] and images.shape == (4, 3, 8, 8)
    assert tuple(images[3, :, 0, 0]) == COLOURS[5]  # rows line up with kept after dropping
    assert "2 of 6 images were unreadable" in caplog.text
    (folder,) = (tmp_path / "cache").iterdir()
    assert '"skipped": 2' in (folder / "meta.json").read_text()


def test_decode_logs_progress_for_long_decodes(folder_data, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(image_cache, "_PROGRESS_OVER", 3)  # instead of writing 2,000 images
    with caplog.at_level(logging.INFO, logger=image_cache.__name__):
        decode_images(folder_data, size=4, colour="grey", cache_dir=tmp_path / "cache")
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding images")]
    assert progress[-1] == "decoding images: 6/6 (100%)" and len(progress) == 6


def test_decode_rejects_an_unknown_colour_and_a_bad_size(folder_data, tmp_path):
    with pytest.raises(DatasetFileError, match=r"colour 'rgba'"):
        decode_images(folder_data, size=8, colour="rgba", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetFileError, match=r"image size 0"):
        decode_images(folder_data, size=0, colour="rgb", cache_dir=tmp_path / "cache")
