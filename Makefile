# Two entry points for a fresh Debian machine: `make demo` and `make test`. Both install what
# they need (idempotent: a second run installs nothing).
#
# Torch build: the core and its tests need only torch 2.13.0, the 190 MB CPU wheel that lies on
# this machine's disk and installs in seconds. torchvision/timm models need the torch 2.14.1
# CUDA build (5.5 GB, ~70 s): `make vision` adds it for the optional torchvision adapter.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparseforge-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
TORCH_CPU := torch==2.13.0

.PHONY: demo test lint install vision clean

install: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_CPU)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: $(STAMP) $(FMNIST)
	$(BIN)/sparseforge demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# The whole suite fits CI's budget (a few minutes on 2 cores), so nothing is skipped; tests
# marked `slow` would be deselected here with -m "not slow" once it stops fitting.
test: $(STAMP) $(FMNIST) lint
	$(BIN)/pytest -q

vision: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1

clean:
	rm -rf $(VENV) runs .pytest_cache
