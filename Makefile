# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m pcrules demo

test: $(VENV)/.test
	$(PY) -m pytest

bench: $(VENV)/.test
	$(PY) benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) var

# The Voila ops dashboard on the demo's decision log (made first if missing) and its published bundle,
# at http://127.0.0.1:8866/ (Ctrl-C stops it)
.PHONY: dashboard
$(VENV)/.dashboard: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[dashboard]'
	touch $@

dashboard: $(VENV)/.dashboard
	test -f var/demo/decisions.sqlite || $(MAKE) demo
	$(PY) -m pcrules dashboard --log var/demo/decisions.sqlite \
	  $$(test -e var/demo/published/current && echo --bundle var/demo/published)
