#!/usr/bin/env bash
# The research grid behind logs/ and the README's Results (does SVD init beat random init for
# LoRA-FA?). Resumable: finished runs are skipped, interrupted ones continue from their last
# checkpoint (--resume). Run it in the background and commit logs/ as cells finish:
#     GLUE_DIR=../shared/glue WORKERS=2 nohup bash sweep.sh > sweep.out 2>&1 &
# (To keep editing the code while it runs, run it from a worktree of a fixed commit:
#     git worktree add ../sweep HEAD && cd ../sweep && \
#     GLUE_DIR=$PWD/../shared/glue LOG_DIR=$OLDPWD/logs/round1 WORKERS=2 nohup bash sweep.sh > sweep.out 2>&1 &)
# WORKERS=n runs n processes of one thread each (--threads 1); worker k takes runs k, k+n, k+2n, ...
# of the list below (why one-thread workers: the README's round-1 section). Results do not depend on
# the thread count. A lock file per run keeps two workers (or two sweeps) from running the same run.
# Everything shared by every cell: all-MiniLM-L6-v2 (`minilm`; MODEL=... for another), rank 4 on the attention
# projections (query, key, value, attention.output.dense), classifier head trained, AdamW
# (no decay on adapters), 6% warm-up then linear decay, batch 32, max length 128, float32,
# 3 epochs, dev split, plain shuffled batches (--no-group-by-length: the runner's default order before
# length grouping existed, so a rerun reproduces these logs). float32 (why not bf16 on this CPU: README).
# Results and run times: the README's round-1 section.
# Learning rates: 2e-4 sits in the middle (log scale) of the original claim's "small" range
# (1e-4 to 4e-4); 5e-3 is its "large" one. Seeds 0 1 2, the same for every init.
# Order = priority: the paired random-vs-svd comparison on all three tasks first, then the
# head-only baseline, then pissa on CoLA and MRPC, then MRPC's full fine-tuning and seed init,
# then pissa on RTE, so a partial sweep still answers the main question with complete, paired
# seeds on every task. Last, a one-seed lr pilot (6.), outside the paired grid.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
: "${GLUE_DIR:=../shared/glue}"; export GLUE_DIR
: "${WORKERS:=1}"
: "${LOG_DIR:=logs/round1}"   # e.g. an absolute path when the sweep runs from a separate git worktree
: "${MODEL:=minilm}"    # the original setting on a GPU with hub access: MODEL=roberta-base PRECISION=--bf16
: "${PRECISION:=--no-bf16}"
threads=(); [ "$WORKERS" -gt 1 ] && threads=(--threads 1)
common=(--model "$MODEL" --rank 4 --epochs 3 --batch-size 32 --max-length 128 "$PRECISION" --resume --no-progress
        --log-dir "$LOG_DIR" --no-group-by-length "${threads[@]}")

runs() {  # one line per run: task method init lr seed
  for task in mrpc rte cola; do   # 1. the paired random-vs-svd comparison, every task
    for seed in 0 1 2; do for lr in 2e-4 5e-3; do for init in random svd; do
      echo "$task lora-fa $init $lr $seed"; done; done; done
  done
  for task in mrpc rte cola; do   # 2. baseline: classifier head only (what the adapters add)
    for seed in 0 1 2; do echo "$task head none 5e-3 $seed"; done
  done
  for task in cola mrpc; do   # 3. pissa (svd factors, residual base: W_eff = W at init): CoLA, then MRPC
    for seed in 0 1 2; do for lr in 2e-4 5e-3; do echo "$task lora-fa pissa $lr $seed"; done; done
  done
  for seed in 0 1 2; do echo "mrpc full none 5e-5 $seed"; done      # 4. full fine-tuning (the ceiling
  for seed in 0 1 2; do echo "mrpc lora-fa seed 2e-4 $seed"; done   #    baseline) and the original
                                                                      #    (wrong) factorization, MRPC only
  for seed in 0 1 2; do for lr in 2e-4 5e-3; do   # 5. pissa on RTE last
    echo "rte lora-fa pissa $lr $seed"; done; done
  for init in random svd; do   # 6. pilot for a per-init lr sweep (seed 0 only, not part of the paired
    echo "cola lora-fa $init 1e-3 0"; done   #    grid): does svd learn CoLA at an lr between 2e-4 and 5e-3?
}

worker() {  # worker $1 of $WORKERS
  local i=0 task method init lr seed every
  while read -r task method init lr seed; do
    if [ $((i++ % WORKERS)) -ne "$1" ]; then continue; fi
    case $task in mrpc) every=25 ;; rte) every=20 ;; cola) every=100 ;; esac
    local extra=(); [ "$init" != none ] && extra=(--init "$init")
    python run_glue.py --task "$task" "${common[@]}" --eval-every $every --seeds "$seed" \
      --method "$method" "${extra[@]}" --lr "$lr"
  done < <(runs)
}

if [ "$WORKERS" -eq 1 ]; then worker 0; exit; fi
for k in $(seq 0 $((WORKERS - 1))); do worker "$k" > "sweep.worker$k.out" 2>&1 & done
wait
