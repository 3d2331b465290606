# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-quick lint typecheck bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The product, locally: train on generated history, publish a bundle, replay the shipped sample through
# it, then serve the ops dashboard on that log (Ctrl-C stops everything).
$(VENV)/.demo: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[analysis,server,dashboard]'
	touch $@

demo: $(VENV)/.demo
	$(PY) -m pcrules demo
	@echo
	@echo "demo site:      http://127.0.0.1:8765/demo/   (CSR console: /demo/csr.html)"
	@echo "ops dashboard:  http://127.0.0.1:8866/        (Ctrl-C stops both)"
	$(PY) -m pcrules serve --demo --port 8765 --log var/demo/decisions.sqlite & \
	  trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	  $(PY) -m pcrules dashboard --log var/demo/decisions.sqlite --bundle var/demo/published --port 8866

# Everything CI checks, in order; the first failure stops it: lint, types, then the whole suite.
test: lint typecheck
	$(PY) -m pytest

# The suite without the browser, notebook, slow and fault-injection tests (under 2 minutes on 2 cores),
# after the linter (a second).
QUICK := not browser and not notebook and not slow and not faults
test-quick: lint
	$(PY) -m pytest -m "$(QUICK)"

lint: $(VENV)/.test
	$(VENV)/bin/ruff check pcrules tests benchmarks

# mypy (strict on core/ and runtime/) with the shrink-only baseline in pyproject.toml
typecheck: $(VENV)/.test
	$(PY) .ci/typecheck.py

bench: $(VENV)/.test
	$(PY) benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) var

# The Voila ops dashboard on the demo's decision log (made first if missing) and its published bundle,
# at http://127.0.0.1:8866/ (Ctrl-C stops it)
.PHONY: dashboard
dashboard: $(VENV)/.demo
	test -f var/demo/decisions.sqlite || $(PY) -m pcrules demo
	$(PY) -m pcrules dashboard --log var/demo/decisions.sqlite \
	  $$(test -e var/demo/published/current && echo --bundle var/demo/published)
