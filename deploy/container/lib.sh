# Shared by smoke.sh and deploy/cluster/cluster.sh (sourced): a private dockerd, the local
# Debian base image, the CPU image of this service. Callers set ROOT, WORK and PY first.
# No registry is reachable here: the base comes from debootstrap, torch from pip's local
# find-links folder.

BASE=llm-local/python:3.11-bookworm

docker_env() {
  SOCK=$WORK/docker.sock
  export DOCKER_HOST=unix://$SOCK DOCKER_BUILDKIT=0
  # Debian's docker CLI first: the other one in PATH here lacks buildx.
  export PATH=/usr/bin:$PATH
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null || {
    apt-get update -q && apt-get install -y -q --no-install-recommends docker.io debootstrap; }
}

start_dockerd() {
  mkdir -p "$WORK"
  if docker info >/dev/null 2>&1; then return 0; fi
  dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" -H "unix://$SOCK" \
    --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 50); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null
}

stop_dockerd() {
  if [ -f "$WORK/dockerd.pid" ]; then kill "$(cat "$WORK/dockerd.pid")"; sleep 3; fi
}

# Debian bookworm minbase + python3.11, carrying the host's CA bundle (egress re-signs TLS).
build_base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then return 0; fi
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  tar -C "$WORK/rootfs" -c . | docker import - llm-local/bookworm:minbase >/dev/null
  mkdir -p "$WORK/base"
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/base/host-ca.crt"
  cat >"$WORK/base/Dockerfile" <<'DOCKERFILE'
FROM llm-local/bookworm:minbase
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates libnuma1 libgomp1 \
    && update-ca-certificates && ln -sf /usr/bin/python3 /usr/bin/python && rm -rf /var/lib/apt/lists/*
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt PIP_BREAK_SYSTEM_PACKAGES=1
DOCKERFILE
  docker build -q -t "$BASE" "$WORK/base" >/dev/null
}

# build_cpu_image TAG: the CPU bento, `bentoml containerize`d on the local base.
build_cpu_image() {
  local tag=$1 wheels torch_wheel
  if docker image inspect "$tag" >/dev/null 2>&1; then return 0; fi
  wheels=$(pip config get global.find-links 2>/dev/null || echo /opt/wheels)
  torch_wheel=$(ls "$wheels"/torch-2.13.0+cpu-*.whl | head -1)
  export BENTOML_HOME=$WORK/bentoml
  rm -rf "$WORK/bento-src" && mkdir -p "$WORK/bento-src/requirements"
  (cd "$ROOT" && cp -r service.py components configuration.yaml deploy "$WORK/bento-src/")
  grep -v '^torch==' "$ROOT/requirements/cpu-runtime.lock" >"$WORK/bento-src/requirements/cpu-runtime.lock"
  cp "$torch_wheel" "$WORK/bento-src/"
  # PyTorch's index is out of reach here: torch comes from the wheel put into the bento.
  "$PY" - "$(basename "$torch_wheel")" "$BASE" "$ROOT/bentofile.cpu.yaml" "$WORK/bento-src/bentofile.yaml" <<'PYTHON'
import sys, yaml
wheel, base, source, out = sys.argv[1:]
config = yaml.safe_load(open(source))
config["python"].pop("extra_index_url")
config["python"]["wheels"] = [wheel]
config["docker"]["base_image"] = base
yaml.safe_dump(config, open(out, "w"), sort_keys=False)
PYTHON
  (cd "$WORK/bento-src" && "$ROOT/.venv/bin/bentoml" build -f bentofile.yaml . >/dev/null)
  # From /: BentoML 1.4 refuses a dockerfile_template outside the current directory, and it
  # resolves ours inside its temporary build context.
  (cd / && "$ROOT/.venv/bin/bentoml" containerize llm-service-cpu:latest -t "$tag" --backend docker) \
    >"$WORK/containerize.log" 2>&1 || { tail -40 "$WORK/containerize.log"; return 1; }
}
