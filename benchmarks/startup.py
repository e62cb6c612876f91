"""Cold vs warm start: time from `bentoml serve` to /readyz 200, compile cache empty then
filled (ENFORCE_EAGER=false, so vLLM compiles; eager mode has nothing to cache).

    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.core.settings import EngineSettings  # noqa: E402
from components.vllm_adapter.bundled_model import converted_dir, ensure_converted  # noqa: E402
from harness.server import start_server  # noqa: E402


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="llm-startup-"))
    # The bundled model converted once beforehand: only the compile cache differs.
    source = ensure_converted(EngineSettings().cache_dir)  # type: ignore[call-arg]
    shutil.copytree(source, converted_dir(str(cache)))
    rows = []
    for attempt in ("cold", "warm"):
        started = time.monotonic()
        server = start_server(cache, env={"VLLM_CACHE_DIR": str(cache), "ENFORCE_EAGER": "false"}, name=attempt)
        try:
            server.wait_ready(900)
            ready_s = time.monotonic() - started
            warm = httpx.get(f"{server.url}/healthz", timeout=10).json()["warmup_cache"]
        finally:
            server.stop()
        rows.append({"start": attempt, "ready_s": round(ready_s, 1), "cache_found": warm["is_cached"],
                     "key": warm["current_key"]})
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "docs/benchmarks/startup.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
