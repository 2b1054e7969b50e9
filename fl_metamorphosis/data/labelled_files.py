"""What the three dataset-layout readers share: the listing they return, the error they raise, and their checks.

A reader (:mod:`.folder_layout`, :mod:`.celeba`, :mod:`.utkface`) only lists files and labels; it never opens an
image, so it is cheap and can be re-run on every start. Every reader checks the layout up front and raises
:class:`DatasetFileError` naming the path or value and the layout it expected: a dataset that is half-read or
silently shrunk would bias every experiment built on it without anyone noticing. Rows are only ever dropped when
the caller asks for it (``skip_bad=True``), and then counted (``LabelledFiles.skipped``) and logged.

A label file or a folder is input a user may have downloaded from anyone, so the paths it lists are confined to
the dataset folder (:func:`outside_root`): a row ``../../home/me/.ssh/id_rsa.png``, an absolute path or a
symlink out of the folder would otherwise make the run read, decode and cache (and a federation train on) files
the user never meant to share. Reading outside the folder is an explicit opt-in (``allow_outside_root``).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .multitask import TaskSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The fix every "outside the dataset folder" error names; the config field is DataConfig.allow_paths_outside_root.
OUTSIDE_ROOT_FIX = (
    "keep the images inside the dataset folder (copy them in and list them relative to it), "
    "or set data.allow_paths_outside_root = true if you trust the label file"
)


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


def check_root(root: Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFileError(f"dataset folder {str(root)!r} does not exist or is not a folder; expected {layout}")
    return root.resolve()


def check_tasks(tasks: Sequence[str], valid: Iterable[str], where: str, layout: str) -> list[str]:
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


def _symlink_names(folder: Path, cache: dict[Path, frozenset[str]]) -> frozenset[str]:
    """The names of the symlinks in ``folder`` (read once per folder; none when it cannot be listed)."""
    if folder not in cache:
        try:
            # scandir's is_symlink comes from the directory listing itself, without a stat per file
            with os.scandir(folder) as entries:
                cache[folder] = frozenset(e.name for e in entries if e.is_symlink())
        except OSError:
            cache[folder] = frozenset()
    return cache[folder]


def _resolve(path: Path) -> Path:
    """``path.resolve()``, or ``path`` itself on a symlink loop: such a file is unreadable, and the decoder then
    names it, which is a clearer error than the loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def outside_root(root: Path, files: Sequence[Path]) -> list[tuple[int, Path]]:
    """(index, resolved path) of each file that resolves outside ``root``: through ``..``, an absolute path, or a
    symlink (of the file or of any folder above it).

    Each distinct folder is resolved once and a file itself only when it is a symlink: resolving every one of
    CelebA's 200k files would cost seconds on every start, and the readers are meant to be cheap.
    """
    base = Path(root).resolve()
    folders: dict[Path, tuple[Path, bool]] = {}  # listed folder -> (its real path, whether that is inside root)
    links: dict[Path, frozenset[str]] = {}
    escaping = []
    for i, path in enumerate(files):
        parent, name = path.parent, path.name
        if parent not in folders:
            real = _resolve(parent)
            folders[parent] = real, real.is_relative_to(base)
        folder, inside = folders[parent]
        if name == ".." or name in _symlink_names(folder, links):
            target = _resolve(folder / name)
            if not target.is_relative_to(base):
                escaping.append((i, target))
        elif not inside:
            escaping.append((i, folder / name))
    return escaping


def refuse_outside(root: Path, files: Sequence[Path], *, folder: str, name_of: Callable[[int], str]) -> None:
    """Raise naming the first of ``files`` that leads outside ``root`` (see ``outside_root``); ``name_of(i)``
    says where file i came from as the user wrote it (a row of a label file, a file name)."""
    escaping = outside_root(root, files)
    if escaping:
        i, target = escaping[0]
        more = f" (and {len(escaping) - 1} more)" if len(escaping) > 1 else ""
        raise DatasetFileError(
            f"{name_of(i)} leads to {str(target)!r}, outside the {folder} {str(root)!r}{more}; {OUTSIDE_ROOT_FIX}"
        )


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


def drop_missing(files: list[Path], rows: list, skip_bad: bool, layout: str) -> tuple[list[Path], list, int]:
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


def warn_skipped(skipped: int, total: int, what: str) -> None:
    if skipped:
        logger.warning("%s: dropped %d of %d rows (skip_bad=True)", what, skipped, total)


def finish(
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
        raise DatasetFileError(
            f"dataset {str(root)!r} has no images{reason}: nothing to train on; point data.root at the dataset's "
            f"folder, or add images (and their label rows); expected {layout}"
        )
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
