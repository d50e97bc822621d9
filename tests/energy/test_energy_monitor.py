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
            time.sleep(0.02)
        with monitor.phase("inference"):
            assert monitor.current_phase == "inference"
        assert monitor.current_phase == "other"
    totals = monitor.totals()
    assert set(totals) == {"train", "inference", "other"}
    assert totals["train"]["joules"] == pytest.approx(8.0 + 4.0)
    assert totals["inference"]["joules"] == pytest.approx(3.0 + 1.5)
    assert totals["other"]["joules"] == pytest.approx(0.5 + 0.1 + 0.2)
    assert totals["train"]["seconds"] >= 0.02
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
    monitor.start()
    monitor.stop()
    monitor.stop()
    assert monitor.totals() == {
        "train": {"joules": pytest.approx(5.0), "seconds": pytest.approx(0, abs=0.1)}
    }
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
    monitor = EnergyMonitor(sensors=[sensor], poll_seconds=0.05).start()
    [poller] = [t for t in threading.enumerate() if t not in others]
    assert poller.name == "lcag-energy"
    monitor.switch("train")
    time.sleep(0.4)
    assert sensor.reads >= 5  # start, switch, and background reads
    assert monitor.totals()["train"]["joules"] >= 3.0
    monitor.stop()
    assert not poller.is_alive()
    stopped = sensor.reads
    time.sleep(0.15)
    assert sensor.reads == stopped
    assert monitor.totals()["train"]["joules"] == pytest.approx(stopped - 2)
    assert 0.4 <= monitor.totals()["train"]["seconds"] < 2.0


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
