"""Physics baselines that reconstruct decay trees without machine learning."""

from lcag.baselines.combinatorial import CombinatorialBaseline

__all__ = ["CombinatorialBaseline"]
