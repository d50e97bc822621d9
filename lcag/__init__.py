"""lcag: reconstruct particle-decay trees from their leaves through the LCAG matrix.

``LCAG[i, j]`` is the height of the lowest common ancestor of final-state particles ``i`` and
``j``. The matrix is equivalent to the decay tree and can be learnt from leaf features alone.
"""

import sys
import types

from lcag.errors import InvalidInputError, InvalidLCAGError, InvalidTreeError, LCAGError
from lcag.lazy import lazy_names
from lcag.matrix import is_valid_lcag, lcag_to_tree, permute, tree_to_lcag, tree_to_lcas
from lcag.tree import DecayTree

__version__ = "0.1.0"

# Imported on first use: decoding brings numba (its compiler, ~100 MB and 0.3 s per process,
# which generation workers never need) and ``Reconstructor`` torch.
_LAZY = {
    "Reconstructor": "lcag.inference",
    "decode": "lcag.decode",
    "decode_argmax": "lcag.decode",
    "log_partition": "lcag.decode",
    "top_k": "lcag.decode",
    "tree_score": "lcag.decode",
}


__getattr__ = lazy_names(__name__, _LAZY)


class _Package(types.ModuleType):
    """``lcag`` itself: ``lcag.decode`` stays the function when the import system binds the
    subpackage of the same name (``import lcag.decode.exact``) as an attribute."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
