# `make run` serves the embedded demo; `make test` runs the whole suite. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lethe migrate
	$(BIN)/lethe demo
	$(BIN)/lethe serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/ruff check app workers tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check app workers tests bench

# bench/influence.py runs Kronfluence side by side: it requires torchvision, which the engine does not
# need, so it goes in without dependencies and what it imports is added with torch held at the pinned build.
# Fashion-MNIST for the benchmarks, the demo and its tests: Debian's package, idx files under
# /usr/share/datasets/fashion-mnist (nothing is downloaded at run time). Needs root or sudo.
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: data-deps
data-deps:
	@test -f $(FASHION) || $(SUDO) apt-get install -y -q dataset-fashion-mnist \
		|| ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

.PHONY: bench-deps
bench-deps: $(STAMP) data-deps
	echo 'torch==2.13.0' > $(VENV)/bench-constraints.txt
	$(BIN)/pip install -q -c $(VENV)/bench-constraints.txt accelerate einconv einops opt_einsum tqdm
	$(BIN)/pip install -q --no-deps -c $(VENV)/bench-constraints.txt kronfluence==1.0.1

# The benchmarks of README "Benchmarks", niced (the machine is shared): each default run fits in 60 minutes on 2
# cores; BENCH_ARGS=--quick for a smoke run (≤ 5 min each), --large for the larger one.
BENCH_ARGS ?=
bench: $(STAMP)
	nice -n 10 $(BIN)/python -m bench.unlearning $(BENCH_ARGS)
	nice -n 10 $(BIN)/python -m bench.evidence $(BENCH_ARGS)

.PHONY: bench-fashion
bench-fashion: $(STAMP) data-deps
	nice -n 10 $(BIN)/python -m bench.unlearning --setting fashion $(BENCH_ARGS)
	nice -n 10 $(BIN)/python -m bench.evidence --setting fashion $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
