"""The energy monitor: joules and seconds per phase of a run (``train``, ``inference``, ...).

    with EnergyMonitor() as monitor:
        with monitor.phase("train"):
            ...
        with monitor.phase("inference"):
            ...
    monitor.write_json("runs/x/energy.json")

The monitor reads every sensor whenever the phase changes and, in a background thread, every
``poll_seconds`` (so that a wrapping RAPL counter is never read less often than it wraps).
Energy read while no phase is active counts as ``"other"``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lcag.energy.sensors import (
    DEFAULT_WATTS_PER_CORE,
    RAPL_ROOT,
    CounterSensor,
    CpuTimeEstimate,
    detect_sensors,
    node_composition,
)
from lcag.files import atomic_write_json

__all__ = ["OTHER", "EnergyMonitor", "PhaseTotals", "energy_summary"]

OTHER = "other"

PhaseTotals = dict[str, dict[str, float]]
"""``{phase: {"joules": J, "seconds": s}}``."""


class EnergyMonitor:
    """Measures a run's energy per phase with the best sensors the node offers.

    Args:
        sensors: the sensors to read; ``None`` detects them (RAPL, NVML, else the estimate).
        watts_per_core: the estimate's power per busy core (W), used only without sensors.
        poll_seconds: background read interval; ``0`` reads at phase changes only.
        node_sensors: read node-wide sensors (RAPL, all GPUs). In a multi-process run only one
            process per node should (``local_rank == 0``); the others then count only their own
            estimated CPU time when the node has no sensors, and nothing when it has.
        gpu_indices: NVML indices (or UUIDs) of the GPUs to read (``None``: all).
        use_gpu: read GPU sensors at all (``False`` for a CPU run on a node with GPUs).
        rapl_root: where the powercap tree lives (tests point it at a recorded copy).
    """

    def __init__(
        self,
        sensors: Sequence[CounterSensor] | None = None,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        poll_seconds: float = 10.0,
        node_sensors: bool = True,
        gpu_indices: Sequence[int | str] | None = None,
        rapl_root: str | Path = RAPL_ROOT,
        use_gpu: bool = True,
    ) -> None:
        if sensors is None:
            found, reasons = detect_sensors(watts_per_core, gpu_indices, rapl_root, use_gpu)
            if not node_sensors and not any(s.estimated for s in found):
                found = []  # another process on this node reads the node-wide counters
            sensors, self.unavailable = found, reasons
        else:
            self.unavailable = []
        self.sensors = list(sensors)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._joules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._seconds: dict[str, float] = defaultdict(float)
        self._phase = OTHER
        self._last_time: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EnergyMonitor:
        """Set the counters' origin and start background polling. Idempotent."""
        if self._running:
            return self
        with self._lock:
            for sensor in self.sensors:
                sensor.joules_since_last()
            self._last_time = time.perf_counter()
            self._running = True
        if self.poll_seconds > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="lcag-energy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last reading and stop polling."""
        if not self._running:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._accumulate()
        self._running = False

    def __enter__(self) -> EnergyMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- phases ------------------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        return self._phase

    def switch(self, phase: str | None) -> None:
        """Charge what was used so far to the current phase, then make ``phase`` current
        (``None``: no phase, counted as ``"other"``)."""
        self._accumulate()
        self._phase = phase or OTHER

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the block's energy under ``name``; the previous phase resumes afterwards."""
        previous = self._phase
        self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    # -- results -----------------------------------------------------------------------------
    @property
    def estimated(self) -> bool:
        """True when any figure comes from the CPU-time estimate rather than a sensor."""
        return any(s.estimated for s in self.sensors)

    @property
    def estimate_reason(self) -> str | None:
        """Why the figures are estimated (which sensors are missing and why), else ``None``."""
        for sensor in self.sensors:
            if isinstance(sensor, CpuTimeEstimate):
                return sensor.reason or "estimate requested"
        return None

    def totals(self) -> PhaseTotals:
        """Joules and wall seconds per phase so far (reads the sensors first)."""
        if self._running:
            self._accumulate()
        with self._lock:
            phases = set(self._seconds) | set(self._joules)
            return {
                p: {"joules": sum(self._joules[p].values()), "seconds": self._seconds[p]}
                for p in sorted(phases)
            }

    def describe(self) -> dict[str, Any]:
        """Sensors, whether the figures are estimated and why, and the node's composition."""
        return {
            "estimated": self.estimated,
            "estimate_reason": self.estimate_reason,
            "sensors": [s.describe() for s in self.sensors],
            "unavailable": list(self.unavailable),
            "node": node_composition(),
        }

    def report(self) -> dict[str, Any]:
        """:meth:`describe` plus the per-phase and total energy (JSON-ready)."""
        return {**self.describe(), **energy_summary(self.totals())}

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`report` to ``path`` (atomically) and return the path."""
        return atomic_write_json(path, self.report())

    # -- internals ---------------------------------------------------------------------------
    def _accumulate(self) -> None:
        with self._lock:
            if not self._running or self._last_time is None:
                return
            now = time.perf_counter()
            self._seconds[self._phase] += now - self._last_time
            self._last_time = now
            for sensor in self.sensors:
                self._joules[self._phase][sensor.name] += sensor.joules_since_last()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._accumulate()


def energy_summary(totals: PhaseTotals) -> dict[str, Any]:
    """``{"phases": {p: {joules, seconds, watts}}, "total": {...}}`` from per-phase totals."""

    def entry(joules: float, seconds: float) -> dict[str, float]:
        return {
            "joules": round(joules, 3),
            "seconds": round(seconds, 3),
            "watts": round(joules / seconds, 3) if seconds > 0 else 0.0,
        }

    phases = {p: entry(t["joules"], t["seconds"]) for p, t in totals.items()}
    total = entry(
        sum(t["joules"] for t in totals.values()), sum(t["seconds"] for t in totals.values())
    )
    return {"phases": phases, "total": total}
