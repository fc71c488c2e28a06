# Two entry points: `make demo` and `make test`. Both work on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: test test-lowest demo venv system-deps lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	@# Debian's python3 needs python3-venv for `-m venv`: install it when missing.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The suite starts real etcd and Redis servers: install Debian's packages when missing.
system-deps:
	@if ! command -v etcd >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing etcd-server and redis-server"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends etcd-server redis-server >/dev/null; \
	fi

lint: venv
	$(VENV)/bin/ruff check resilience interceptors tests benchmarks examples
	$(VENV)/bin/mypy

test: venv system-deps lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite again with every runtime dependency at its declared lower bound (.ci/lowest.py
# pins them from pyproject.toml), in a venv of its own. The two test files that need the
# contrib OpenTelemetry instrumentations are left out: no release of those installs beside
# the lowest opentelemetry-api.
LOWEST ?= .venv-lowest
test-lowest: venv system-deps
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) .ci/lowest.py $(LOWEST)/requirements.txt
	$(LOWEST)/bin/python -m pip install --quiet -r $(LOWEST)/requirements.txt
	$(LOWEST)/bin/python -m pip install --quiet --no-deps -e .
	$(LOWEST)/bin/python -m pip list --format=freeze | grep -iE '^(limits|opentelemetry-api|grpcio|httpx|redis|pybreaker|pydantic|pyyaml)=='
	$(LOWEST)/bin/python -m pytest -q --ignore=tests/test_telemetry_grpc.py --ignore=tests/test_telemetry_http.py $(PYTEST_ARGS)

# The demo installs only what it uses (the `demo` extra), not the dev toolchain.
$(VENV)/.demo-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m resilience.cli demo

bench: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .ruff_cache .pytest_cache .hypothesis
