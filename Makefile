# Two commands a newcomer needs: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all fuzz lint format clean bench bench-quick system-packages

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "fax-gateway needs Python 3.11 or newer ($(PYTHON) is older); try make PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "could not create $(VENV): on Debian/Ubuntu run: apt install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip

# The stamp files make re-runs fast and re-install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-fuzz: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

# Debian packages only some tests need (debian-packages.txt); tests skip loudly without them.
system-packages:
	@.ci/system-packages

demo: $(VENV)/.installed
	$(BIN)/fax-gateway demo

# pytest exits 5 when it collected no test, so an empty run fails here.
# `make test` leaves out the tests marked slow (the daemon as a subprocess, killed at each
# failpoint, the demo); `make test-all` runs them too (docs/RELIABILITY.md's figures).
test: $(VENV)/.installed-test system-packages
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/pytest -m "not slow"

test-all: $(VENV)/.installed-test system-packages
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/pytest

# Coverage-guided fuzzing (atheris) of MIME, webhook bodies and queries, and fax numbers, each
# for FUZZ_SECONDS; a crash or a hang stops it and leaves the input in var/fuzz/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := mime webhook webhook_query number
fuzz: $(VENV)/.installed-fuzz
	@for target in $(FUZZ_TARGETS); do \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		$(BIN)/python -m tests.fuzz $$target $(FUZZ_SECONDS) 2> var-fuzz-$$target.log \
			|| { tail -40 var-fuzz-$$target.log; exit 1; }; \
		rm -f var-fuzz-$$target.log; \
	done

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests

format: $(VENV)/.installed-test
	$(BIN)/ruff format gateway tests
	$(BIN)/ruff check --fix gateway tests

bench: $(VENV)/.installed-test
	$(BIN)/python -m tests.bench

# A small version of every benchmark, in under a minute: to see that they run, not to quote.
bench-quick: $(VENV)/.installed-test
	$(BIN)/python -m tests.bench --quick

clean:
	rm -rf $(VENV) var build *.egg-info
