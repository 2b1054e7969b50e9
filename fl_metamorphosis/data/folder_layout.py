"""The generic ``folder`` layout: images (in any subfolders) plus a CSV with one column per task.

Any strings are classes, numbered over the whole file so that train and test rows agree. Like every reader it
only lists files and labels and never opens an image, so it is cheap to re-run on every start. A malformed row
or a missing image raises :class:`DatasetFileError` naming the line or path, because a dataset that is silently
shrunk would bias every experiment built on it; rows are dropped only when the caller asks (``skip_bad=True``),
and then counted. A row whose path leads out of the folder (``..``, an absolute path, a symlink) is refused even
with ``skip_bad``: it is not a damaged row but one that would read a file the user never put in the dataset, so
only ``allow_outside_root`` lets it through.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable
from pathlib import Path

from .labelled_files import (
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
    allow_outside_root: bool = False,
) -> LabelledFiles:
    """A folder of images labelled by a CSV: one row per image, one column per task (any strings as classes).

    Class ids are the sorted unique values over the whole file, so they agree between train and test rows.
    With ``skip_bad``, rows with a missing image or a malformed row (wrong number of cells, an empty cell)
    are dropped and counted in ``skipped``; without it they raise :class:`DatasetFileError`. A path that leads
    outside ``root`` raises unless ``allow_outside_root``.
    """
    layout = _folder_layout(labels_file, file_column)
    root = check_root(root, layout)
    path = root / labels_file
    header, rows = _read_csv(path, layout)
    for column in (file_column, *tasks):
        if column not in header:
            close = difflib.get_close_matches(column, header, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DatasetFileError(
                f"{path}: no column {column!r}{hint}; the header has columns {header}; expected {layout}"
            )
    tasks = check_tasks(tasks, header, str(path), layout)
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
    if not allow_outside_root:
        def name_of(i: int) -> str:
            line, record = records[i]
            return f"{path} line {line}: {file_column!r} is {record[file_column]!r}, which"

        refuse_outside(root, files, folder="dataset folder", name_of=name_of)
    ids = [{name: i for i, name in enumerate(names)} for names in classes]
    labels = [[ids[t][r[task]] for t, task in enumerate(tasks)] for _, r in records]
    keep = list(range(len(records)))
    files, keep, missing = drop_missing(files, keep, skip_bad, layout)
    warn_skipped(bad + missing, len(rows), str(path))
    return finish(
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
