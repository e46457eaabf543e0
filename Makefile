# uda — run `make help` for the list of targets.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# this machine's pip config lists local package folders that may not exist; their warnings are noise
PIP_QUIET := grep -v "^WARNING: Location '.*' is ignored" || true

.PHONY: help install run test test-slow bench study study-uci study-digits report mutate lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## Create .venv and install uda + dev tools (1.5-5 min from the local package cache)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,sweep]' 2>&1 | $(PIP_QUIET)
	$(PY) -c "import uda, torch, lightning, hydra, timm, wandb; print('uda installed: torch', torch.__version__, '/ lightning', lightning.__version__)"

run: ## Train the default job: CDAN+E + GH++ on MNIST-5k -> UCI digits, offline (about 3 min on 2 CPU cores)
	$(PY) run.py

test: ## Run the test suite (the slow end-to-end runs are excluded; see test-slow)
	$(PY) -m pytest

test-slow: ## Run only the slow end-to-end tests (full-length training runs)
	$(PY) -m pytest -m slow

bench: ## Benchmarks (harmonizer overhead, ResNet-50 CDAN+E step, data throughput, plain pass) -> benchmarks/results/*.{json,md}
	$(PY) benchmarks/harmonizer_overhead.py
	$(PY) benchmarks/resnet50_step.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/harmonizer_calls.py
	$(PY) benchmarks/prompt_step.py
	$(PY) benchmarks/plain_pass.py

# mutation testing: resumable, each call stops after MUTATE_BUDGET (GNU timeout syntax) and the next one goes on
MUTATE_BUDGET ?= 4h
MUTATE_JOBS ?= 2
MUTATE_NICE ?= 15
# optional mutant name patterns (fnmatch), e.g. MUTANTS='uda.harmonizers.*' to finish the goal area first
MUTANTS ?=
mutate: ## Mutation score of harmonizers/engine/report/record (mutmut, resumable, <= MUTATE_BUDGET) -> benchmarks/results/mutation.md
	timeout --signal=INT --kill-after=120 $(MUTATE_BUDGET) nice -n $(MUTATE_NICE) \
		$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS) || [ $$? -eq 124 ] || { echo "mutmut run failed"; exit 1; }
	$(PY) benchmarks/mutation_report.py \
		--command "make mutate MUTATE_BUDGET=$(MUTATE_BUDGET) MUTATE_JOBS=$(MUTATE_JOBS) MUTATE_NICE=$(MUTATE_NICE) MUTANTS='$(MUTANTS)'"

RUNS ?= benchmarks/results/fonts_study/runs
OUT ?= benchmarks/results/fonts_study
study: ## The README's fonts->mnist study, 5 seeds, resumable (CPU, days on 2 cores) -> benchmarks/results/fonts_study/runs
	PY=$(PY) RECORDS=$(RUNS) benchmarks/fonts_study.sh source_only cdan
	PY=$(PY) RECORDS=$(RUNS) benchmarks/fonts_study.sh dann
	PY=$(PY) RECORDS=$(RUNS) benchmarks/fonts_study.sh mcd

study-uci: ## The fonts->UCI repeat (source-only, then CDAN+E none), 5 seeds, resumable -> benchmarks/results/fonts_study/runs/fonts_uci
	PY=$(PY) RECORDS=$(RUNS) SOURCE=fonts TARGET=uci HARMONIZERS=none benchmarks/fonts_study.sh source_only cdan

study-digits: ## The earlier MNIST<->UCI study + GH++ lambda sweep (CPU, hours) -> logs/study/{digits,lambda}
	PY=$(PY) benchmarks/digits_study.sh
	PY=$(PY) benchmarks/lambda_study.sh

report: ## Tables, plots and OUT/figures (t-SNE, curves) from finished runs: make report RUNS=<runs dir> OUT=<output dir>
	$(PY) -m uda.report $(RUNS) --out $(OUT)
	$(PY) -m uda.report.figures $(RUNS) --out $(OUT)/figures

lint: ## ruff check
	$(VENV)/bin/ruff check .

format: ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf logs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
