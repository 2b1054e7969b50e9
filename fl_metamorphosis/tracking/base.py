"""A tracking backend: one tracked run, its parameters, its metrics by step, its files.

A backend is written against this small interface and nothing else (``registry.py`` names them), so
``run_tracking.py`` follows a run folder the same way for every backend.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..config import flatten_tree

_KEY = re.compile(r"[^\w\-. /]")


def metric_key(key: str) -> str:
    """A key every backend accepts: ``left->right`` becomes ``left_to_right``, other odd characters ``_``."""
    return _KEY.sub("_", key.replace("->", "_to_").replace("~", "_and_"))


def params_of(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A (nested) tree as flat parameters: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten_tree(tree, prefix).items()}


def numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) row, keyed for a backend; booleans count as 0 and 1."""
    out = {}
    for k, v in flatten_tree(tree, prefix).items():
        if isinstance(v, bool | int | float) and v == v and abs(v) != float("inf"):
            out[metric_key(k)] = float(v)
    return out


def in_series(key: str, prefix: str) -> bool:
    """A round's metric of the series ``prefix`` ("" for a run of one method), not a final figure."""
    return not key.startswith("final.") and (key.startswith(prefix) if prefix else "/" not in key)


class Tracker(ABC):
    """One run on one backend. ``start`` returns the backend's id of the run, which ``start`` accepts
    again to continue that run (a resumed run folder)."""

    name: str

    @abstractmethod
    def start(self, run_dir: Path, *, title: str, run_id: str | None, parent_id: str | None, store: Path) -> str:
        """``store``: where a local backend keeps its files (the top run folder's parent: a sweep's cells
        share their sweep's store)."""

    @abstractmethod
    def log_params(self, params: dict[str, str]) -> None: ...

    @abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    @abstractmethod
    def log_file(self, path: Path) -> None: ...

    @abstractmethod
    def last_step(self, prefix: str) -> int | None:
        """The last step the backend holds of the series whose keys start with ``prefix`` (a resumed run asks:
        a launcher killed between logging a row and noting it must not log that row twice)."""

    @abstractmethod
    def end(self, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED."""
