"""The NVML path against a fake NVML module (unit test of pure logic), and the no-GPU path."""

from __future__ import annotations

from types import SimpleNamespace

from components.edge.gpu_monitor import GIB, GpuMonitor


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.shut = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(4 + handle) * GIB, total=16 * GIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=50 + 10 * handle)

    def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
        return 60 + handle

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 70_000

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "Tesla T4"


class RecordingGauge:
    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def labels(self, *labels: str) -> RecordingGauge:
        self._labels = labels
        return self

    def set(self, value: float) -> None:
        self.values[self._labels] = value


def fake_metrics() -> SimpleNamespace:
    names = ("gpu_memory", "gpu_memory_total", "gpu_utilization", "gpu_temperature", "gpu_power")
    return SimpleNamespace(**{name: RecordingGauge() for name in names})


def test_samples_every_gpu_with_gpu_and_uuid_labels() -> None:
    metrics = fake_metrics()
    nvml = FakeNvml()
    monitor = GpuMonitor(metrics, interval_s=3600, nvml=nvml)  # type: ignore[arg-type]
    assert monitor.start()
    assert metrics.gpu_memory.values == {("0", "GPU-0"): 4.0, ("1", "GPU-1"): 5.0}
    assert metrics.gpu_temperature.values[("1", "GPU-1")] == 61.0
    assert metrics.gpu_power.values[("0", "GPU-0")] == 70.0
    assert monitor.summary() == {"gpu_memory_usage_gb": 9.0, "gpu_utilization_percent": 55.0, "gpu_temperature_celsius": 61.0}
    monitor.stop()
    assert nvml.shut


def test_deprecated_temperature_call_is_the_fallback() -> None:
    class OldNvml(FakeNvml):
        def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
            raise RuntimeError("NVML_ERROR_FUNCTION_NOT_FOUND")  # an older driver

        def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
            return 42

    monitor = GpuMonitor(None, interval_s=3600, nvml=OldNvml(1))
    monitor.start()
    assert monitor.latest[0].temperature_celsius == 42.0
    monitor.stop()


def test_without_nvml_nothing_crashes_and_fields_are_null() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("NVML Shared Library Not Found")

    metrics = fake_metrics()
    monitor = GpuMonitor(metrics, nvml=Broken())  # type: ignore[arg-type]
    assert monitor.start() is False
    assert monitor.summary() == {"gpu_memory_usage_gb": None, "gpu_utilization_percent": None, "gpu_temperature_celsius": None}
    assert metrics.gpu_memory.values == {}
    monitor.stop()


def test_real_nvml_on_this_machine_degrades_cleanly() -> None:
    """On a machine without a GPU the real pynvml fails to initialise: same path."""
    monitor = GpuMonitor(None)
    started = monitor.start()
    assert started == bool(monitor.latest)
    monitor.stop()
