#!/usr/bin/env bash
# Container smoke test, built and run on this machine: `make test-container`.
#
# 1. starts a private dockerd (its own data root and socket; stopped by its PID at the end),
# 2. builds a local Debian bookworm base with Python 3.11 (debootstrap: no registry is
#    reachable here), carrying the host's CA bundle (egress re-signs TLS),
# 3. builds the CPU bento and `bentoml containerize`s it on that base; torch==2.13.0+cpu is
#    not on PyPI, so the wheel from pip's local find-links folder goes into the bento,
# 4. runs the image as BentoML's non-root user with a port mapping, waits for /readyz, sends
#    a chat completion with the openai client, `docker stop`s it (SIGTERM to PID 1) while 4
#    streams are in flight, and checks that they completed and that it exited 0 within the
#    grace period (checks.sh: a failed check stops the script, whatever `set -e` does),
# 5. removes the images and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
WORK=${SMOKE_WORK:-/tmp/llm-container-smoke}
PORT=${SMOKE_PORT:-18080}
IMAGE=llm-service-cpu:smoke
# shellcheck source=deploy/container/lib.sh
source deploy/container/lib.sh
docker_env

cleanup() {
  set +e
  [ -n "${streams:-}" ] && kill "$streams" 2>/dev/null
  docker rm -f llm-smoke >/dev/null 2>&1
  docker rmi -f "$IMAGE" "$BASE" llm-local/bookworm:minbase >/dev/null 2>&1
  stop_dockerd
}
trap cleanup EXIT

echo "== dockerd"
start_dockerd
echo "== base image (debootstrap bookworm minbase + python3.11)"
build_base
echo "== CPU bento on the local base"
build_cpu_image "$IMAGE"

echo "== run"
docker run -d --name llm-smoke --shm-size 1g -p "127.0.0.1:$PORT:8080" -e API_KEYS=sk-smoke-key "$IMAGE" >/dev/null
[ "$(docker inspect -f '{{.Config.User}}' llm-smoke)" = "bentoml" ]
for _ in $(seq 300); do
  curl -fsS "localhost:$PORT/readyz" >/dev/null 2>&1 && break
  [ "$(docker inspect -f '{{.State.Running}}' llm-smoke)" = "true" ] || { docker logs llm-smoke | tail -40; exit 1; }
  sleep 1
done
curl -fsS "localhost:$PORT/readyz"; echo
"$PY" - "$PORT" <<'EOF'
import sys, openai
client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="sk-smoke-key")
reply = client.chat.completions.create(model="gpt-4", temperature=0, max_tokens=20,
    messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
print("answer:", reply.choices[0].message.content)
assert "Paris" in reply.choices[0].message.content
EOF

echo "== docker stop (SIGTERM to PID 1) with 4 streams in flight"
rm -f "$WORK/streams.started"
"$PY" - "$PORT" "$WORK/streams.started" <<'EOF' &
import sys, threading, openai
port, started_file = sys.argv[1:]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-smoke-key", max_retries=0, timeout=120)
first, finished = threading.Barrier(5), []
def one():
    stream = client.completions.create(model="gpt-4", prompt="Once upon a time", max_tokens=64, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks, reason = 0, None
    for chunk in stream:
        chunks += 1
        if chunks == 1:
            first.wait(60)
        if chunk.choices and chunk.choices[0].finish_reason:
            reason = chunk.choices[0].finish_reason
    finished.append(reason)
threads = [threading.Thread(target=one) for _ in range(4)]
for t in threads: t.start()
first.wait(60)
open(started_file, "w").close()
for t in threads: t.join(120)
print("streams finished:", finished)
assert finished == ["length"] * 4, finished  # each ran to max_tokens
EOF
streams=$!
for _ in $(seq 600); do [ -f "$WORK/streams.started" ] && break; sleep 0.1; done
[ -f "$WORK/streams.started" ] || { echo "streams did not start"; exit 1; }
started=$(date +%s)
docker stop --time 60 llm-smoke >/dev/null
elapsed=$(( $(date +%s) - started ))
code=$(docker inspect -f '{{.State.ExitCode}}' llm-smoke)
docker logs llm-smoke 2>&1 | grep -E "SIGTERM|drain" | tail -3 || true
echo "exit code $code after ${elapsed}s"
# shellcheck source=deploy/container/checks.sh
source deploy/container/checks.sh
stopped_cleanly "$code" "$elapsed" 60
wait "$streams" || { echo "FAILED: a stream in flight did not complete through the drain"; exit 1; }
echo "container smoke test passed"
