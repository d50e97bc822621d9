"""The settings of a search (``configs/hpo/*.yaml``), parsed by jsonargparse.

Every field can be overridden on the command line (``--budget.max_epochs 2``,
``--search.islands 2``, ``--out_dir runs/hpo/x``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lcag.energy.sensors import DEFAULT_WATTS_PER_CORE

__all__ = ["OBJECTIVES", "Budget", "HPOConfig", "Objective", "SearchSettings"]

Objective = Literal["1-perfect", "val_loss"]
"""``1-perfect``: 1 - best validation perfect-tree rate; ``val_loss``: lowest validation loss."""
OBJECTIVES: tuple[str, ...] = get_args(Objective)


@dataclass
class Budget:
    """What one evaluation may spend.

    Attributes:
        max_epochs: epochs per trial.
        max_minutes: wall-clock cap per trial (``None``: epochs only).
        max_train_events: cap on the training events per epoch (``None``: the base config's).
        max_eval_events: cap on the validation events (``None``: the base config's).
    """

    max_epochs: int = 3
    max_minutes: float | None = None
    max_train_events: int | None = None
    max_eval_events: int | None = None


@dataclass
class SearchSettings:
    """Propulate's evolutionary search.

    Attributes:
        evaluations_per_worker: fits each worker (MPI rank) runs; the search runs
            ``ranks x evaluations_per_worker`` in all.
        pop_size: size of the breeding population.
        islands: separate populations (each gets ``ranks / islands`` workers).
        migration_probability: chance per generation that an island sends its best out.
        pollination: migrants are copies (True) or move (False, "real migration").
        crossover_probability, mutation_probability, random_init_probability: Propulate's
            default propagator.
        seed: seed of every rank's generator (``seed + rank``) and of each trial's fit.
    """

    evaluations_per_worker: int = 2
    pop_size: int = 4
    islands: int = 1
    migration_probability: float = 0.9
    pollination: bool = True
    crossover_probability: float = 0.7
    mutation_probability: float = 0.4
    random_init_probability: float = 0.1
    seed: int = 0


@dataclass
class HPOConfig:
    """A whole search.

    Attributes:
        base: the fit config whose hyperparameters are searched (``configs/fit/*.yaml``).
        space: the search space (see :mod:`lcag.hpo.space`).
        out_dir: where trials, the results table, logs and energy go; rerunning with the same
            ``out_dir`` resumes.
        best_config: where to write the best trial as a ready fit config
            (default ``<out_dir>/best.yaml``).
        data_dir: overrides the base config's ``data.data_dir``.
        objective: ``1-perfect`` (1 - best validation perfect-tree rate) or ``val_loss``
            (lowest validation loss).
        budget: what one evaluation may spend.
        search: Propulate's settings.
        watts_per_core: the energy estimate's power per busy core (used without RAPL/NVML).
        top_n: rows of the results table printed at the end.
    """

    base: str
    space: dict[str, Any]
    out_dir: str = "runs/hpo"
    best_config: str | None = None
    data_dir: str | None = None
    objective: Objective = "1-perfect"
    budget: Budget = field(default_factory=Budget)
    search: SearchSettings = field(default_factory=SearchSettings)
    watts_per_core: float = DEFAULT_WATTS_PER_CORE
    top_n: int = 5
