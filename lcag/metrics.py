"""torchmetrics for LCAG predictions: perfect-tree rate (overall and per leaf count), pair
accuracy, and the valid-tree rate of a prediction.

Predictions and targets are ``(B, L, L)`` integer LCAGs; target entries of -1 (diagonal,
padding) are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from lcag.matrix import is_valid_lcag

__all__ = ["PairAccuracy", "PerfectTreeRate", "SpeciesAccuracy", "ValidTreeRate"]


class PerfectTreeRate(Metric):
    """Share of events whose every pair is right, also per leaf count.

    Args:
        max_leaves: the largest leaf count tracked per size (larger events count in the
            overall rate only).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, max_leaves: int = 64) -> None:
        super().__init__()
        self.max_leaves = max_leaves
        self.add_state("correct", torch.zeros(max_leaves + 2, dtype=torch.long), "sum")
        self.add_state("total", torch.zeros(max_leaves + 2, dtype=torch.long), "sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, n_leaves: torch.Tensor) -> None:
        """pred, target: ``(B, L, L)``; n_leaves: ``(B,)`` real leaves per event."""
        perfect = ((pred == target) | (target < 0)).flatten(1).all(dim=1)
        size = torch.clamp(n_leaves, max=self.max_leaves + 1)
        self.correct += torch.bincount(size[perfect], minlength=self.max_leaves + 2)
        self.total += torch.bincount(size, minlength=self.max_leaves + 2)

    def compute(self) -> torch.Tensor:
        return self.correct.sum() / torch.clamp(self.total.sum(), min=1)

    def by_size(self) -> dict[int, tuple[float, int]]:
        """Leaf count -> (perfect rate, events), for the sizes seen."""
        return {
            n: (float(self.correct[n] / self.total[n]), int(self.total[n]))
            for n in range(self.max_leaves + 1)
            if self.total[n] > 0
        }

    def up_to(self, max_leaves: int) -> tuple[float, int]:
        """(perfect rate, events) over events with at most ``max_leaves`` leaves."""
        total = int(self.total[: max_leaves + 1].sum())
        return float(self.correct[: max_leaves + 1].sum()) / max(total, 1), total


class _Ratio(Metric):
    """A share: ``hits / total`` summed over updates (and over ranks under DDP)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hits", torch.zeros((), dtype=torch.long), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), "sum")

    def compute(self) -> torch.Tensor:
        return self.hits / torch.clamp(self.total, min=1)


class PairAccuracy(_Ratio):
    """Share of leaf pairs (off-diagonal, not padding) whose class is right."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: ``(B, L, L)``."""
        valid = target >= 0
        self.hits += (pred[valid] == target[valid]).sum()
        self.total += valid.sum()


class ValidTreeRate(_Ratio):
    """Share of predicted matrices that are the LCAG (or, with ``target="lcas"``, the LCAS
    stage labelling) of some decay tree."""

    def __init__(self, target: str = "lcag") -> None:
        super().__init__()
        self.target = target

    def update(self, pred: torch.Tensor, mask: torch.Tensor) -> None:
        """pred: ``(B, L, L)``; mask: ``(B, L)`` bool, real leaves."""
        pred_np, mask_np = pred.detach().cpu().numpy(), mask.detach().cpu().numpy()
        if self.target == "lcas":
            from lcag.stages import is_valid_lcas

            valid = [is_valid_lcas(p[np.ix_(m, m)]) for p, m in zip(pred_np, mask_np, strict=True)]
        else:
            valid = is_valid_lcag(pred_np, mask_np)
        self.hits += int(np.sum(valid))
        self.total += pred.shape[0]


class SpeciesAccuracy(Metric):
    """Particle-type accuracy per true species (leaves with species ``-1`` ignored).

    Args:
        n_species: species classes ``S``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_species: int) -> None:
        super().__init__()
        self.add_state("hits", torch.zeros(n_species, dtype=torch.long), "sum")
        self.add_state("total", torch.zeros(n_species, dtype=torch.long), "sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: ``(B, L)`` species classes; target ``-1`` on padding."""
        real = target >= 0
        S = self.total.numel()
        self.total += torch.bincount(target[real], minlength=S)[:S]
        self.hits += torch.bincount(target[real & (pred == target)], minlength=S)[:S]

    def compute(self) -> torch.Tensor:
        """Overall accuracy (every leaf counted once)."""
        return self.hits.sum() / torch.clamp(self.total.sum(), min=1)

    def per_species(self) -> list[tuple[float, int]]:
        """Per species: (accuracy, leaves), NaN accuracy where no leaf was seen."""
        return [
            (float(h / t) if t else float("nan"), int(t))
            for h, t in zip(self.hits, self.total, strict=True)
        ]
