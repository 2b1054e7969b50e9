"""Multi-attribute image datasets that a user already has on local disk: readers and a decoded-image cache.

Three layouts are read: a generic ``folder`` (images plus a CSV with one column per task), CelebA as its
authors ship it, and UTKFace (labels encoded in the file names). A reader only lists files and labels; it
never opens an image, so it is cheap and can be re-run on every start. Every reader checks the layout
up front and raises :class:`DatasetFileError` naming the path or value and the layout it expected: a
dataset that is half-read or silently shrunk would bias every experiment built on it without anyone
noticing. Rows are only ever dropped when the caller asks for it (``skip_bad=True``), and then counted.

:func:`decode_images` turns the listed files into one ``uint8 [N, C, size, size]`` array. It is cached
on disk because federated rounds re-read the same images many times and decoding JPEGs would then
dominate each round; the cache is a ``.npy`` opened memory-mapped, so clients that share a machine
share the page cache instead of each holding a copy. Its folder is named by a hash over each file's
path, byte size and modification time (plus the decode settings), so replacing an image invalidates
it without anyone having to remember to clear a cache. Labels are deliberately not cached: they are
cheap to re-read and the choice of tasks changes between experiments, while the pixels do not.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from .multitask import TaskSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Part of the cache key: bump it whenever the decode pipeline changes, so old caches are not reused.
_CACHE_VERSION = 1
_CHUNK = 1024  # images decoded per batch of thread-pool work: bounds the decoded arrays held in flight
_PROGRESS_OVER = 2000  # decodes of more files than this log their progress


class DatasetFileError(ValueError):
    """A dataset on disk that is missing or not of the expected layout; the message names the path or value and the
    expected layout."""


@dataclass(frozen=True, eq=False)  # eq=False: the arrays make field-wise equality ambiguous
class LabelledFiles:
    """The images of a dataset on disk and their labels, one row per image (nothing decoded yet)."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    tasks: list[TaskSpec]
    classes: list[list[str]]
    split: np.ndarray
    identity: np.ndarray | None
    skipped: int = 0


# --------------------------------------------------------------------------------------------------- shared checks


def _check_root(root: Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFileError(f"dataset folder {str(root)!r} does not exist or is not a folder; expected {layout}")
    return root.resolve()


def _check_tasks(tasks: Sequence[str], valid: Iterable[str], where: str, layout: str) -> list[str]:
    tasks, valid = list(tasks), list(valid)
    if not tasks:
        raise DatasetFileError(f"no tasks given for {where}; name at least one of: {', '.join(valid)}")
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise DatasetFileError(f"tasks {duplicates} are named more than once; name each task once ({layout})")
    for task in tasks:
        if task not in valid:
            raise DatasetFileError(_unknown_task_message(task, valid, where))
    return tasks


def _unknown_task_message(task: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(task, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown task {task!r} for {where}; valid names are: {', '.join(valid)}{hint}"


def _missing_files(files: list[Path]) -> list[bool]:
    """Whether each file is missing: one directory listing per folder instead of one stat per file (CelebA has
    200k images in one folder)."""
    listings: dict[Path, set[str]] = {}
    missing = []
    for path in files:
        if path.parent not in listings:
            try:
                listings[path.parent] = set(os.listdir(path.parent))
            except OSError:
                listings[path.parent] = set()
        missing.append(path.name not in listings[path.parent])
    return missing


def _drop_missing(files: list[Path], rows: list, skip_bad: bool, layout: str) -> tuple[list[Path], list, int]:
    missing = _missing_files(files)
    if not skip_bad:
        for path, gone in zip(files, missing, strict=True):
            if gone:
                raise DatasetFileError(
                    f"image {str(path)!r} is listed but missing on disk; expected {layout} "
                    "(restore the file, remove its row, or pass skip_bad=True to drop missing images)"
                )
    keep = [i for i, gone in enumerate(missing) if not gone]
    return [files[i] for i in keep], [rows[i] for i in keep], len(files) - len(keep)


def _warn_skipped(skipped: int, total: int, what: str) -> None:
    if skipped:
        logger.warning("%s: dropped %d of %d rows (skip_bad=True)", what, skipped, total)


def _finish(
    root: Path,
    files: list[Path],
    labels: list[list[int]],
    tasks: list[TaskSpec],
    classes: list[list[str]],
    split: list[str],
    identity: list[int] | None,
    skipped: int,
    layout: str,
) -> LabelledFiles:
    if not files:
        reason = f" (all {skipped} rows were dropped as bad)" if skipped else ""
        raise DatasetFileError(f"dataset {str(root)!r} has no images{reason}; expected {layout}")
    for task, names in zip(tasks, classes, strict=True):
        if task.num_classes < 2:
            raise DatasetFileError(
                f"task {task.name!r} of {str(root)!r} has {task.num_classes} class(es) {names}; "
                "a task needs at least 2 classes to learn anything"
            )
    return LabelledFiles(
        root=root,
        files=files,
        labels=np.asarray(labels, dtype=np.int64).reshape(len(files), len(tasks)),
        tasks=tasks,
        classes=classes,
        split=np.asarray(split, dtype=str),
        identity=None if identity is None else np.asarray(identity, dtype=np.int64),
        skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------------------- folder

_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}


def _folder_layout(labels_file: str, file_column: str) -> str:
    return (
        f"a folder holding the images (any subfolders) and a CSV {labels_file!r} with a header row, "
        f"a {file_column!r} column (image path relative to the folder) and one column per task"
    )


def _read_csv(path: Path, layout: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) rows; blank lines are ignored."""
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in the first column name.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if row]
    except FileNotFoundError:
        raise DatasetFileError(f"label file {str(path)!r} does not exist; expected {layout}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetFileError(f"{path}: not a readable UTF-8 CSV ({err}); expected {layout}") from None
    if not header:
        raise DatasetFileError(f"{path}: empty file, no header row; expected {layout}")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DatasetFileError(f"{path}: header names columns {duplicates} more than once; name each column once")
    return header, rows


def _class_names(values: Iterable[str]) -> list[str]:
    """Sorted unique values: numerically when all are integers (so "10" comes after "9"), else as strings."""
    unique = set(values)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _identity_ids(values: list[str]) -> list[int]:
    """Integer ids as they are; otherwise strings numbered in sorted order (only equality matters for partitioning)."""
    try:
        return [int(v) for v in values]
    except ValueError:
        numbers = {name: i for i, name in enumerate(sorted(set(values)))}
        return [numbers[v] for v in values]


def _split_value(value: str, line: int, path: Path, split_column: str) -> str:
    split = _SPLITS.get(value.lower())
    if split is None:
        raise DatasetFileError(
            f"{path} line {line}: {split_column!r} is {value!r}; accepted values are "
            f"{', '.join(_SPLITS)} (any case), or drop the column to let the caller split"
        )
    return split


def read_folder(
    root: Path,
    tasks: list[str],
    *,
    labels_file: str = "labels.csv",
    file_column: str = "file",
    split_column: str = "split",
    identity_column: str = "identity",
    skip_bad: bool = False,
) -> LabelledFiles:
    """A folder of images labelled by a CSV: one row per image, one column per task (any strings as classes).

    Class ids are the sorted unique values over the whole file, so they agree between train and test rows.
    With ``skip_bad``, rows with a missing image or a malformed row (wrong number of cells, an empty cell)
    are dropped and counted in ``skipped``; without it they raise :class:`DatasetFileError`.
    """
    layout = _folder_layout(labels_file, file_column)
    root = _check_root(root, layout)
    path = root / labels_file
    header, rows = _read_csv(path, layout)
    for column in (file_column, *tasks):
        if column not in header:
            close = difflib.get_close_matches(column, header, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DatasetFileError(
                f"{path}: no column {column!r}{hint}; the header has columns {header}; expected {layout}"
            )
    tasks = _check_tasks(tasks, header, str(path), layout)
    wanted = [file_column, *tasks]
    wanted += [c for c in (split_column, identity_column) if c in header and c not in wanted]
    records, bad = _folder_records(path, header, rows, wanted, skip_bad)
    # Class ids come from every well-formed row, including those whose image is missing: the ids must not
    # depend on which files happen to be present.
    classes = [_class_names(r[task] for _, r in records) for task in tasks]
    splits = [
        _split_value(r[split_column], line, path, split_column) if split_column in header else "" for line, r in records
    ]
    identities = _identity_ids([r[identity_column] for _, r in records]) if identity_column in header else None
    files = [root / r[file_column] for _, r in records]
    ids = [{name: i for i, name in enumerate(names)} for names in classes]
    labels = [[ids[t][r[task]] for t, task in enumerate(tasks)] for _, r in records]
    keep = list(range(len(records)))
    files, keep, missing = _drop_missing(files, keep, skip_bad, layout)
    _warn_skipped(bad + missing, len(rows), str(path))
    return _finish(
        root,
        files,
        [labels[i] for i in keep],
        [TaskSpec(task, len(names)) for task, names in zip(tasks, classes, strict=True)],
        classes,
        [splits[i] for i in keep],
        None if identities is None else [identities[i] for i in keep],
        bad + missing,
        layout,
    )


def _folder_records(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], wanted: list[str], skip_bad: bool
) -> tuple[list[tuple[int, dict[str, str]]], int]:
    """Well-formed rows as (line, {column: cell}) for the wanted columns, and the number of malformed rows dropped."""
    records, bad = [], 0
    for line, cells in rows:
        problem = None
        if len(cells) != len(header):
            problem = f"has {len(cells)} cells but the header has {len(header)} columns"
        else:
            record = dict(zip(header, cells, strict=True))
            empty = next((c for c in wanted if not record[c]), None)
            if empty is not None:
                problem = f"column {empty!r} is empty"
        if problem is None:
            records.append((line, {c: record[c] for c in wanted}))
        elif skip_bad:
            bad += 1
        else:
            raise DatasetFileError(
                f"{path} line {line}: {problem}; fill in every cell of columns {wanted}, "
                "remove the row, or pass skip_bad=True to drop malformed rows"
            )
    return records, bad


# ---------------------------------------------------------------------------------------------------------- celeba

_CELEBA_LAYOUT = (
    "CelebA's own layout: img_align_celeba/ (the images), list_attr_celeba.txt (line 1 the count, line 2 the "
    "attribute names, then one 'name.jpg -1 1 ...' row per image), list_eval_partition.txt ('name.jpg 0|1|2') "
    "and optionally identity_CelebA.txt ('name.jpg person_id')"
)
_CELEBA_SPLITS = {"0": "train", "1": "val", "2": "test"}


def _celeba_images_dir(root: Path) -> Path:
    """img_align_celeba/, or img_align_celeba/img_align_celeba/ when that is where the images are (Kaggle's zip)."""
    outer = root / "img_align_celeba"
    nested = outer / "img_align_celeba"
    if nested.is_dir() and not _has_images(outer):
        return nested
    if not outer.is_dir():
        raise DatasetFileError(f"images folder {str(outer)!r} does not exist; expected {_CELEBA_LAYOUT}")
    return outer


def _has_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file() for e in entries)
    except OSError:
        return False


def _celeba_lines(path: Path, required: bool = True) -> list[tuple[int, list[str]]] | None:
    """(line number, whitespace-split fields) of the non-blank lines, or None when an optional file is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not required:
            return None
        hint = ""
        if path.with_suffix(".csv").exists():
            hint = f" (found {path.with_suffix('.csv').name}, Kaggle's CSV export: the original text file is needed)"
        raise DatasetFileError(f"{str(path)!r} does not exist{hint}; expected {_CELEBA_LAYOUT}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(f"{path}: unreadable ({err}); expected {_CELEBA_LAYOUT}") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _celeba_attributes(path: Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Attribute names and (image name, -1/1 values) rows, checked against the count on line 1."""
    lines = _celeba_lines(path)
    if len(lines) < 2 or lines[0][0] != 1 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise DatasetFileError(f"{path} line 1: expected the number of images, then a line of attribute names")
    count, names, rows = int(lines[0][1][0]), lines[1][1], []
    for line, fields in lines[2:]:
        if len(fields) != len(names) + 1 or not set(fields[1:]) <= {"-1", "1"}:
            raise DatasetFileError(
                f"{path} line {line}: expected an image name and {len(names)} values of -1 or 1 "
                f"(one per attribute on line 2), got {' '.join(fields)[:200]!r}"
            )
        rows.append((fields[0], fields[1:]))
    if count != len(rows):
        raise DatasetFileError(
            f"{path} line 1: says {count} images but the file has {len(rows)} rows; the file is truncated or edited"
        )
    return names, rows


def _celeba_mapping(path: Path, lines: list[tuple[int, list[str]]], accept: str) -> dict[str, str]:
    """Image name -> value for a two-column file; values must match the ``accept`` regex."""
    mapping = {}
    for line, fields in lines:
        if len(fields) != 2 or not re.fullmatch(accept, fields[1]):
            raise DatasetFileError(
                f"{path} line {line}: expected 'image.jpg value' with value matching {accept!r}, "
                f"got {' '.join(fields)[:200]!r}"
            )
        mapping[fields[0]] = fields[1]
    return mapping


def _lookup(mapping: dict[str, str], image: str, path: Path) -> str:
    try:
        return mapping[image]
    except KeyError:
        raise DatasetFileError(f"{path}: no row for image {image!r}; expected one row per image") from None


def read_celeba(root: Path, tasks: list[str], *, skip_bad: bool = False) -> LabelledFiles:
    """CelebA in its authors' layout; tasks are attribute names (e.g. "Male", "Smiling"), classes "no"/"yes".

    The official partition gives the split (0 train, 1 val, 2 test); ``identity_CelebA.txt``, when present,
    gives the person id. With ``skip_bad``, rows whose image is missing are dropped and counted; the text
    files themselves must be intact either way (they are the published dataset, not user input).
    """
    root = _check_root(root, _CELEBA_LAYOUT)
    images = _celeba_images_dir(root)
    attr_path = root / "list_attr_celeba.txt"
    names, rows = _celeba_attributes(attr_path)
    tasks = _check_tasks(tasks, names, str(attr_path), _CELEBA_LAYOUT)
    partition_path = root / "list_eval_partition.txt"
    partition = _celeba_mapping(partition_path, _celeba_lines(partition_path), "[012]")
    identity_path = root / "identity_CelebA.txt"
    identity_lines = _celeba_lines(identity_path, required=False)
    identities = None if identity_lines is None else _celeba_mapping(identity_path, identity_lines, r"-?\d+")

    columns = [names.index(task) for task in tasks]
    files = [images / image for image, _ in rows]
    files, kept, missing = _drop_missing(files, rows, skip_bad, _CELEBA_LAYOUT)
    _warn_skipped(missing, len(rows), str(attr_path))
    return _finish(
        root,
        files,
        [[int(values[c] == "1") for c in columns] for _, values in kept],
        [TaskSpec(task, 2) for task in tasks],
        [["no", "yes"] for _ in tasks],
        [_CELEBA_SPLITS[_lookup(partition, image, partition_path)] for image, _ in kept],
        None if identities is None else [int(_lookup(identities, image, identity_path)) for image, _ in kept],
        missing,
        _CELEBA_LAYOUT,
    )


# --------------------------------------------------------------------------------------------------------- utkface

_UTKFACE_PATTERN = re.compile(r"(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_\d+\..+", re.IGNORECASE)
_UTKFACE_EXPECTED = "age_gender_race_date.jpg (e.g. 25_0_3_20170119171211427.jpg.chip.jpg)"
_UTKFACE_LAYOUT = (
    f"UTKFace: image files named {_UTKFACE_EXPECTED}, gender 0 male / 1 female, race 0-4, in the folder "
    "or one level of subfolders (e.g. UTKFace/)"
)
_UTKFACE_TASKS = ("gender", "race", "age")
_GENDERS = ["male", "female"]
_RACES = ["White", "Black", "Asian", "Indian", "Others"]


def _age_classes(edges: Sequence[int]) -> list[str]:
    """Bucket names for ascending edges: [0, 18, 30] -> "0-17", "18-29", "30+"."""
    edges = list(edges)
    if any(not isinstance(e, int | np.integer) or isinstance(e, bool) for e in edges) or any(
        b <= a for a, b in zip(edges, edges[1:], strict=False)
    ):
        raise DatasetFileError(
            f"age_buckets {edges} must be strictly ascending integer edges, e.g. [0, 18, 30, 45, 60]"
        )
    if len(edges) < 2:
        raise DatasetFileError(
            f"age_buckets {edges} gives {len(edges)} age class(es); a task needs at least 2, so give at least 2 edges "
            "(e.g. [0, 18, 30, 45, 60])"
        )
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def _utkface_images(root: Path) -> list[Path]:
    """Image files in root and its immediate subfolders, sorted by name; hidden files (macOS' "._x.jpg") ignored."""
    found = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        found += [
            p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and p.name[0] != "."
        ]
    return sorted(found, key=lambda p: (p.name, str(p)))


def read_utkface(root: Path, tasks: list[str], *, age_buckets: list[int], skip_bad: bool = False) -> LabelledFiles:
    """UTKFace, labelled by its file names; tasks among "gender", "race" and "age" (bucketed by ``age_buckets``).

    There is no official split or identity, so ``split`` is "" (the caller splits) and ``identity`` None.
    With ``skip_bad``, files whose names do not parse are dropped and counted; ages below the first bucket
    edge are always an error, because that is a wrong ``age_buckets`` rather than a bad file.
    """
    root = _check_root(root, _UTKFACE_LAYOUT)
    tasks = _check_tasks(tasks, _UTKFACE_TASKS, "UTKFace", _UTKFACE_LAYOUT)
    classes = {"gender": _GENDERS, "race": _RACES}
    if "age" in tasks:
        classes["age"] = _age_classes(age_buckets)
    edges = np.asarray(age_buckets if "age" in tasks else [0], dtype=np.int64)

    candidates = _utkface_images(root)
    files, labels, skipped = [], [], 0
    for path in candidates:
        match = _UTKFACE_PATTERN.fullmatch(path.name)
        if match is None:
            if skip_bad:
                skipped += 1
                continue
            raise DatasetFileError(
                f"file name {str(path)!r} does not parse; expected {_UTKFACE_EXPECTED} "
                "(rename or remove it, or pass skip_bad=True to drop such files)"
            )
        age = int(match["age"])
        if "age" in tasks and age < edges[0]:
            raise DatasetFileError(
                f"{str(path)!r} has age {age}, below the first age_buckets edge {int(edges[0])}; "
                "start age_buckets at 0 (or at the youngest age)"
            )
        values = {"gender": int(match["gender"]), "race": int(match["race"])}
        values["age"] = int(np.searchsorted(edges, age, side="right")) - 1
        files.append(path)
        labels.append([values[task] for task in tasks])
    _warn_skipped(skipped, len(candidates), str(root))
    return _finish(
        root,
        files,
        labels,
        [TaskSpec(task, len(classes[task])) for task in tasks],
        [list(classes[task]) for task in tasks],
        [""] * len(files),
        None,
        skipped,
        _UTKFACE_LAYOUT,
    )


# ---------------------------------------------------------------------------------------------------------- decode


def decode_images(
    files: LabelledFiles,
    *,
    size: int,
    colour: Literal["rgb", "grey"],
    cache_dir: Path,
    skip_bad: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [M, C, size, size]`` (resized and centre-cropped; C 3 for rgb, 1 for grey) and ``kept``,
    the ``int64 [M]`` rows of ``files`` they belong to (all rows unless ``skip_bad`` dropped unreadable ones).

    The result is cached under ``cache_dir`` and returned memory-mapped; a later call with the same files
    (same paths, sizes and modification times) and settings reads the cache without opening any image.
    """
    mode = _pil_mode(colour)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise DatasetFileError(f"image size {size!r} must be a positive integer (pixels per side)")
    if not files.files:
        raise DatasetFileError(f"no images to decode in {str(files.root)!r}")
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetFileError(
            f"cache folder {str(cache_dir)!r} cannot be created ({err}); pick a writable folder"
        ) from None
    folder = cache_dir / _cache_name(files, size, colour, skip_bad)

    cached = _load_cache(folder, size, mode)
    if cached is None:
        _build_cache(folder, files, size, mode, skip_bad)
        cached = _load_cache(folder, size, mode)
        if cached is None:  # only if someone deletes or corrupts it between our write and our read
            raise DatasetFileError(f"image cache {str(folder)!r} vanished or is corrupt right after being written")
    images, kept, meta = cached
    if meta["skipped"]:
        logger.warning(
            "%s: %d of %d images were unreadable and dropped (skip_bad=True)", files.root, meta["skipped"], meta["rows"]
        )
    return images, kept


def _pil_mode(colour: str) -> str:
    modes = {"rgb": "RGB", "grey": "L"}
    if colour not in modes:
        raise DatasetFileError(f"colour {colour!r} is not one of {list(modes)}")
    return modes[colour]


def _relative(path: Path, root: Path) -> str:
    # Relative paths keep the cache valid when the whole dataset folder is moved.
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_name(files: LabelledFiles, size: int, colour: str, skip_bad: bool) -> str:
    """A folder name that changes whenever any file, its order, or a decode setting changes.

    Rows are hashed in their order (not sorted) because the cached array is stored in row order: the same
    files listed in another order must not reuse an array whose rows no longer line up with the labels.
    """
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\0{int(size)}\0{colour}\0{bool(skip_bad)}\n".encode())
    for path in files.files:
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            if not skip_bad:
                raise DatasetFileError(
                    f"image {str(path)!r} is listed but missing on disk; restore it, or re-read the dataset"
                ) from None
            signature = "missing"  # decoded as unreadable, so dropped and counted
        digest.update(f"{_relative(path, files.root)}\0{signature}\n".encode())
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", files.root.name) or "dataset"
    return f"{prefix}-{colour}{int(size)}-{digest.hexdigest()[:24]}"


def _load_cache(folder: Path, size: int, mode: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The cached (images, kept, meta), or None when there is none; a damaged cache is removed (then rebuilt)."""
    if not folder.is_dir():
        return None
    channels = 3 if mode == "RGB" else 1
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        kept = np.load(folder / "kept.npy", allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != (meta["count"], channels, size, size):
            raise ValueError(f"images.npy has {images.dtype} {images.shape}, meta.json says {meta['count']} images")
        if kept.shape != (meta["count"],):
            raise ValueError(f"kept.npy has shape {kept.shape}, meta.json says {meta['count']} images")
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("image cache %s is damaged (%s); rebuilding it", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return images, kept.astype(np.int64, copy=False), meta


def _build_cache(folder: Path, files: LabelledFiles, size: int, mode: str, skip_bad: bool) -> None:
    """Decode every file into a temporary folder next to ``folder``, then rename it into place in one step, so a
    reader (or a crash) never sees a half-written cache."""
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        kept = _decode_to(tmp / "images.npy", files.files, size, mode, skip_bad)
        np.save(tmp / "kept.npy", kept)
        meta = {
            "root": str(files.root),
            "count": int(kept.size),
            "rows": len(files.files),
            "size": int(size),
            "colour": "rgb" if mode == "RGB" else "grey",
            "skipped": len(files.files) - int(kept.size),
            "seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            # Another process finished the same cache first: its copy is identical, so use it.
            logger.info("image cache %s was written concurrently; using the existing copy", folder)
        logger.info("decoded %d images into %s in %.1f s", kept.size, folder, meta["seconds"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_to(out_path: Path, paths: list[Path], size: int, mode: str, skip_bad: bool) -> np.ndarray:
    """Decode ``paths`` in order into the .npy ``out_path``; returns the rows kept (all, unless skip_bad)."""
    channels = 3 if mode == "RGB" else 1
    n = len(paths)
    # Written straight to disk: a dataset's pixels may not fit in memory next to everything else.
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
    ok = np.ones(n, dtype=bool)
    step = max(1, -(-n // 10))
    decode = partial(_decode_one, size=size, mode=mode)
    # Threads, not processes: Pillow releases the GIL while decoding and resizing, and threads share `out`.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for begin in range(0, n, _CHUNK):
            for i, result in enumerate(pool.map(decode, paths[begin : begin + _CHUNK]), start=begin):
                if isinstance(result, np.ndarray):
                    out[i] = result
                elif skip_bad:
                    ok[i] = False
                    logger.debug("skipping unreadable image %s: %s", paths[i], result)
                else:
                    raise DatasetFileError(
                        f"image {str(paths[i])!r} is unreadable ({result}); expected an image file Pillow can open "
                        "(replace or remove it, or pass skip_bad=True to drop unreadable images)"
                    )
                if n > _PROGRESS_OVER and ((i + 1) % step == 0 or i + 1 == n):
                    logger.info("decoding images: %d/%d (%d%%)", i + 1, n, 100 * (i + 1) // n)
    kept = np.flatnonzero(ok).astype(np.int64)
    if kept.size == 0:
        raise DatasetFileError(f"none of the {n} images could be read (e.g. {str(paths[0])!r}); nothing to cache")
    if kept.size < n:
        out = _compact(out, out_path, kept)
    out.flush()
    del out
    return kept


def _compact(out: np.memmap, out_path: Path, kept: np.ndarray) -> np.memmap:
    """Rewrite ``out_path`` holding only the ``kept`` rows, copying in chunks to stay out of memory."""
    compact_path = out_path.with_name("compact.npy")
    compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=out.dtype, shape=(kept.size, *out.shape[1:]))
    for begin in range(0, kept.size, _CHUNK):
        compact[begin : begin + _CHUNK] = out[kept[begin : begin + _CHUNK]]
    compact.flush()
    del out
    os.replace(compact_path, out_path)
    return compact


def _decode_one(path: Path, *, size: int, mode: str) -> np.ndarray | Exception:
    """One image as uint8 CHW, or the exception that made it unreadable (raised by the caller, in order)."""
    try:
        with Image.open(path) as img:
            # draft lets the JPEG decoder scale down by 1/2..1/8 while staying >= size: far less work for big photos.
            img.draft(mode, (size, size))
            image = ImageOps.exif_transpose(img).convert(mode)  # phone photos store their rotation in EXIF
            image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        return err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
