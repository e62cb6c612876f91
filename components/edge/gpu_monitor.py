"""GPU telemetry with NVML (`nvidia-ml-py`), sampled in a background thread, never on the
request path. Without a GPU or driver: one log line, no gauges, nulls in /healthz."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from components.core.metrics import Metrics

logger = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str
    name: str
    memory_used_gb: float
    memory_total_gb: float
    utilization_percent: float
    temperature_celsius: float | None
    power_watts: float | None


def _load_nvml() -> ModuleType:
    import pynvml

    return pynvml


class GpuMonitor:
    def __init__(self, metrics: Metrics | None, interval_s: float = 5.0, nvml: Any = None) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._nvml = nvml
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: list[GpuSample] = []
        self.available = False

    def start(self) -> bool:
        try:
            nvml = self._nvml or _load_nvml()
            nvml.nvmlInit()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            self._nvml = nvml
        except Exception as exc:  # noqa: BLE001 - no library, no driver, no device: all the same to us
            logger.info("GPU monitoring off: NVML unavailable (%s)", type(exc).__name__)
            return False
        if not self._handles:
            logger.info("GPU monitoring off: NVML found no GPU")
            return False
        self.available = True
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not kill the monitor
                logger.warning("GPU sample failed", exc_info=True)

    def _temperature(self, handle: Any) -> float | None:
        nvml = self._nvml
        try:
            # nvmlDeviceGetTemperature is deprecated (removed in CUDA 14); the V call first.
            if hasattr(nvml, "nvmlDeviceGetTemperatureV"):
                return float(nvml.nvmlDeviceGetTemperatureV(handle, nvml.NVML_TEMPERATURE_GPU))
            return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        except Exception:  # noqa: BLE001 - older drivers lack the V call, some GPUs any sensor
            try:
                return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
            except Exception:  # noqa: BLE001
                return None

    def sample(self) -> list[GpuSample]:
        nvml = self._nvml
        samples = []
        for index, handle in enumerate(self._handles):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            try:
                power: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception:  # noqa: BLE001 - not every board reports power
                power = None
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = nvml.nvmlDeviceGetName(handle)
            samples.append(
                GpuSample(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_gb=round(memory.used / GIB, 3),
                    memory_total_gb=round(memory.total / GIB, 3),
                    utilization_percent=float(utilization.gpu),
                    temperature_celsius=self._temperature(handle),
                    power_watts=power,
                )
            )
        self.latest = samples
        if self.metrics is not None:
            self._export(self.metrics, samples)
        return samples

    @staticmethod
    def _export(m: Metrics, samples: list[GpuSample]) -> None:
        for s in samples:
            labels = (str(s.index), s.uuid)
            m.gpu_memory.labels(*labels).set(s.memory_used_gb)
            m.gpu_memory_total.labels(*labels).set(s.memory_total_gb)
            m.gpu_utilization.labels(*labels).set(s.utilization_percent)
            if s.temperature_celsius is not None:
                m.gpu_temperature.labels(*labels).set(s.temperature_celsius)
            if s.power_watts is not None:
                m.gpu_power.labels(*labels).set(s.power_watts)

    def summary(self) -> dict[str, Any]:
        """The /healthz GPU fields: totals over GPUs, or nulls without NVML."""
        if not self.latest:
            return {"gpu_memory_usage_gb": None, "gpu_utilization_percent": None, "gpu_temperature_celsius": None}
        temps = [s.temperature_celsius for s in self.latest if s.temperature_celsius is not None]
        return {
            "gpu_memory_usage_gb": round(sum(s.memory_used_gb for s in self.latest), 3),
            "gpu_utilization_percent": round(sum(s.utilization_percent for s in self.latest) / len(self.latest), 1),
            "gpu_temperature_celsius": max(temps) if temps else None,
        }

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutdown must go on
                logger.debug("nvmlShutdown failed", exc_info=True)
