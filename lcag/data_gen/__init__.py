"""Decay-tree simulation: topologies (random or from decay tables), phasespace kinematics and
the sharded HDF5 writer behind ``lcag-generate``.

TensorFlow (through phasespace) is imported only when kinematics are generated.
"""

from lcag.data_gen.config import GenerationConfig, load_config
from lcag.data_gen.topology import Topology, sample_random_topologies

__all__ = ["GenerationConfig", "Topology", "load_config", "sample_random_topologies"]
