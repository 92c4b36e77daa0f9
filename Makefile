# syncbn-service: the two set-up commands are `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
export SYNCBN_HOME ?= .syncbn
export PORT ?= 8000

.PHONY: run test test-fast lint bench clean clean-data

# torch is installed first and pinned to 2.13.0: the CPU wheel 2.13.0+cpu where it lies on local
# disk (pip's find-links, as on this project's machines and CI), else PyPI's default wheel
# for the platform (on Linux x86_64 the CUDA build, GBs). docs/library.md says more.
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

# The browser tests drive Debian's chromium, the PostgreSQL tests its server binaries
# (scripts/install-test-tools.sh installs them with apt-get when missing).
test: $(VENV)/.installed-dev
	bash scripts/install-test-tools.sh
	$(PY) -m ruff check .
	$(PY) -m pytest

# The unit tier alone (tests/unit: no Ray, no browser, no spawned ranks), for the edit-test loop.
test-fast: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest tests/unit -q -n auto --maxprocesses 4

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/syncbn_bench.py

# Build outputs only: the venv, the tools' caches, the packaging folders and the source tree's
# __pycache__. Never $(SYNCBN_HOME): the data has its own target, clean-data.
SOURCES := benchmarks client contract deploy examples scripts service syncbn tests workers

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find $(wildcard $(SOURCES)) -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo 'make clean kept the data in $$SYNCBN_HOME; make clean-data deletes it.'

# Deletes $(SYNCBN_HOME): the SQLite database (jobs, studies, users, tokens, the audit log), every
# uploaded dataset and code bundle, every run's checkpoints and trained model, the kept job logs
# and the API token. Asks first unless FORCE=1 (make clean-data FORCE=1). A PostgreSQL database
# (DATABASE_URL) is not in the folder and is left alone.
clean-data:
	@home='$(SYNCBN_HOME)'; \
	if [ -z "$$home" ]; then echo "clean-data: SYNCBN_HOME is empty: nothing to delete." >&2; exit 2; fi; \
	if [ ! -e "$$home" ]; then echo "clean-data: $$home does not exist: nothing to delete."; exit 0; fi; \
	where=$$(cd "$$home" && pwd -P); \
	case "$$where" in /|"$$(cd ~ && pwd -P)"|"$$(cd '$(CURDIR)' && pwd -P)") \
	    echo "clean-data: refusing to delete SYNCBN_HOME=$$home ($$where): not a data folder." >&2; exit 2;; esac; \
	echo "make clean-data deletes $$where (SYNCBN_HOME) and everything in it:"; \
	echo "  the database syncbn.db (jobs, studies, users and their tokens, the audit log),"; \
	echo "  every uploaded dataset (datasets/) and code bundle (code/),"; \
	echo "  every run's checkpoints, trained model and kept log (runs/),"; \
	echo "  and the API token (api-token): the login link and the CLI's token change."; \
	if [ -n "$$DATABASE_URL" ]; then echo "  (DATABASE_URL is set: that database is not in this folder and is kept.)"; fi; \
	if [ -e "$$home/ray/head.json" ]; then \
	    echo "  Warning: $$home/ray/head.json exists: a service or its Ray head may still run from this folder; stop it first (Ctrl-C)."; fi; \
	if [ "$(FORCE)" != 1 ]; then \
	    printf 'Delete %s? [y/N] ' "$$where"; read -r answer || answer=; \
	    case "$$answer" in y|Y|yes|YES|Yes) ;; \
	        *) echo "clean-data: kept $$where (FORCE=1 deletes without asking)."; exit 1;; esac; \
	fi; \
	rm -rf -- "$$where"; if [ -L "$$home" ]; then rm -f -- "$$home"; fi; \
	echo "clean-data: deleted $$where."
