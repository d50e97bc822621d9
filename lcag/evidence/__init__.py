"""Node evidence for decoding: how likely a set of leaves is one particle of the tree.

Pair scores cannot see whether a *set* of leaves is a particle; a node score per leaf set can
(:mod:`lcag.decode`, ``node_scores``). :class:`MassPrior` learns one from the training trees:
the log-odds that a leaf subset is an inner node given its invariant mass and size.
"""

from lcag.evidence.mass_prior import MassPrior
from lcag.evidence.subsets import subset_masses, subset_sizes

__all__ = ["MassPrior", "subset_masses", "subset_sizes"]
