#!/usr/bin/env bash
# Issue 40's tables at the budget study's schedule (10 epochs), from a git worktree at 4204376,
# two queues side by side on 2 cores, one thread each, in the order of the rules' priorities.
# Safe to run again after a stop: a multirun submitted again into its sweep directory keeps its
# finished jobs and continues the others from their last.ckpt.
#   git worktree add --detach /work/wt40-runs 4204376
#   nohup bash experiments/design/issue40_queues.sh A > queueA.log 2>&1 &
#   nohup bash experiments/design/issue40_queues.sh B > queueB.log 2>&1 &
set -u
cd "${WORKTREE:-/work/wt40-runs}"
export PYTHONPATH=$PWD/src AVSAC_ROOT=${AVSAC_ROOT:-/work/twins40} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=$AVSAC_ROOT/runs
py=${PYTHON:-python}
sweep() {
  echo "$(date -Is) start $*"
  $py -m avsac_lit.train -m "$@"
  local status=$?  # before "$(date)" in the echo, which would set $? to its own 0
  echo "$(date -Is) exit $status $*"
}
case $1 in
  A)  # (1) Table 5, (2) Table 3 under cross-attention, (4) Table 4
    sweep +table=synthetic_table5 seed=1,2,3,4,5 hydra.sweep.dir=$R/table5
    sweep +table=synthetic_table3 hydra.sweep.dir=$R/table3
    sweep +table=synthetic_table4 hydra.sweep.dir=$R/table4
    ;;
  B)  # (1) Table 2, (2) Table 3 under the channel gate, (3) the AVFS readings
    sweep +table=synthetic_table2 seed=1,2,3,4,5 hydra.sweep.dir=$R/table2
    sweep +table=synthetic_table3_gate hydra.sweep.dir=$R/table3_gate
    sweep +table=synthetic_avfs seed=1,2,3,4,5 hydra.sweep.dir=$R/table2/avfs
    ;;
  C)  # Once B was done: Table 4's AVSAC row (its jobs 12-14) in a sub-folder of Table 4's sweep,
      # which the report reads with the rest; queue A was stopped (SIGTERM) as it reached job 12.
    sweep +table=synthetic_table4 setting=avsac seed=1,2,3 hydra.sweep.dir=$R/table4/avsac
    ;;
esac
