#!/usr/bin/env bash
# A local cluster from real parts (`make cluster-up`, `make test-cluster`, `make cluster-down`):
#   - two replicas of the CPU image (llm-a, llm-b), one core each (--cpuset-cpus), each
#     serving TLS with BentoML's own ssl settings, sharing limits through
#   - one Redis with a password (llm-redis, `noeviction`: the limits and the ledger), and
#     stored responses through another (llm-redis-store, as deploy/k8s/redis.yaml), behind
#   - HAProxy from Debian (llm-lb): terminates the clients' TLS, re-encrypts to the replicas
#     (verifying them against the cluster's CA), health-checks /readyz every 0.5 s, and
#     retries on the other replica a request refused before any byte reached the client
#     (503, a refused connection, an empty response).
# All on a private docker network under a private dockerd (deploy/container/lib.sh); only
# loopback ports are published. The CA, the server certificate, the Redis password and the
# clients' keys are generated here, into $WORK/state (never committed).
#
#   cluster.sh up     build what is missing, start everything, wait until HAProxy sees both replicas up
#   cluster.sh down   remove the containers, the network and the service's image, stop the dockerd
#   cluster.sh test   up (unless already up), tests/cluster, then down (unless it was up before)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
WORK=${CLUSTER_WORK:-/tmp/llm-cluster}
STATE=$WORK/state
IMAGE=llm-service-cpu:cluster
TOOLS=llm-local/cluster-tools:1
NET=llm-cluster
LB_PORT=${CLUSTER_LB_PORT:-18443}
STATS_PORT=${CLUSTER_STATS_PORT:-18404}
A_PORT=${CLUSTER_A_PORT:-18081}
B_PORT=${CLUSTER_B_PORT:-18082}
# shellcheck source=deploy/container/lib.sh
source deploy/container/lib.sh
docker_env

build_tools() {
  if docker image inspect "$TOOLS" >/dev/null 2>&1; then return 0; fi
  mkdir -p "$WORK/tools"
  cat >"$WORK/tools/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends haproxy redis-server && rm -rf /var/lib/apt/lists/*
DOCKERFILE
  docker build -q -t "$TOOLS" "$WORK/tools" >/dev/null
}

# The CA, a server certificate for every name the cluster uses, the Redis password, the keys.
make_secrets() {
  local mount=$STATE/mount
  if [ -f "$STATE/cluster.json" ]; then return 0; fi
  rm -rf "$STATE" && mkdir -p "$mount/certs"
  (
    cd "$mount/certs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=llm-cluster test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=llm-cluster" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:llm-a,DNS:llm-b,DNS:llm-lb,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf \
      -out server.crt 2>/dev/null
    cat server.crt server.key >server.pem
    rm -f ca.key server.csr ext.cnf ca.srl
  )
  # Read by the containers' own users (bentoml, haproxy, redis): test material only.
  chmod 755 "$STATE" "$mount" "$mount/certs" && chmod 644 "$mount"/certs/*
  "$PY" - "$STATE" "$ROOT/configuration.yaml" <<'PYTHON'
import hashlib, json, secrets, sys, yaml
from pathlib import Path
state, config = Path(sys.argv[1]), sys.argv[2]
mount = state / "mount"
password = secrets.token_hex(16)
# One key per scenario, so that no scenario's window spends another's.
busy = {"requests_per_minute": 100000}
limits = {"background": busy, "traffic": busy, "requests": {"requests_per_minute": 10},
          "tokens": {"tokens_per_minute": 1000}, "outage": {"requests_per_minute": 10},
          "restored": {"requests_per_minute": 10}, "ops": {"admin": True}}
keys = {name: f"sk-cluster-{name}-{secrets.token_hex(8)}" for name in limits}
entries = [{"id": name, "sha256": hashlib.sha256(keys[name].encode()).hexdigest(), **policy}
           for name, policy in limits.items()]
(mount / "keys.yaml").write_text(yaml.safe_dump({"keys": entries}, sort_keys=False))
# As deploy/k8s/redis.yaml: neither evicts (the service bounds the store itself).
redis = f"requirepass {password}\nsave \"\"\nappendonly no\nprotected-mode no\nmaxmemory-policy noeviction\n"
(mount / "redis.conf").write_text(redis + "maxmemory 64mb\n")
(mount / "redis-store.conf").write_text(redis + "maxmemory 256mb\n")
# BentoML's own TLS settings on each replica (the rest as configuration.yaml).
tls = yaml.safe_load(open(config))
tls["services"]["llm-service"]["ssl"] = {"enabled": True, "certfile": "/etc/llm/certs/server.crt",
                                         "keyfile": "/etc/llm/certs/server.key"}
(mount / "configuration-tls.yaml").write_text(yaml.safe_dump(tls, sort_keys=False))
(state / "redis-password").write_text(password)
(state / "cluster.json").write_text(json.dumps({"keys": keys, "ca": str(mount / "certs" / "ca.crt")}, indent=1))
PYTHON
  chmod 644 "$mount"/*.yaml "$mount"/redis.conf "$mount"/redis-store.conf && chmod 600 "$STATE/redis-password"
  cp deploy/cluster/haproxy.cfg "$mount/haproxy.cfg" && chmod 644 "$mount/haproxy.cfg"
}

run_replica() {  # NAME CPU PORT
  local password
  password=$(cat "$STATE/redis-password")
  docker rm -f "$1" >/dev/null 2>&1 || true
  # on-failure: exit 3 (engine death) restarts the container; `docker stop` (exit 0) does not.
  docker run -d --name "$1" --hostname "$1" --network "$NET" --cpuset-cpus "$2" --shm-size 1g \
    --restart on-failure:10 -p "127.0.0.1:$3:8080" -v "$STATE/mount:/etc/llm:ro" \
    -e BENTOML_CONFIG=/etc/llm/configuration-tls.yaml -e KEYS_FILE=/etc/llm/keys.yaml \
    -e RATE_LIMIT_STORAGE_URI="redis://:$password@llm-redis:6379/0" -e RATE_LIMIT_REPLICAS=2 \
    -e RESPONSES_STORE_URI="redis://:$password@llm-redis-store:6379/0" \
    -e MAX_NUM_SEQS=16 -e MAX_QUEUE_SIZE=64 "$IMAGE" >/dev/null
}

all_up() {
  local csv
  csv=$(curl -fsS "http://127.0.0.1:$STATS_PORT/stats;csv" 2>/dev/null) || return 1
  [ "$(grep -c '^replicas,llm-[ab],.*,UP,' <<<"$csv")" = "2" ]
}

up() {
  echo "== dockerd, images"
  start_dockerd
  build_base
  build_tools
  build_cpu_image "$IMAGE"
  make_secrets
  echo "== network, Redis, replicas, load balancer"
  docker network inspect "$NET" >/dev/null 2>&1 || docker network create "$NET" >/dev/null
  for redis in llm-redis llm-redis-store; do
    if ! docker container inspect "$redis" >/dev/null 2>&1; then
      docker run -d --name "$redis" --network "$NET" --user redis -v "$STATE/mount:/etc/llm:ro" "$TOOLS" \
        redis-server "/etc/llm/${redis#llm-}.conf" >/dev/null
    fi
  done
  docker container inspect llm-a >/dev/null 2>&1 || run_replica llm-a 0 "$A_PORT"
  docker container inspect llm-b >/dev/null 2>&1 || run_replica llm-b 1 "$B_PORT"
  if ! docker container inspect llm-lb >/dev/null 2>&1; then
    docker run -d --name llm-lb --network "$NET" -v "$STATE/mount:/etc/llm:ro" \
      -p "127.0.0.1:$LB_PORT:8443" -p "127.0.0.1:$STATS_PORT:8404" "$TOOLS" \
      haproxy -W -db -f /etc/llm/haproxy.cfg >/dev/null
  fi
  echo "== waiting for both replicas to be up behind the load balancer"
  for _ in $(seq 600); do
    all_up && break
    for r in llm-a llm-b llm-lb llm-redis llm-redis-store; do
      if [ "$(docker inspect -f '{{.State.Running}}' "$r")" != "true" ]; then
        docker logs "$r" 2>&1 | tail -30; echo "FAILED: $r is not running"; exit 1
      fi
    done
    sleep 1
  done
  all_up || { echo "FAILED: the replicas did not come up in 600 s"; exit 1; }
  "$PY" - "$STATE/cluster.json" "$LB_PORT" "$STATS_PORT" "$A_PORT" "$B_PORT" "$DOCKER_HOST" <<'PYTHON'
import json, sys
path, lb, stats, a, b, docker_host = sys.argv[1:]
state = json.load(open(path))
state |= {"lb": f"https://127.0.0.1:{lb}", "stats": f"http://127.0.0.1:{stats}/stats;csv",
          "replicas": {"llm-a": f"https://127.0.0.1:{a}", "llm-b": f"https://127.0.0.1:{b}"},
          "docker_host": docker_host}
json.dump(state, open(path, "w"), indent=1)
PYTHON
  echo "cluster up: https://127.0.0.1:$LB_PORT (CA $STATE/mount/certs/ca.crt)"
}

down() {
  set +e
  if docker info >/dev/null 2>&1; then
    docker rm -f llm-lb llm-a llm-b llm-redis llm-redis-store >/dev/null 2>&1
    docker network rm "$NET" >/dev/null 2>&1
    # The service's image goes (the next `up` builds it from the tree as it is then); the
    # Debian base and the tools image stay in the private data root, reused.
    docker rmi -f "$IMAGE" >/dev/null 2>&1
  fi
  stop_dockerd
  rm -rf "$STATE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  test)
    was_up=no
    if docker info >/dev/null 2>&1 && all_up; then was_up=yes; fi
    up
    status=0
    CLUSTER_STATE=$STATE/cluster.json "$PY" -m pytest tests/cluster -q -s || status=$?
    if [ "$was_up" = "no" ]; then down; fi
    exit "$status"
    ;;
  *) echo "usage: $0 up|down|test" >&2; exit 2 ;;
esac
