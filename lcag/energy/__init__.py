"""Energy of training, inference and search runs.

Measured where the node offers sensors (RAPL for CPU packages, NVML for GPUs), otherwise an
estimate from CPU time times a per-core power that every output labels as estimated:

- :class:`EnergyMonitor`: a context manager with phases (``with monitor.phase("train"): ...``);
- :class:`EnergyLogger`: the same as a Lightning callback (per-epoch and per-run figures,
  ``energy.json`` in the run directory);
- the sensors themselves in :mod:`lcag.energy.sensors`.
"""

from lcag.energy.monitor import EnergyMonitor, energy_summary
from lcag.energy.sensors import (
    DEFAULT_WATTS_PER_CORE,
    CounterSensor,
    CpuTimeEstimate,
    NvmlSensor,
    RaplSensor,
    SensorUnavailableError,
    detect_sensors,
    node_composition,
)
from lcag.lazy import lazy_names

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "CounterSensor",
    "CpuTimeEstimate",
    "EnergyLogger",
    "EnergyMonitor",
    "NvmlSensor",
    "RaplSensor",
    "SensorUnavailableError",
    "detect_sensors",
    "energy_summary",
    "node_composition",
]

# The callback needs Lightning; the monitor and sensors do not (import it lazily).
__getattr__ = lazy_names(__name__, {"EnergyLogger": "lcag.energy.callback"})
