# fastpipe developer commands. `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := test,bench,lint,aiohttp,httpx,asgi
STAMP := $(VENV)/.fastpipe-installed

.PHONY: help dev build test test-matrix test-deploy test-py bench bench-proxy bench-proxy-quick bench-proxy-smoke profile-proxy memcheck fuzz soak demo wheel lint typecheck clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q 'Cython>=3.1,<4' 'setuptools>=68' wheel  # for `make build` (in-place rebuilds)
	$(PIP) install -q -e '.[$(EXTRAS)]'
	touch $@

dev: $(STAMP) build  ## create .venv with every extra and an editable install, compiled Pipe included

build: $(STAMP)  ## (re)compile the Cython extension in place after editing _pipe.pyx
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import fastpipe, sys; print('fastpipe: compiled Pipe loaded' if fastpipe.EXTENSION else sys.exit('fastpipe: compiled Pipe did NOT load'))"

test: dev  ## run the test suite (both Pipe implementations)
	$(PY) -m pytest

test-matrix: dev  ## the core of the suite on Python 3.10-3.13 (nox, a venv each; a missing interpreter is skipped)
	$(VENV)/bin/nox --no-error-on-missing-interpreters

test-deploy: dev  ## HAProxy in front of two proxies restarted one at a time, and a SIGKILLed worker (apt-get install haproxy)
	$(PY) -m pytest tests/deploy -p no:cacheprovider

test-py: dev  ## run the test suite with the pure-Python twin only (FASTPIPE_NO_EXTENSIONS=1)
	FASTPIPE_NO_EXTENSIONS=1 $(PY) -m pytest

bench: dev  ## micro benchmarks of the Pipe (pytest-benchmark) with a summary and a chart
	mkdir -p benchmarks/results
	$(PY) -m pytest benchmarks/test_pipe_overhead.py -p no:cacheprovider -o addopts="" \
		--benchmark-columns=min,median,max --benchmark-json=benchmarks/results/pipe_overhead.json \
		--chart benchmarks/results/pipe_overhead.png

bench-proxy-quick: dev  ## fastpipe's proxy against a bare uvloop relay, a quick CPU check
	$(PY) -m benchmarks.proxy_quick --copy

bench-proxy: dev  ## the side-by-side proxy harness against nginx and Python peers (table + chart)
	$(PY) -m benchmarks.proxy

bench-proxy-smoke: dev  ## the proxy harness in quick mode (1 run, 2 s cells, 1,000 idle streams)
	$(PY) -m benchmarks.proxy --quick

profile-proxy: dev  ## py-spy samples of fastpipe's proxy under 1 KiB requests
	$(PY) -m benchmarks.proxy.profile --peer fastpipe --cell small

memcheck: build  ## the Pipe tests, then proxy tests, under valgrind memcheck (apt-get install valgrind)
	$(PY) tools/memcheck.py --self-check
	$(PY) tools/memcheck.py
	$(PY) tools/memcheck.py --tests tests/http/test_upstream_faults.py tests/http/test_zero_copy.py tests/http/test_keep_alive.py

fuzz: dev  ## long fuzz: 20000 fresh inputs per strategy into the proxy protocol, 4000 more chaos seeds per loop
	FASTPIPE_FUZZ_EXAMPLES=20000 $(PY) -m pytest tests/reliability/hostile/test_fuzz_protocol.py -p no:cacheprovider -o timeout=3600
	FASTPIPE_CHAOS_RUNS=4000 FASTPIPE_CHAOS_BASE=$${FASTPIPE_CHAOS_BASE:-100000} \
		$(PY) -m pytest tests/reliability/test_fault_injection.py -p no:cacheprovider -o timeout=3600

soak: dev  ## mixed traffic through the proxy (SOAK_SECONDS, default 600): RSS, fds, live Pipes; plot in benchmarks/results
	mkdir -p benchmarks/results
	$(PY) tools/soak.py --duration $${SOAK_SECONDS:-600} --json benchmarks/results/soak.json

demo: dev  ## the main job: the owner hazard side by side, then the proxy demo
	$(VENV)/bin/fastpipe demo

wheel: dev  ## build sdist + wheel, check both, and check the wheel carries the compiled module
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*
	$(PY) -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('dist/*.whl')[0]).namelist(); \
		sys.exit(0 if any(n.startswith('fastpipe/_pipe.') and n.endswith('.so') for n in names) else 'wheel lacks the compiled Pipe')"
	@echo "wheel contains the compiled Pipe"

lint: dev  ## ruff on sources, tests and benchmarks
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples setup.py

typecheck: dev  ## mypy --strict on the package, and stubtest against the compiled module's stubs
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest fastpipe._pipe --allowlist .stubtest-allowlist

clean:  ## remove build products, caches and the venv
	rm -rf build dist *.egg-info src/*.egg-info src/fastpipe/*.so src/fastpipe/_pipe.c src/fastpipe/*.html \
		.pytest_cache .mypy_cache .ruff_cache .benchmarks .hypothesis benchmarks/results $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
