"""The sensors' joules from recorded counter sequences (fake hardware, real arithmetic)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from lcag.energy import (
    CounterSensor,
    CpuTimeEstimate,
    EnergyMonitor,
    NvmlSensor,
    RaplSensor,
    SensorUnavailableError,
    detect_sensors,
)
from lcag.energy.sensors import Counter
from lcag.errors import ConfigError

MAX_0 = 262_143_328_850  # a real package's max_energy_range_uj
MAX_1 = 65_712_999_613


def write_zone(root: Path, zone: str, name: str, energy: int, max_range: int) -> None:
    path = root / zone
    path.mkdir(parents=True, exist_ok=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range}\n")


def set_energy(root: Path, zone: str, energy: int) -> None:
    (root / zone / "energy_uj").write_text(f"{energy}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, a core sub-zone of package 0, and a platform (psys) zone."""
    root = tmp_path / "powercap"
    write_zone(root, "intel-rapl:0", "package-0", 1_000_000, MAX_0)
    write_zone(root, "intel-rapl:1", "package-1", 5_000_000, MAX_1)
    write_zone(root, "intel-rapl:0:0", "core", 400_000, MAX_0)
    write_zone(root, "intel-rapl:2", "psys", 9_000_000, MAX_0)
    (root / "intel-rapl").mkdir()  # the control type directory has no zone files
    return root


def test_rapl_reads_top_level_packages_only(powercap):
    sensor = RaplSensor(powercap)
    assert [c.name for c in sensor.counters] == ["package-0", "package-1"]
    assert [c.wrap for c in sensor.counters] == [MAX_0 + 1, MAX_1 + 1]
    assert sensor.describe() == {
        "name": "rapl",
        "estimated": False,
        "counters": ["package-0", "package-1"],
    }


def test_rapl_joules_from_a_recorded_sequence_with_a_wrap(powercap):
    sensor = RaplSensor(powercap)
    # (package-0, package-1, core sub-zone, psys) in microjoules, read between calls
    recorded = [
        (1_000_000, 5_000_000, 400_000, 9_000_000),
        (3_500_000, 6_250_000, 2_000_000, 90_000_000),
        (MAX_0 - 500_000, 7_000_000, 3_000_000, 91_000_000),
        (1_500_000, 7_000_000, 3_000_000, 92_000_000),  # package-0 wraps
        (1_500_000, 250_000, 3_000_000, 93_000_000),  # package-1 wraps
    ]
    expected = [
        0.0,
        2.5 + 1.25,
        (MAX_0 - 500_000 - 3_500_000) * 1e-6 + 0.75,
        (1_500_000 - (MAX_0 - 500_000) + MAX_0 + 1) * 1e-6,
        (250_000 - 7_000_000 + MAX_1 + 1) * 1e-6,
    ]
    joules = []
    for p0, p1, core, psys in recorded:
        set_energy(powercap, "intel-rapl:0", p0)
        set_energy(powercap, "intel-rapl:1", p1)
        set_energy(powercap, "intel-rapl:0:0", core)
        set_energy(powercap, "intel-rapl:2", psys)
        joules.append(sensor.joules_since_last())
    # integer microjoules times 1e-6 in float64: rel 1e-16, abs ~1e-11 at 65,706 J
    assert joules == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert joules[3] == pytest.approx(2.000001, abs=1e-9)
    assert joules[4] == pytest.approx(65_706.249614, abs=1e-9)


def test_rapl_on_a_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no-powercap"
    with pytest.raises(
        SensorUnavailableError, match=re.escape(f"no RAPL: {missing} does not exist")
    ):
        RaplSensor(missing)


def test_rapl_without_package_zones_names_the_directory(tmp_path):
    root = tmp_path / "powercap"
    write_zone(root, "intel-rapl:0:0", "core", 1, MAX_0)
    write_zone(root, "intel-rapl:1", "psys", 1, MAX_0)
    with pytest.raises(
        SensorUnavailableError, match=re.escape(f"{root} has no intel-rapl package zone")
    ):
        RaplSensor(root)


def test_rapl_with_an_unreadable_counter_names_the_file(powercap):
    (powercap / "intel-rapl:1" / "max_energy_range_uj").unlink()
    with pytest.raises(SensorUnavailableError, match=r"cannot read .*intel-rapl:1/energy_uj"):
        RaplSensor(powercap)


class FakeNvml:
    """The NVML calls NvmlSensor makes (NVML's names), replaying millijoule counters per GPU."""

    def __init__(self, names: list[str | bytes], recorded: list[list[int]], fail_init=False):
        self.names = names
        self.recorded = [iter(values) for values in recorded]
        self.fail_init = fail_init
        self.broken: set[int] = set()

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise OSError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:  # noqa: N802
        return self.names[handle]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:  # noqa: N802
        if handle in self.broken:
            raise RuntimeError("Not Supported")
        return next(self.recorded[handle])


def test_nvml_joules_from_a_recorded_sequence_with_a_64_bit_wrap():
    gpu0 = [1_000, 1_000, 21_000, 2**64 - 3_000, 7_000]  # the first read checks the counter
    gpu1 = [50, 50, 1_050, 2_050, 2_550]
    fake = FakeNvml([b"NVIDIA A100-SXM4-40GB", "Tesla V100"], [gpu0, gpu1])
    sensor = NvmlSensor(nvml=fake)
    assert [c.name for c in sensor.counters] == ["gpu0:NVIDIA A100-SXM4-40GB", "gpu1:Tesla V100"]
    joules = [sensor.joules_since_last() for _ in range(4)]
    # integer millijoules times 1e-3 in float64 (the wrap near 2^64 rounds to ~1e-16 relative)
    assert joules == pytest.approx(
        [0.0, 20.0 + 1.0, (2**64 - 3_000 - 21_000) * 1e-3 + 1.0, 10.0 + 0.5]
    )


def test_nvml_reads_only_the_gpus_asked_for():
    fake = FakeNvml(["A", "B", "C"], [[0], [0, 0, 4_000], [0]])
    sensor = NvmlSensor(indices=[1], nvml=fake)
    assert [c.name for c in sensor.counters] == ["gpu1:B"]
    sensor.joules_since_last()
    assert sensor.joules_since_last() == pytest.approx(4.0)


def test_nvml_that_cannot_start_is_unavailable():
    fake = FakeNvml(["A"], [[0]], fail_init=True)
    with pytest.raises(SensorUnavailableError, match=r"NVML cannot start.*Library Not Found"):
        NvmlSensor(nvml=fake)


def test_nvml_without_gpus_is_unavailable():
    with pytest.raises(SensorUnavailableError, match="sees no GPU"):
        NvmlSensor(nvml=FakeNvml([], []))


def test_a_gpu_without_energy_counter_is_named():
    fake = FakeNvml(["A", b"Quadro P400"], [[0], [0]])
    fake.broken.add(1)
    with pytest.raises(SensorUnavailableError, match=r"GPU 1 \(Quadro P400\) has no energy"):
        NvmlSensor(nvml=fake)


class Recorded(CounterSensor):
    def __init__(self, values: list[list[float]], counters: list[Counter]) -> None:
        super().__init__()
        self.name = "recorded"
        self.values = iter(values)
        self.counters.extend(counters)

    def read(self) -> list[float]:
        return next(self.values)


def test_a_counter_without_modulus_going_backwards_is_named():
    sensor = Recorded(
        [[10.0, 5.0], [12.0, 7.0], [13.0, 6.0]],
        [Counter("steady", 1.0, 100), Counter("meter-b", 1.0, None)],
    )
    sensor.joules_since_last()
    assert sensor.joules_since_last() == pytest.approx(4.0)
    with pytest.raises(SensorUnavailableError, match=r"recorded: counter 'meter-b' went backwards"):
        sensor.joules_since_last()


def burn(seconds: float) -> int:
    total, end = 0, time.process_time() + seconds
    while time.process_time() < end:
        total += sum(i * i for i in range(1000))
    return total


@pytest.mark.parametrize("watts", [4.0, 25.0])
def test_cpu_time_estimate_is_cpu_seconds_times_watts(watts):
    sensor = CpuTimeEstimate(watts_per_core=watts, reason="test")
    assert sensor.estimated
    sensor.joules_since_last()
    start = time.process_time()
    burn(0.3)
    cpu_seconds = time.process_time() - start
    joules = sensor.joules_since_last()
    # Both clocks count this whole process's CPU time (getrusage, CLOCK_PROCESS_CPUTIME_ID), so
    # load and other threads change both alike. They differ by the statements between the
    # readings (well under 1 ms of CPU) and by getrusage's granularity, at worst one clock tick
    # per reading where the kernel accounts CPU time by ticks.
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert joules == pytest.approx(cpu_seconds * watts, rel=0, abs=watts * (2 * tick + 1e-3))
    assert sensor.describe()["watts_per_core"] == watts
    assert sensor.describe()["estimated"] is True


@pytest.mark.parametrize("watts", [0, -5.0, float("nan")])
def test_cpu_time_estimate_refuses_a_non_positive_power(watts):
    with pytest.raises(ConfigError, match="watts_per_core"):
        CpuTimeEstimate(watts_per_core=watts)


NODE_MAY_HAVE_SENSORS = Path("/sys/class/powercap").exists() or Path("/proc/driver/nvidia").exists()


@pytest.mark.skipif(NODE_MAY_HAVE_SENSORS, reason="this node may measure instead of estimate")
def test_this_node_has_no_sensor_so_the_monitor_estimates():
    sensors, reasons = detect_sensors()
    assert [type(s) for s in sensors] == [CpuTimeEstimate]
    assert len(reasons) == 2
    monitor = EnergyMonitor(poll_seconds=0)
    assert monitor.estimated is True
    assert "RAPL" in monitor.estimate_reason
    assert "GPU" in monitor.estimate_reason
    report = monitor.report()
    assert report["estimated"] is True
    assert report["estimate_reason"] == monitor.estimate_reason
    assert report["sensors"][0]["name"] == "cpu-time-estimate"
    assert report["unavailable"] == reasons
    assert report["node"]["cpu_cores"] >= 1
    assert report["node"]["gpus"] == []


def test_a_powercap_tree_gives_a_measured_monitor(powercap):
    sensors, reasons = detect_sensors(rapl_root=powercap)
    assert [type(s) for s in sensors] == [RaplSensor]
    assert not any("RAPL" in r for r in reasons)
    monitor = EnergyMonitor(rapl_root=powercap, poll_seconds=0)
    assert monitor.estimated is False
    assert monitor.estimate_reason is None
    assert monitor.report()["estimated"] is False


def test_without_node_sensors_a_measured_node_counts_nothing(powercap):
    monitor = EnergyMonitor(rapl_root=powercap, poll_seconds=0, node_sensors=False)
    assert monitor.sensors == []
    assert monitor.estimated is False


def test_nvml_indices_follow_cuda_visible_devices(monkeypatch):
    from lcag.energy.sensors import nvml_indices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_indices(None) is None
    assert nvml_indices([1]) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert nvml_indices(None) == [3, 1]
    assert nvml_indices([0]) == [3]  # CUDA's device 0 is the node's GPU 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a,GPU-11bc")
    assert nvml_indices([1]) == ["GPU-11bc"]
