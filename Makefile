# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo demo-data lint bench clean

$(VENV)/.stamp-torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

test: $(VENV)/.stamp-test demo-data
	$(PY) -m pytest -q

# Fashion-MNIST from Debian's package (the demo and its tests read it) when apt is there and we are root; best effort:
# `swinv2 demo` downloads the official files (checksum-verified) when the package is missing.
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
demo-data:
	@if [ ! -f $(FASHION_MNIST_DEB) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
		|| echo "dataset-fashion-mnist not installed: swinv2 demo will download Fashion-MNIST"; \
	fi

# The main job (README): SimMIM pre-training, fine-tuning, from scratch, evaluation and runs/demo/report.md.
# DEMO_FLAGS passes flags through, e.g. make demo DEMO_FLAGS="--scale 2" for more epochs.
demo: $(VENV)/.stamp-test demo-data
	$(VENV)/bin/swinv2 demo $(DEMO_FLAGS)

lint: $(VENV)/.stamp-test
	$(PY) -m ruff check src tests benchmarks

bench: $(VENV)/.stamp-test
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
