# The course's commands. `make run` and `make test` create .venv on first use; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch, installed first where there is no GPU so that the stack does not pull a CUDA build.
# Elsewhere than this course's CI machines, point TORCH_INDEX at https://download.pytorch.org/whl/cpu for it.
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?=
# Smoke mode, offline, and any download attempt fails at once (a closed local port as proxy) instead of hanging.
# MPLBACKEND is unset so that ipykernel installs its inline backend and the executed notebooks keep their plots.
# One thread: the tiny smoke models gain nothing from more, and on a busy CPU extra threads only wait (10x slower).
TEST_ENV := env -u MPLBACKEND COURSE_SMOKE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 \
	https_proxy=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost \
	TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0 OMP_NUM_THREADS=1
CHAPTERS := $(wildcard [0-9][0-9]-*/)

.PHONY: setup tiny-checkpoints run test unit notebooks lint strip sync lab bench clean help gpt2-bpe full-check gpu-wheels

help:
	@echo "make run    execute every notebook into build/ (smoke mode without a GPU and the Hub; FULL=1 for real models)"
	@echo "make test   lint, unit tests and every notebook in smoke mode, offline"
	@echo "make lab    JupyterLab on 127.0.0.1:8888;  make bench  benchmarks;  make strip  clean notebook outputs"
	@echo "make full-check  every notebook's full-mode path at the real models' widths, on the CPU, offline"

setup: $(STAMP) tiny-checkpoints

$(STAMP): requirements.txt requirements-colab.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed, found " + sys.version)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes from requirements.txt (CUDA build)"; \
	else \
		echo "no GPU: installing the CPU build $(TORCH_CPU) first"; \
		$(PY) -m pip install -q $(TORCH_CPU) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
			|| { echo "could not install $(TORCH_CPU)"; exit 1; }; \
	fi
	$(PY) -m pip install -q -r requirements-dev.txt || { echo "pip could not install the pinned stack (see above)"; exit 1; }
	$(PY) -m pip install -q --no-deps -e . || { echo "pip could not install the course itself (pyproject.toml)"; exit 1; }
	@touch $(STAMP)

# The tiny checkpoints smoke mode runs on, built once into .cache/tiny/ (rebuilt only when their corpus files change).
tiny-checkpoints: $(STAMP)
	$(PY) -m tools.tiny_checkpoints

run: tiny-checkpoints
	env -u MPLBACKEND $(if $(FULL),COURSE_SMOKE=0) $(PY) -m tools.run_notebooks $(if $(FULL),--full)

# The real GPT-2 BPE, from the openai-whisper sdist on PyPI (cached in .cache/real-width/; before the offline tests).
gpt2-bpe: $(STAMP)
	$(PY) -m tools.real_width gpt2-bpe

# Every notebook's full-mode path at the real models' widths, on this CPU, offline; records docs/times.json and
# docs/TIMES.md. Two threads: the real widths gain from them (smoke mode's tiny models do not).
full-check: tiny-checkpoints gpt2-bpe
	env -u MPLBACKEND $(PY) -m tools.full_check --threads 2

test: tiny-checkpoints gpt2-bpe
	$(PY) -m ruff check .
	$(PY) -m tools.nbtools check
	$(TEST_ENV) $(PY) -m pytest tests $(CHAPTERS) --nbmake --nbmake-timeout=900 --timeout=900 --durations=15

unit: tiny-checkpoints gpt2-bpe
	$(TEST_ENV) $(PY) -m pytest tests

notebooks: tiny-checkpoints
	$(TEST_ENV) $(PY) -m pytest $(CHAPTERS) --nbmake --nbmake-timeout=900 --durations=0

lint: $(STAMP)
	$(PY) -m ruff check .

strip: $(STAMP)
	$(PY) -m tools.nbtools strip

sync: $(STAMP)
	$(PY) -m tools.nbtools sync

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.open_browser=False

bench: tiny-checkpoints
	$(TEST_ENV) $(PY) -m bench.run  # one torch thread (--threads): rewrites bench/RESULTS.md and the README's block

# The wheels bench/gpu_device.sh installs on a GPU machine that lacks them (CPython 3.12, x86-64): about 45 MB.
GPU_WHEELS := bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@$(PY) -c 'import pathlib, sys; n = sum(p.stat().st_size for p in pathlib.Path(".whl").glob("*.whl")); \
		print(f".whl/: {n / 2**20:.1f} MiB"); sys.exit(0 if n < 60 * 2**20 else "over the 64 MiB a device run carries")'

clean:
	rm -rf build .pytest_cache .ruff_cache
