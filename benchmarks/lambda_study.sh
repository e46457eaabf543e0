#!/usr/bin/env bash
# GH++'s lambda sensitivity on the offline digits (paper Fig. 14 style): CDAN+E MNIST->UCI, 2500 iterations
# (the default), GH++ with lambda in LAMS x SEEDS. lambda=0.5 is the published default and is already part of
# the main study (benchmarks/digits_study.sh / first table), so it is not repeated unless LAMS says so.
# Results under logs/study/lambda; aggregate with `make report RUNS=logs/study`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-logs/study/lambda}
LAMS=${LAMS:-0,0.25,0.75,1}
SEEDS=${SEEDS:-0,1,2}
"$PY" run.py -m baseline=cdan harmonizer=ghpp harmonizer.lam="$LAMS" seed="$SEEDS" logger=csv \
  trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/cdan_mnist_uci"
