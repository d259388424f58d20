# eeg2music — the README's two commands (`make demo`, `make test`) and the steps they are made of.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.eeg2music-installed
# Offline everywhere: an import that touches the Hugging Face hub otherwise retries for minutes.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

NOTEBOOK_SOURCES := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
NOTEBOOKS := $(NOTEBOOK_SOURCES:.py=.ipynb)

.PHONY: help setup notebooks demo test test-fast bench bench-preprocess bench-backbone lab clean clean-outputs

help:
	@echo "make demo   - set up .venv if needed, then run notebooks 00-06 on the embedded default into outputs/"
	@echo "make test   - set up .venv if needed, then run the test suite"
	@echo "make lab    - open the notebooks in JupyterLab"
	@echo "make bench  - benchmarks (numbers go into the issue notes)"

setup: $(STAMP) notebooks

# CPU torch first, from the wheel on this disk: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps "encodec==0.1.1"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (eeg2music)" >/dev/null
	touch $(STAMP)

# The .py (py:percent) files are the source; the paired .ipynb are generated from them.
notebooks: $(NOTEBOOKS)
notebooks/%.ipynb: notebooks/%.py $(STAMP)
	$(BIN)/jupytext --quiet --to ipynb --update-metadata '{"kernelspec":{"name":"python3","display_name":"Python 3 (eeg2music)","language":"python"}}' $< -o $@ 2>/dev/null || $(BIN)/jupytext --to ipynb $< -o $@

demo: setup
	$(BIN)/python -m eeg2music.demo --outputs outputs

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: bench-preprocess bench-backbone
bench-preprocess: setup
	$(BIN)/python benchmarks/bench_preprocess.py
bench-backbone: setup
	$(BIN)/python benchmarks/bench_backbone.py

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-outputs:
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

clean: clean-outputs
	rm -rf $(VENV) notebooks/*.ipynb
