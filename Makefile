# A fresh clone needs two commands: `make demo` and `make test`. Both create .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch comes first so pip takes the local-disk build on this machine; override for another CUDA / CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo-output
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1

.PHONY: setup demo demo-tiny test bench bench-gpu lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The method in miniature on the toy world; its trained zoo is built on first use (15 to 29 minutes on 2 cores, by the host).
demo: setup
	$(VENV)/bin/vehicle-diff run --preset toy --output_dir $(DEMO_DIR)

# The machinery alone on random models, in a few minutes.
demo-tiny: setup
	$(VENV)/bin/vehicle-diff run --preset tiny --output_dir $(DEMO_DIR)-tiny

test: setup
	$(PY) -m pytest -m "not gpu" -q

bench: setup
	$(PY) -m benchmarks

# On a CUDA machine: full-size architectures with random weights, each stage's code against the bare library loop.
# Anywhere: `$(PY) -m benchmarks.bench_gpu --smoke` runs the same rows at toy size on the CPU.
bench-gpu: setup
	$(PY) -m benchmarks.bench_gpu

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-tiny .pytest_cache
