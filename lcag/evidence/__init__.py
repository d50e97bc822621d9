"""Node evidence for decoding: how likely a set of leaves is one particle of the tree.

Pair scores cannot see whether a *set* of leaves is a particle; a node score per leaf set can
(:mod:`lcag.decode`, ``node_scores``). :class:`MassPrior` learns one from the training trees:
the log-odds that a leaf subset is an inner node given its invariant mass and size.
:class:`NodeEvidence` holds what a trained model decodes with: the prior, a learnt subset head
(:class:`lcag.models.SubsetHead`) and their weight, and :class:`TopologyCatalogue` the
training topologies (whether a reconstructed tree is of one). :class:`DecayGrammar` judges
whole trees: a generative model of decays (particles, children, line shapes, phase space)
learnt from the training topologies.
"""

from lcag.evidence.mass_prior import MassPrior
from lcag.evidence.subsets import (
    candidate_subsets,
    node_indicator,
    subset_kinematics,
    subset_masses,
    subset_sizes,
)
from lcag.evidence.topologies import TopologyCatalogue
from lcag.lazy import lazy_names

# NodeEvidence (a torch module) imports torch, DecayGrammar scipy.special, when first used
__getattr__ = lazy_names(
    __name__,
    {"NodeEvidence": "lcag.evidence.node_evidence", "DecayGrammar": "lcag.evidence.grammar"},
)


__all__ = [
    "DecayGrammar",
    "MassPrior",
    "NodeEvidence",
    "TopologyCatalogue",
    "candidate_subsets",
    "node_indicator",
    "subset_kinematics",
    "subset_masses",
    "subset_sizes",
]
