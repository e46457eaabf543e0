#!/usr/bin/env bash
# The offline-digits study of the README: CDAN+E and MCD x {none, gh, ghpp} x 3 seeds, both directions.
# CPU only; results under logs/study/digits (aggregate with `make report RUNS=logs/study/digits`).
# CDAN+E runs 2500 iterations (the default); MCD runs 600 (each MCD iteration takes 1 + 1 + num_k=4 optimizer steps; CPU budget).
# Usage: benchmarks/digits_study.sh [cell ...]   cells: cdan_mnist_uci cdan_uci_mnist mcd_mnist_uci mcd_uci_mnist
# SEEDS=1,2 runs a subset of the seeds (e.g. to finish an interrupted cell into another OUT).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-logs/study/digits}
SEEDS=${SEEDS:-0,1,2}
common=(seed="$SEEDS" harmonizer=none,gh,ghpp logger=csv trainer.enable_progress_bar=false)
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(cdan_mnist_uci cdan_uci_mnist mcd_mnist_uci mcd_uci_mnist)
for cell in "${cells[@]}"; do
  IFS=_ read -r baseline source target <<<"$cell"
  extra=()
  [ "$baseline" = mcd ] && extra=(iterations=600 eval_every=200)
  "$PY" run.py -m baseline="$baseline" dataset.source="$source" dataset.target="$target" "${extra[@]}" \
    "${common[@]}" hydra.sweep.dir="$OUT/$cell"
done
