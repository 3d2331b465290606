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

# The suite without the browser, notebook, slow, services and fault-injection tests (under 2 minutes on 2 cores),
# after the linter (a second).
QUICK := not browser and not notebook and not slow and not services and not faults
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

# The trigger tuner (Voila, http://127.0.0.1:8867/; Ctrl-C stops it) on the README's analyst path: the world in
# var/world, the bundles in var/published (each made first when missing, as the README's commands do).
.PHONY: tuner
tuner: $(VENV)/.demo var/rules.yaml var/model.json
	test -e var/published/current || $(PY) -m pcrules publish --rules var/rules.yaml --model var/model.json \
	  --metrics var/metrics.json --out var/published
	$(PY) -m pcrules tuner --bundle var/published --events var/world --port 8867

var/rules.yaml: | $(VENV)/.base
	$(PY) -m pcrules init var

var/world/offers.parquet: | $(VENV)/.demo
	$(PY) -m pcrules sample-data --visitors 20000 --seed 3 --out var/world --quiet

var/model.json: var/world/offers.parquet
	$(PY) -m pcrules train --offers var/world/offers.parquet --out var/model.json --metrics-out var/metrics.json
