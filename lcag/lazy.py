"""Names of a package imported on first use (PEP 562), so that importing the package pulls
in nothing heavy (torch, Lightning, numba, an exporter) until one of them is asked for."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package``: each name of ``where`` is taken from the
    module ``where[name]`` when first asked for, and kept in the package from then on.

    Example: ``__getattr__ = lazy_names(__name__, {"Reconstructor": "lcag.inference"})``.
    """

    def attribute(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        vars(sys.modules[package])[name] = value
        return value

    return attribute
