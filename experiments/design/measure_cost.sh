#!/usr/bin/env bash
# Minutes per run of each twin row, alone on 2 threads (issue 40's budget clause): a 2- and a
# 3-epoch run of each row (validation every epoch, the tests with matched and shuffled audio),
# one after another, nothing else running. Appends "row epochs seconds" to OUT/times.txt, which
# `budget_study.py budget OUT/times.txt --wanted E` reads.
#   bash experiments/design/measure_cost.sh REPO AVSAC_ROOT OUT
set -u
repo=$1 root=$2 out=$3
mkdir -p "$out"
declare -A ROWS=(
  [avsac-2]="+table=synthetic_table2 setting=avsac"
  [bavd-2]="+table=synthetic_table2 setting=bavd"
  [avsegformer]="+table=synthetic_table2 setting=avsegformer_small"
  [avsac-4]="+table=synthetic_table5 model.net.decoder_layers=4"
  [avsac-6]="+table=synthetic_table5 model.net.decoder_layers=6"
  [avsac-2-gate]="+table=synthetic_table3_gate setting=avsac_gate"
)
for name in avsac-2 bavd-2 avsegformer avsac-4 avsac-6 avsac-2-gate; do
  for epochs in 2 3; do
    dir=$out/$name-e$epochs; rm -rf "$dir"
    start=$(date +%s.%N)
    OMP_NUM_THREADS=2 AVSAC_ROOT="$root" PYTHONPATH="$repo/src" python -m avsac_lit.train \
      ${ROWS[$name]} seed=1 trainer.max_epochs=$epochs logger=csv hydra.run.dir="$dir" > "$dir.log" 2>&1
    end=$(date +%s.%N)
    echo "$name $epochs $(echo "$end - $start" | bc)" | tee -a "$out/times.txt"
  done
done
