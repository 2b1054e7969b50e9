"""A package's names imported from their modules on first use (PEP 562), for the packages whose modules
pull in heavy libraries that some processes never need: ``privacy`` (Opacus), ``audit`` (scikit-learn,
SciPy's statistics, torchmetrics) and ``data`` (torch). Each package says why in its own docstring."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``name`` from its submodule ``homes[name]``."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{homes[name]}", package), name)

    return __getattr__
