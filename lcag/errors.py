"""The package's exception types.

Every error ``lcag`` raises on bad input is one of these. They subclass the standard
exception a caller would expect (``ValueError``, ``FileNotFoundError``, ``ImportError``), so
``except ValueError`` keeps working, and their messages name the offending file, field or value.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InvalidInputError",
    "InvalidLCAGError",
    "InvalidTreeError",
    "LCAGError",
    "MissingDependencyError",
]


class LCAGError(Exception):
    """Base class of every error raised by ``lcag``."""


class InvalidInputError(LCAGError, ValueError):
    """An argument has the wrong shape, type or value (the message names which)."""


class CheckpointError(InvalidInputError):
    """A model checkpoint is missing, truncated, corrupt or not one of lcag's (file named)."""


class ConfigError(LCAGError, ValueError):
    """A configuration is unknown, mistyped or impossible (the message names key and value)."""


class DatasetError(LCAGError, ValueError):
    """A dataset directory or file is missing, mixed up or corrupt (file and field named)."""


class InvalidTreeError(LCAGError, ValueError):
    """A decay tree description is malformed (cycle, several roots, single-child node, ...)."""


class InvalidLCAGError(LCAGError, ValueError):
    """A matrix is not the LCAG of any decay tree.

    Attributes:
        reason: one of the ``REASONS`` keys, machine-readable.
        where: the first offending leaf pair ``(i, j)``, or ``(i,)`` for a row, or ``()``.
    """

    NOT_SQUARE = "not_square"
    NON_INTEGER = "non_integer"
    NON_ZERO_DIAGONAL = "non_zero_diagonal"
    NON_POSITIVE = "non_positive"
    ASYMMETRIC = "asymmetric"
    NOT_ULTRAMETRIC = "not_ultrametric"
    LEVEL_GAP = "level_gap"
    REASONS: ClassVar[dict[str, str]] = {
        NOT_SQUARE: "the matrix is not a non-empty square (L, L) array",
        NON_INTEGER: "an entry is not an integer",
        NON_ZERO_DIAGONAL: "a diagonal entry is not 0",
        NON_POSITIVE: "an off-diagonal entry is below 1",
        ASYMMETRIC: "the matrix is not symmetric",
        NOT_ULTRAMETRIC: "the matrix is not an ultrametric",
        LEVEL_GAP: "an ancestor has no child exactly one level below it",
    }

    def __init__(self, reason: str, where: tuple[int, ...], detail: str) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"invalid LCAG ({self.REASONS[reason]}): {detail}")


class MissingDependencyError(LCAGError, ImportError):
    """An optional dependency is needed for this feature; the message says what to install."""
