# Two set-up commands for a new user: `make demo` and `make test`. Both create .venv if it is missing.
# TORCH is the torch requirement: CI and this machine pin the CPU build; on a GPU box use e.g.
#   make test TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUN := $(OFFLINE) PYTHONUNBUFFERED=1 $(PY)

.PHONY: env demo test lint bench-polar bench-optim bench-data bench-train prepare-sample prepare-fineweb \
	reproduce-tiny reproduce-tiny-gram-form reproduce-gpt2-small-1b reproduce-gpt2-large-1b device-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

lint: env
	$(VENV)/bin/ruff check .

test: env lint
	$(RUN) -m pytest

demo: env
	$(RUN) -m polar_lightning fit --config configs/demo.yaml

bench-polar: env
	$(RUN) recipes/polar_error/bench.py

bench-optim: env
	$(RUN) recipes/optim_step/bench.py

bench-data: env
	$(RUN) recipes/data_throughput/bench.py

bench-train: env
	$(RUN) recipes/train_throughput/bench.py

# Tokenize the shipped sample corpus once into llm.c shards (data.source: shards).
prepare-sample: env
	$(RUN) -m polar_lightning prepare --dataset sample --out data/shards/sample --shard-tokens 1000000

# The paper's corpus: about 10B tokens from the hub (needs network and ~20 GB of disk).
prepare-fineweb: env
	$(PY) -m polar_lightning prepare --dataset HuggingFaceFW/fineweb --name sample-10BT --out data/fineweb10B

reproduce-tiny: env
	$(RUN) recipes/polar_express_gpt2/sweep.py --preset tiny

# Polar Express with the polar step in Gram form (form auto) against the rectangular form, runs
# paired by seed (same initialisation and data order); finished runs are skipped on a rerun.
GRAM_RUNS = --preset tiny --methods polar_express --lrs 0.005 0.01 --seeds 0 1 --no-report
reproduce-tiny-gram-form: env
	$(RUN) recipes/polar_express_gpt2/sweep.py $(GRAM_RUNS) --out-dir runs/sweep-tiny-rectangular-form \
		-- --model.polar_form=rectangular
	$(RUN) recipes/polar_express_gpt2/sweep.py $(GRAM_RUNS) --out-dir runs/sweep-tiny-gram-form \
		-- --model.polar_form=auto
	$(RUN) recipes/polar_express_gpt2/compare_forms.py --base runs/sweep-tiny-rectangular-form \
		--variant runs/sweep-tiny-gram-form --label "form auto" \
		--out recipes/polar_express_gpt2/RESULTS-tiny-gram-form.md

reproduce-gpt2-small-1b: env
	$(PY) recipes/polar_express_gpt2/sweep.py --preset gpt2-small-1b

reproduce-gpt2-large-1b: env
	$(PY) recipes/polar_express_gpt2/sweep.py --preset gpt2-large-1b

device-check: env
	$(RUN) recipes/device_check/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
