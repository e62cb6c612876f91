"""vLLM's compile cache under VLLM_CACHE_DIR, one folder per configuration that changes
compiled code, so that a restart with the same configuration skips torch.compile."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CompileCache:
    root: Path
    key: str
    enabled: bool
    was_cached: bool

    @property
    def path(self) -> Path:
        return self.root / self.key

    @classmethod
    def prepare(cls, cache_dir: str, parts: dict[str, Any], enabled: bool) -> CompileCache:
        root = Path(cache_dir) / "compile"
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        path = root / key
        was_cached = path.is_dir() and any(path.iterdir())
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(parts, sort_keys=True, indent=2))
        # config.json alone does not make a cache: only what vLLM wrote counts.
        was_cached = was_cached and any(p.name != "config.json" for p in path.iterdir())
        return cls(root, key, enabled, was_cached)

    def status(self) -> dict[str, Any]:
        configs = [p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        return {
            "enabled": self.enabled,
            "current_key": self.key,
            "is_cached": self.was_cached,
            "total_cached_configs": sum(1 for p in configs if any(q.name != "config.json" for q in p.iterdir())),
            "cache_dir": str(self.root),
        }
