"""UTKFace, whose labels (age, gender and race) are encoded in its file names, so there is no label file to read.

Ages are bucketed by the caller's ``age_buckets``; there is no official split or identity. A file name that does
not parse raises :class:`DatasetFileError` naming the file and the expected pattern, because a silently shrunk
dataset would bias every experiment built on it; such files are dropped only when the caller asks
(``skip_bad=True``), and then counted. An age below the first bucket edge is always an error: it is a wrong
``age_buckets``, not a bad file. A file that is a symlink out of the folder is refused unless the caller allows it
(``allow_outside_root``): the folder may come from anyone, and such a link would have the run read and train on
an image elsewhere on the machine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .labelled_files import (
    IMAGE_SUFFIXES,
    DatasetFileError,
    LabelledFiles,
    check_root,
    check_tasks,
    finish,
    refuse_outside,
    warn_skipped,
)
from .multitask import TaskSpec

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


def read_utkface(
    root: Path,
    tasks: list[str],
    *,
    age_buckets: list[int],
    skip_bad: bool = False,
    allow_outside_root: bool = False,
) -> LabelledFiles:
    """UTKFace, labelled by its file names; tasks among "gender", "race" and "age" (bucketed by ``age_buckets``).

    There is no official split or identity, so ``split`` is "" (the caller splits) and ``identity`` None.
    With ``skip_bad``, files whose names do not parse are dropped and counted; ages below the first bucket
    edge are always an error, because that is a wrong ``age_buckets`` rather than a bad file. A file leading
    outside ``root`` (a symlink) raises unless ``allow_outside_root``.
    """
    root = check_root(root, _UTKFACE_LAYOUT)
    tasks = check_tasks(tasks, _UTKFACE_TASKS, "UTKFace", _UTKFACE_LAYOUT)
    classes = {"gender": _GENDERS, "race": _RACES}
    if "age" in tasks:
        classes["age"] = _age_classes(age_buckets)
    edges = np.asarray(age_buckets if "age" in tasks else [0], dtype=np.int64)

    candidates = _utkface_images(root)
    if not allow_outside_root:
        refuse_outside(root, candidates, folder="dataset folder", name_of=lambda i: repr(str(candidates[i])))
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
    warn_skipped(skipped, len(candidates), str(root))
    return finish(
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
