#!/usr/bin/env bash
# The tuning experiment (README.md): three searches of MiniLM on RTE, the best of each rerun
# with 5 new seeds, their test scores compared. Every step resumes: rerun this script after an
# interruption (kill, reboot, a new machine with this folder) and it goes on where it stopped.
#   RESEARCH_DATA_DIR=../shared/data experiments/tuning/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/tuning
: "${RESEARCH_DATA_DIR:?set RESEARCH_DATA_DIR to the folder holding rte/}"
# rte/test.jsonl is GLUE's RTE dev set: rte.py holds its validation rows out of train.
mkdir -p "$here/data/rte"
ln -sf "$(realpath "$RESEARCH_DATA_DIR/rte/train.jsonl")" "$here/data/rte/train.jsonl"
ln -sf "$(realpath "$RESEARCH_DATA_DIR/rte/validation.jsonl")" "$here/data/rte/test.jsonl"
export RESEARCH_DATA_DIR="$PWD/$here/data"
common=(--workers 2 --keep-checkpoints none)
python -m research.tune --config $here/rte_grid.py --study $here/studies/grid --trials 6 \
    --sampler grid "${common[@]}"
python -m research.tune --config $here/rte.py --study $here/studies/quasi_random --trials 20 \
    --sampler quasi-random "${common[@]}"
python -m research.tune --config $here/rte.py --study $here/studies/tpe_asha --trials 20 \
    --sampler tpe --pruner asha "${common[@]}"
for study in grid quasi_random tpe_asha; do
  config=$here/rte.py; [ $study = grid ] && config=$here/rte_grid.py
  python -m research.tune --config $config --study $here/studies/$study --rerun-best 5 \
      "${common[@]}"
done
# Each rerun's best checkpoint (picked on validation), scored on test: the system a user gets.
python -m research.compare $here/studies/{grid,quasi_random,tpe_asha}/best --split test \
    --checkpoint best --output $here/compare
python $here/summarize.py
