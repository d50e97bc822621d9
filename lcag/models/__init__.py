"""LCAG models: leaf features ``(B, L, F)`` + mask ``(B, L)`` -> pair logits ``(B, C, L, L)``.

See :class:`~lcag.models.base.LCAGModel` for the contract shared by every model.
"""

from lcag.models.base import LCAGModel
from lcag.models.nri import LCAGNRI
from lcag.models.pair_head import PairHead
from lcag.models.subset_head import SubsetHead
from lcag.models.transformer import LCAGTransformer

__all__ = ["LCAGNRI", "LCAGModel", "LCAGTransformer", "PairHead", "SubsetHead"]
