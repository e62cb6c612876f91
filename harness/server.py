"""Start and stop a real `bentoml serve` of this service (tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM, as Kubernetes sends it. If it hangs, SIGKILL every process it started
        (BentoML's workers run in sessions of their own, out of our process group)."""
        if self.process.poll() is None:
            try:
                tree = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            _, alive = psutil.wait_procs(tree, timeout=10)
            for proc in alive:
                proc.kill()
        return self.process.returncode


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    """Poll `predicate` until true or `timeout` seconds pass: a bounded wait, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextmanager
def running_server(log_dir: Path, env: dict[str, str] | None = None, name: str = "server") -> Iterator[Server]:
    """A started, ready server, stopped by SIGTERM on exit (its exit status in `returncode`)."""
    server = start_server(log_dir, env, name)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def start_server(log_dir: Path, env: dict[str, str] | None = None, name: str = "server") -> Server:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    full_env = {
        **os.environ,
        "BENTOML_CONFIG": str(ROOT / "configuration.yaml"),
        "BENTOML_HOME": str(log_dir / "bentoml-home"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        # Our own bentoml executable and fixed arguments.
        process = subprocess.Popen(  # noqa: S603
            [BENTOML, "serve", "service:LLMService", "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, port, log_path)


def host_cpu() -> dict[str, object]:
    """The CPU every committed figure is recorded beside: model, the vector and matrix
    flags that decide speed here (AVX-512, AMX, native bfloat16), cores."""
    model, flags = "unknown", set[str]()
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"model": model, "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))), "cores": os.cpu_count()}
