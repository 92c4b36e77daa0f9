# syncbn-service: the two set-up commands are `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
export SYNCBN_HOME ?= .syncbn
export PORT ?= 8000

.PHONY: run test test-fast lint bench clean

# torch is installed first and pinned: an unpinned torch pulls GBs of CUDA wheels.
define make_venv
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
endef

$(VENV)/.installed: pyproject.toml
	$(make_venv)
	$(PY) -m pip install --quiet -e .
	touch $@

# The dev extras in one resolver pass (they include everything `make run` needs).
$(VENV)/.installed-dev: pyproject.toml
	$(make_venv)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

# The service with an embedded Ray head and SQLite under $(SYNCBN_HOME); Ctrl-C stops both.
run: $(VENV)/.installed
	$(PY) -m service

# The dashboard's browser tests drive Debian's chromium (installed with apt-get when missing).
test: $(VENV)/.installed-dev
	bash scripts/install-chromium.sh
	$(PY) -m ruff check .
	$(PY) -m pytest

# The unit tier alone (tests/unit: no Ray, no browser, no spawned ranks), for the edit-test loop.
test-fast: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest tests/unit -q

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/syncbn_bench.py

clean:
	rm -rf $(VENV) $(SYNCBN_HOME) .pytest_cache .ruff_cache
