# Entry points (README): `make run` (main job on the embedded default), `make test` (the fast
# layer: everything but the tests marked `heavy`) and `make test-all` (everything; what CI runs).
# Both create .venv and install the pinned requirements first when they are missing or changed.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
REQS := envs/requirements.txt envs/requirements-dev.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-12)

.PHONY: run test test-all install lint report clean-results

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) all
	$(VENV)/bin/snakemake --cores $(CORES) all --report results/report.html

test: $(STAMP)
	$(VENV)/bin/pytest -m "not heavy"

test-all: $(STAMP)
	$(VENV)/bin/pytest

install: $(STAMP)

$(STAMP): $(REQS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r envs/requirements-dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests benchmarks
	$(VENV)/bin/ruff format --check src scripts tests benchmarks
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint --cores 1

clean-results:
	rm -rf results .snakemake
