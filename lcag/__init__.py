"""lcag: reconstruct particle-decay trees from their leaves through the LCAG matrix.

``LCAG[i, j]`` is the height of the lowest common ancestor of final-state particles ``i`` and
``j``. The matrix is equivalent to the decay tree and can be learnt from leaf features alone.
"""

from lcag.decode import decode, decode_argmax, log_partition, top_k, tree_score
from lcag.errors import InvalidInputError, InvalidLCAGError, InvalidTreeError, LCAGError
from lcag.matrix import is_valid_lcag, lcag_to_tree, permute, tree_to_lcag, tree_to_lcas
from lcag.tree import DecayTree

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``lcag.Reconstructor`` imports torch only when first used."""
    if name == "Reconstructor":
        from lcag.inference import Reconstructor

        return Reconstructor
    raise AttributeError(f"module 'lcag' has no attribute {name!r}")


__all__ = [
    "DecayTree",
    "InvalidInputError",
    "InvalidLCAGError",
    "InvalidTreeError",
    "LCAGError",
    "Reconstructor",
    "__version__",
    "decode",
    "decode_argmax",
    "is_valid_lcag",
    "lcag_to_tree",
    "log_partition",
    "permute",
    "top_k",
    "tree_score",
    "tree_to_lcag",
    "tree_to_lcas",
]
