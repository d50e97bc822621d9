"""Energy sensors: RAPL package counters, NVML GPU counters, and a labelled CPU-time estimate.

Every sensor reads *cumulative counters* (raw integers or floats that only grow, except when
they wrap around at a fixed modulus). :class:`CounterSensor` turns successive readings into
joules, wrap-around included; the three sensors differ only in how they read their counters.

- :class:`RaplSensor`: ``/sys/class/powercap/intel-rapl:N/energy_uj`` (one counter per CPU
  package, microjoules, wrapping at ``max_energy_range_uj``). Intel and recent AMD kernels expose
  it; most kernels make it readable by root only.
- :class:`NvmlSensor`: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver
  loaded, one counter per GPU, 64-bit) through ``nvidia-ml-py`` (``pip install lcag[gpu]``).
- :class:`CpuTimeEstimate`: process CPU seconds times a configured power per busy core. This is
  an **estimate**, and every report built from it says so and why nothing was measured.
"""

from __future__ import annotations

import os
import platform
import resource
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcag.errors import ConfigError

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "RAPL_ROOT",
    "Counter",
    "CounterSensor",
    "CpuTimeEstimate",
    "NvmlSensor",
    "RaplSensor",
    "SensorUnavailableError",
    "detect_sensors",
    "node_composition",
    "nvml_indices",
    "usable_cores",
]

RAPL_ROOT = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_CORE = 10.0
"""Power of one fully busy core for the estimate (W): a middle value for today's server and
desktop CPUs (package TDP divided by core count is 3-15 W). Set it for your CPU."""


class SensorUnavailableError(RuntimeError):
    """A sensor cannot be read on this machine; the message says why (it goes into reports)."""


@dataclass(frozen=True)
class Counter:
    """One cumulative energy counter.

    Attributes:
        name: what it measures, e.g. ``"package-0"`` or ``"gpu0:NVIDIA A100"``.
        joules_per_unit: joules per raw count (1e-6 for RAPL, 1e-3 for NVML).
        wrap: the modulus at which the raw counter returns to zero, or ``None`` if it never does.
    """

    name: str
    joules_per_unit: float
    wrap: int | None = None


@dataclass
class CounterSensor(ABC):
    """Turns successive counter readings into joules, correcting wrap-arounds.

    Call :meth:`joules_since_last` at least once per wrap period (RAPL: minutes at full load;
    :class:`lcag.energy.EnergyMonitor` polls in a background thread for that reason).
    """

    name: str = field(init=False, default="counters")
    estimated: bool = field(init=False, default=False)
    counters: list[Counter] = field(init=False, default_factory=list)
    _last: list[float] | None = field(init=False, default=None, repr=False)

    @abstractmethod
    def read(self) -> list[float]:
        """The raw value of every counter, in the order of :attr:`counters`."""

    def joules_since_last(self) -> float:
        """Joules consumed since the previous call (0 on the first call, which sets the origin)."""
        current = self.read()
        if self._last is None:
            self._last = current
            return 0.0
        total = 0.0
        for counter, before, after in zip(self.counters, self._last, current, strict=True):
            delta = after - before
            if delta < 0:
                if counter.wrap is None:
                    raise SensorUnavailableError(
                        f"{self.name}: counter {counter.name!r} went backwards "
                        f"({before} -> {after}) and has no wrap-around modulus"
                    )
                delta += counter.wrap
            total += delta * counter.joules_per_unit
        self._last = current
        return total

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: sensor name, whether it is an estimate, its counters."""
        return {
            "name": self.name,
            "estimated": self.estimated,
            "counters": [c.name for c in self.counters],
        }


class RaplSensor(CounterSensor):
    """CPU package energy from the Linux powercap RAPL interface.

    Only top-level ``intel-rapl:N`` zones are read (their ``:N:M`` sub-zones are parts of the
    package and would count twice); a ``psys`` zone (whole platform) is skipped for the same
    reason.

    Args:
        root: the powercap directory (``/sys/class/powercap``).

    Raises:
        SensorUnavailableError: no RAPL zone, or its counters are unreadable (reason named).
    """

    def __init__(self, root: str | Path = RAPL_ROOT) -> None:
        super().__init__()
        self.name = "rapl"
        root = Path(root)
        if not root.is_dir():
            raise SensorUnavailableError(f"no RAPL: {root} does not exist (no powercap here)")
        zones = sorted(
            (p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1),
            key=lambda p: int(p.name.split(":")[1]),
        )
        self._files: list[Path] = []
        for zone in zones:
            label = _read_text(zone / "name") or zone.name
            if label == "psys":
                continue
            energy = zone / "energy_uj"
            try:
                int(energy.read_text())
                wrap = int((zone / "max_energy_range_uj").read_text()) + 1
            except PermissionError:
                raise SensorUnavailableError(
                    f"no RAPL: {energy} is not readable by this user (root only on most kernels)"
                ) from None
            except (OSError, ValueError) as err:
                raise SensorUnavailableError(f"no RAPL: cannot read {energy}: {err}") from None
            self.counters.append(Counter(label, 1e-6, wrap))
            self._files.append(energy)
        if not self._files:
            raise SensorUnavailableError(f"no RAPL: {root} has no intel-rapl package zone")

    def read(self) -> list[float]:
        return [int(f.read_text()) for f in self._files]


class NvmlSensor(CounterSensor):
    """GPU energy from NVML's total-energy counter (Volta and newer), one counter per GPU.

    Args:
        indices: which GPUs: NVML indices or UUIDs (see :func:`nvml_indices`); ``None``: all.
        nvml: the NVML binding module (``pynvml`` from ``nvidia-ml-py`` by default).

    Raises:
        SensorUnavailableError: no NVML library, no driver, no GPU, or no energy counter.
    """

    def __init__(self, indices: Sequence[int | str] | None = None, nvml: Any = None) -> None:
        super().__init__()
        self.name = "nvml"
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                raise SensorUnavailableError(
                    "no GPU energy: nvidia-ml-py is not installed (pip install lcag[gpu])"
                ) from None
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except Exception as err:  # NVMLError subclasses: no driver, no library
            raise SensorUnavailableError(f"no GPU energy: NVML cannot start ({err})") from None
        if count == 0:
            raise SensorUnavailableError("no GPU energy: NVML sees no GPU")
        self._handles = []
        for index in range(count) if indices is None else indices:
            try:
                if isinstance(index, str):  # a UUID from CUDA_VISIBLE_DEVICES
                    handle = nvml.nvmlDeviceGetHandleByUUID(index)
                else:
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu_name = nvml.nvmlDeviceGetName(handle)
            except Exception as err:  # NVMLError: no such GPU
                raise SensorUnavailableError(
                    f"no GPU energy: NVML cannot open GPU {index} ({err})"
                ) from None
            if isinstance(gpu_name, bytes):
                gpu_name = gpu_name.decode()
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception as err:  # pre-Volta GPUs have no energy counter
                raise SensorUnavailableError(
                    f"no GPU energy: GPU {index} ({gpu_name}) has no energy counter ({err})"
                ) from None
            self._handles.append(handle)
            self.counters.append(Counter(f"gpu{index}:{gpu_name}", 1e-3, 2**64))

    def read(self) -> list[float]:
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]


class CpuTimeEstimate(CounterSensor):
    """**Estimate**: CPU seconds of this process (all threads, plus waited-for children) times
    ``watts_per_core``. One busy core for one second counts ``watts_per_core`` joules; idle
    power, memory and GPUs are not included.

    Args:
        watts_per_core: assumed power of one busy core in watts.
        reason: why nothing was measured (goes into every report).
    """

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, reason: str = "") -> None:
        super().__init__()
        if not watts_per_core > 0:
            raise ConfigError(f"watts_per_core = {watts_per_core!r}: must be a positive number")
        self.name = "cpu-time-estimate"
        self.estimated = True
        self.watts_per_core = float(watts_per_core)
        self.reason = reason
        self.counters.append(Counter("process-cpu-seconds", self.watts_per_core, None))

    def read(self) -> list[float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return [own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "watts_per_core": self.watts_per_core}


def nvml_indices(cuda_indices: Sequence[int] | None) -> list[int | str] | None:
    """NVML's names for CUDA devices: CUDA numbers only the GPUs in ``CUDA_VISIBLE_DEVICES``
    (set by Slurm and by shared nodes), NVML numbers all of the node's.

    Args:
        cuda_indices: CUDA device indices; ``None``: every GPU this process may use.

    Returns:
        NVML indices (or ``GPU-...`` UUIDs where the variable lists UUIDs); ``None`` for all.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None if cuda_indices is None else list(cuda_indices)
    entries: list[int | str] = [
        int(e) if e.strip().isdigit() else e.strip() for e in visible.split(",") if e.strip()
    ]
    if cuda_indices is None:
        return entries
    return [entries[i] for i in cuda_indices]


def detect_sensors(
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
    gpu_indices: Sequence[int | str] | None = None,
    rapl_root: str | Path = RAPL_ROOT,
    use_gpu: bool = True,
) -> tuple[list[CounterSensor], list[str]]:
    """The sensors this machine offers, and why the others are missing.

    Returns ``([RaplSensor?, NvmlSensor?], reasons)``; when neither can be read, the list is
    ``[CpuTimeEstimate]`` whose ``reason`` joins the reasons.
    """
    sensors: list[CounterSensor] = []
    reasons: list[str] = []
    try:
        sensors.append(RaplSensor(rapl_root))
    except SensorUnavailableError as err:
        reasons.append(str(err))
    if not use_gpu:
        reasons.append("no GPU energy: GPU sensors not requested")
    elif not _has_nvidia_gpu():
        reasons.append("no GPU: this node has no NVIDIA GPU (no /proc/driver/nvidia)")
    else:
        try:
            sensors.append(NvmlSensor(gpu_indices))
        except SensorUnavailableError as err:
            reasons.append(str(err))
    if not sensors:
        sensors.append(CpuTimeEstimate(watts_per_core, reason="; ".join(reasons)))
    return sensors, reasons


def node_composition() -> dict[str, Any]:
    """Hostname, CPU model, core count and GPU names of this node (JSON-ready)."""
    cpu_model = platform.processor() or platform.machine()
    text = _read_text(Path("/proc/cpuinfo"))
    for line in (text or "").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "gpus": gpus,
    }


def _has_nvidia_gpu() -> bool:
    return Path("/proc/driver/nvidia").exists()


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), or ``None`` where unknown."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
