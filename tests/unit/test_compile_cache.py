from __future__ import annotations

from pathlib import Path

from components.vllm_adapter.compile_cache import CompileCache


def test_key_changes_with_config_and_cache_is_found_on_second_start(tmp_path: Path) -> None:
    parts = {"--model": "m", "--dtype": "float16", "vllm": "0.32.0"}
    first = CompileCache.prepare(str(tmp_path), parts, enabled=True)
    assert not first.was_cached
    (first.path / "torch_compile_cache").mkdir()
    (first.path / "torch_compile_cache" / "graph.bin").write_bytes(b"x")
    second = CompileCache.prepare(str(tmp_path), parts, enabled=True)
    assert second.key == first.key and second.was_cached
    other = CompileCache.prepare(str(tmp_path), {**parts, "--dtype": "bfloat16"}, enabled=True)
    assert other.key != first.key and not other.was_cached
    status = second.status()
    assert status == {
        "enabled": True, "current_key": first.key, "is_cached": True, "total_cached_configs": 1,
        "cache_dir": str(tmp_path / "compile"),
    }
