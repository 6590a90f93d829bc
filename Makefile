# Lianfang: the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: run test setup vendor vendor-fetch vendor-verify system-deps lint typecheck unit bench bench-short faults faults-short dashboards clean

## run: set up everything, then start the demo (region tree, simulated fleet, API and page on :8000)
run: setup
	$(BIN)/lianfang demo

## test: lint, type-check and run the whole suite (unit + integration against a real Mosquitto)
test: setup lint typecheck
	$(BIN)/python -m pytest

setup: system-deps $(VENV)/.installed vendor

# The page's chart library (uPlot), vendored from the npm registry at a pinned version: the tarball's sha256 is
# checked, its built file, stylesheet and licence go to gateway/static/vendor/ (served by the gateway; the page loads
# nothing from the internet). The files are committed, so an offline install needs no registry; `make vendor` only
# fetches when they are missing or differ from vendor/SHA256SUMS, `make vendor-verify` re-fetches and compares.
UPLOT_VERSION := 1.6.32
UPLOT_SHA256  := 4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
VENDOR        := gateway/static/vendor
UPLOT_FILES   := uPlot.iife.min.js uPlot.min.css LICENSE

vendor:
	@(cd $(VENDOR) 2>/dev/null && sha256sum --quiet -c SHA256SUMS 2>/dev/null) || $(MAKE) --no-print-directory vendor-fetch

vendor-fetch:
	@command -v npm >/dev/null 2>&1 || { echo "installing npm (apt) to fetch uplot@$(UPLOT_VERSION)"; $(APT) update -qq && $(APT) install -y -qq npm; }
	rm -rf $(VENDOR)/.fetch && mkdir -p $(VENDOR)/.fetch
	cd $(VENDOR)/.fetch && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null
	echo "$(UPLOT_SHA256)  $(VENDOR)/.fetch/uplot-$(UPLOT_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf $(VENDOR)/.fetch/uplot-$(UPLOT_VERSION).tgz -C $(VENDOR)/.fetch
	cp $(VENDOR)/.fetch/package/dist/uPlot.iife.min.js $(VENDOR)/.fetch/package/dist/uPlot.min.css $(VENDOR)/
	cp $(VENDOR)/.fetch/package/LICENSE $(VENDOR)/LICENSE
	rm -rf $(VENDOR)/.fetch
	cd $(VENDOR) && sha256sum $(UPLOT_FILES) > SHA256SUMS
	@echo "vendored uplot $(UPLOT_VERSION) into $(VENDOR)"

vendor-verify:
	cp $(VENDOR)/SHA256SUMS /tmp/lianfang-vendor-sums && $(MAKE) --no-print-directory vendor-fetch && \
		diff /tmp/lianfang-vendor-sums $(VENDOR)/SHA256SUMS && echo "vendored files match uplot $(UPLOT_VERSION)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Mosquitto (with its dynamic-security plugin) comes from the distribution; Lianfang starts its own instance
# with generated config, so the packaged system service is not needed.
system-deps:
	@if [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (apt)"; $(APT) update -qq && $(APT) install -y -qq mosquitto mosquitto-clients; \
	fi

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -m "not slow"

## bench: the benchmarks at full size (minutes); bench-short: the CI mode
bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ingest.py --store influxdb
	$(BIN)/python bench/side_store.py
	$(BIN)/python bench/paho_floor.py
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/alert_latency.py
	$(BIN)/python bench/correlate.py
	$(BIN)/python bench/incremental_state.py
	$(BIN)/python bench/broker_persistence.py
	$(BIN)/python bench/broker_persistence.py --backlog 100000 --trials 3
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/e2e.py --alerts off
	$(BIN)/python bench/alert_cpu.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/report.py

bench-short: setup
	$(BIN)/python bench/ingest.py --short
	$(BIN)/python bench/ingest.py --short --store influxdb
	$(BIN)/python bench/side_store.py --short
	$(BIN)/python bench/paho_floor.py --short
	$(BIN)/python bench/provision.py --short
	$(BIN)/python bench/alert_latency.py --short
	$(BIN)/python bench/correlate.py --short
	$(BIN)/python bench/incremental_state.py --short
	$(BIN)/python bench/broker_persistence.py --short
	$(BIN)/python bench/e2e.py --short
	$(BIN)/python bench/alert_cpu.py --short
	$(BIN)/python bench/api.py --short
	$(BIN)/python bench/report.py --short

## faults: the fault suite against the real processes (minutes; needs root for the tmpfs of store_full);
## faults-short: its short mode, which also runs in `make test` (tests/faults/test_fault_suite.py)
faults: setup
	$(BIN)/python -m faults

faults-short: setup
	$(BIN)/python -m faults --short

## dashboards: regenerate dashboards/generated/*.json from dashboards/build.py (commit the result)
dashboards: setup
	$(BIN)/python -m dashboards.build

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
