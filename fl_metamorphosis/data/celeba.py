"""CelebA, read in the layout its authors ship it (or Kaggle's zip, which nests the images folder once more).

Tasks are attribute names with classes "no"/"yes"; the official partition gives the split and, when present,
``identity_CelebA.txt`` the person. The text files are the published dataset, not user input, so they must be
intact: a malformed line, or a count on line 1 that does not match the rows, raises :class:`DatasetFileError`
naming the file and line even with ``skip_bad``, since a half-read dataset would bias every experiment built on
it without anyone noticing. Only rows whose image is missing are dropped when the caller asks, and then counted.
An image name that leads out of the images folder (``../x.jpg``, an absolute path, a symlink out of it) is
refused unless the caller allows it (``allow_outside_root``): an edited text file could otherwise have the run
read and train on any image on the machine. The images folder itself may be a symlink (a big dataset often
lives on another disk); it is what names are confined to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .labelled_files import (
    IMAGE_SUFFIXES,
    DatasetFileError,
    LabelledFiles,
    check_root,
    check_tasks,
    drop_missing,
    finish,
    refuse_outside,
    warn_skipped,
)
from .multitask import TaskSpec

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


def read_celeba(
    root: Path, tasks: list[str], *, skip_bad: bool = False, allow_outside_root: bool = False
) -> LabelledFiles:
    """CelebA in its authors' layout; tasks are attribute names (e.g. "Male", "Smiling"), classes "no"/"yes".

    The official partition gives the split (0 train, 1 val, 2 test); ``identity_CelebA.txt``, when present,
    gives the person id. With ``skip_bad``, rows whose image is missing are dropped and counted; the text
    files themselves must be intact either way (they are the published dataset, not user input). An image name
    leading outside the images folder raises unless ``allow_outside_root``.
    """
    root = check_root(root, _CELEBA_LAYOUT)
    images = _celeba_images_dir(root)
    attr_path = root / "list_attr_celeba.txt"
    names, rows = _celeba_attributes(attr_path)
    tasks = check_tasks(tasks, names, str(attr_path), _CELEBA_LAYOUT)
    partition_path = root / "list_eval_partition.txt"
    partition = _celeba_mapping(partition_path, _celeba_lines(partition_path), "[012]")
    identity_path = root / "identity_CelebA.txt"
    identity_lines = _celeba_lines(identity_path, required=False)
    identities = None if identity_lines is None else _celeba_mapping(identity_path, identity_lines, r"-?\d+")

    columns = [names.index(task) for task in tasks]
    files = [images / image for image, _ in rows]
    if not allow_outside_root:
        refuse_outside(images, files, folder="images folder", name_of=lambda i: f"{attr_path}: image {rows[i][0]!r}")
    files, kept, missing = drop_missing(files, rows, skip_bad, _CELEBA_LAYOUT)
    warn_skipped(missing, len(rows), str(attr_path))
    return finish(
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
