"""EnergyMonitor: joules and seconds per phase from a recorded sensor, and background polling."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lcag.energy import CounterSensor, EnergyMonitor, energy_summary
from lcag.energy.sensors import Counter


class Recorded(CounterSensor):
    """A meter replaying recorded readings (in millijoules); the last one repeats."""

    def __init__(self, name: str, readings: list[int], wrap: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.readings = list(readings)
        self.reads = 0
        self.counters.append(Counter(f"{name}-meter", 1e-3, wrap))

    def read(self) -> list[float]:
        value = self.readings[min(self.reads, len(self.readings) - 1)]
        self.reads += 1
        return [value]


class Ticking(CounterSensor):
    """A meter that gains 1 J at every read (so energy grows with the number of polls)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "ticking"
        self.reads = 0
        self.counters.append(Counter("tick", 1.0, None))

    def read(self) -> list[float]:
        self.reads += 1
        return [float(self.reads)]


def test_phases_get_the_recorded_deltas():
    # reads: start, enter train, leave train, enter inference, leave inference, stop
    gpu = Recorded("gpu", [1_000, 1_500, 9_500, 9_600, 12_600, 12_800])
    cpu = Recorded("cpu", [100, 100, 4_100, 4_100, 600, 600], wrap=5_000)  # wraps
    monitor = EnergyMonitor(sensors=[gpu, cpu], poll_seconds=0)
    with monitor:
        with monitor.phase("train"):
            before = time.perf_counter()  # the monitor's clock
            time.sleep(0.02)
            slept = time.perf_counter() - before
        with monitor.phase("inference"):
            assert monitor.current_phase == "inference"
        assert monitor.current_phase == "other"
    totals = monitor.totals()
    assert set(totals) == {"train", "inference", "other"}
    assert totals["train"]["joules"] == pytest.approx(8.0 + 4.0)
    assert totals["inference"]["joules"] == pytest.approx(3.0 + 1.5)
    assert totals["other"]["joules"] == pytest.approx(0.5 + 0.1 + 0.2)
    # Sums of whole millijoules times 1e-3 in float64: off by ~1e-15, far inside approx's
    # default rel=1e-6. The phase's seconds enclose the sleep, however long it really took.
    assert totals["train"]["seconds"] >= slept
    assert gpu.reads == cpu.reads == 6
    assert monitor.estimated is False


def test_phases_nest_and_resume_the_outer_phase():
    # reads: start, enter train, enter inference, leave inference, leave train, stop
    sensor = Recorded("meter", [0, 500, 1_500, 3_500, 6_500, 10_500])
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0).start()
    with monitor.phase("train"):
        with monitor.phase("inference"):
            pass
        assert monitor.current_phase == "train"
    monitor.stop()
    totals = monitor.totals()
    assert totals["train"]["joules"] == pytest.approx(1.0 + 3.0)
    assert totals["inference"]["joules"] == pytest.approx(2.0)
    assert totals["other"]["joules"] == pytest.approx(0.5 + 4.0)


def test_switching_to_none_charges_other():
    sensor = Recorded("meter", [0, 0, 2_000, 2_250])
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0).start()
    monitor.switch("train")
    monitor.switch(None)
    assert monitor.current_phase == "other"
    totals = monitor.totals()
    assert totals["train"]["joules"] == pytest.approx(2.0)
    assert totals["other"]["joules"] == pytest.approx(0.25)


def test_nothing_is_counted_before_start_or_after_stop():
    sensor = Recorded("meter", [2_000, 7_000, 100_000])
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0)
    monitor.switch("train")  # not started: no reading
    assert sensor.reads == 0
    before = time.perf_counter()
    monitor.start()
    monitor.stop()
    elapsed = time.perf_counter() - before
    monitor.stop()
    totals = monitor.totals()
    assert set(totals) == {"train"}
    assert totals["train"]["joules"] == pytest.approx(5.0)
    # only the time between start and stop counts, however slow this machine is
    assert 0 <= totals["train"]["seconds"] <= elapsed
    assert sensor.reads == 2


def test_summary_watts_are_joules_per_second():
    summary = energy_summary(
        {
            "train": {"joules": 120.0, "seconds": 4.0},
            "inference": {"joules": 9.0, "seconds": 0.5},
            "other": {"joules": 1.0, "seconds": 0.0},
        }
    )
    assert summary["phases"]["train"] == {"joules": 120.0, "seconds": 4.0, "watts": 30.0}
    assert summary["phases"]["inference"]["watts"] == pytest.approx(18.0)
    assert summary["phases"]["other"]["watts"] == 0.0
    assert summary["total"] == {"joules": 130.0, "seconds": 4.5, "watts": pytest.approx(28.889)}


def test_write_json_writes_the_report_atomically(tmp_path):
    sensor = Recorded("meter", [0, 0, 3_000, 3_000])
    with EnergyMonitor(sensors=[sensor], poll_seconds=0) as monitor, monitor.phase("train"):
        time.sleep(0.01)
    seconds = monitor.totals()["train"]["seconds"]
    path = monitor.write_json(tmp_path / "run" / "energy.json")
    assert path == tmp_path / "run" / "energy.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["energy.json"]
    report = json.loads(path.read_text())
    train = report["phases"]["train"]
    assert train["joules"] == 3.0
    assert train["seconds"] == round(seconds, 3)
    assert train["watts"] == round(3.0 / seconds, 3)
    assert report["total"]["joules"] == 3.0
    assert report["estimated"] is False
    assert report["estimate_reason"] is None
    assert report["sensors"] == [{"name": "meter", "estimated": False, "counters": ["meter-meter"]}]
    assert report["node"]["cpu_cores"] >= 1


def test_the_poller_keeps_reading_without_phase_changes():
    sensor = Ticking()
    others = set(threading.enumerate())
    started = time.perf_counter()  # the monitor's clock
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0.05).start()
    [poller] = [t for t in threading.enumerate() if t not in others]
    assert poller.name == "lcag-energy"
    before_switch = time.perf_counter()
    monitor.switch("train")
    switched = time.perf_counter()
    # Wait for 3 background reads (after start and switch) however slowly the poller thread
    # gets scheduled; the deadline only stops a poller that never reads from hanging the suite.
    deadline = switched + 120
    while sensor.reads < 5 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert sensor.reads >= 5, f"{sensor.reads - 2} background reads in 120 s"
    assert monitor.totals()["train"]["joules"] >= 3.0  # 1 J per read since the switch
    stopping = time.perf_counter()
    monitor.stop()
    stopped_at = time.perf_counter()
    assert not poller.is_alive()
    stopped = sensor.reads
    time.sleep(0.15)
    assert sensor.reads == stopped
    # whole joules: exact in float64
    assert monitor.totals()["train"]["joules"] == stopped - 2
    # The train phase runs from inside switch() to inside stop(): bounded by the clock read
    # around them, whatever the machine's speed.
    assert stopping - switched <= monitor.totals()["train"]["seconds"] <= stopped_at - before_switch
    # Never more often than every poll_seconds (Event.wait waits at least that long; +1 for
    # its timer's rounding): the reads beyond start, switch, totals() and stop are the poller's.
    assert stopped - 4 <= (stopped_at - started) / 0.05 + 1


def test_a_monitor_restarts_after_stop_from_a_new_origin():
    # reads: start, enter, leave, stop; twice
    sensor = Recorded("meter", [0, 0, 1_000, 1_000, 50_000, 50_000, 51_000, 51_000])
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0)
    with monitor, monitor.phase("fit"):
        pass
    with monitor, monitor.phase("test"):
        pass
    totals = monitor.totals()
    assert totals["fit"]["joules"] == pytest.approx(1.0)
    assert totals["test"]["joules"] == pytest.approx(1.0)
    assert totals["other"]["joules"] == 0.0  # not the 49 J between the runs
