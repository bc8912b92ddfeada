#!/usr/bin/env bash
# GPU check for a CUDA machine (e.g. one lent by the `device` tool): the LLM-memory bench at real sizes
# and the CUDA tests, every output under one folder, in under 8 minutes (each part has its own timeout).
#
#   bash bench/gpu_check.sh [FOLDER]     # default: $OUT/gpu_check, else bench/results/gpu_check
#
# It carries nothing but the repository: the bench builds random Llama models from configs, so no
# weights travel (the 64 MiB a device run may carry would not hold them anyway).
#   FOLDER/1b/llm_memory.md, .png   1b full matrix (attention, all-linear x r 8, 64), fp32, 512..4096 tokens
#   FOLDER/7b/llm_memory.md, .png   7b, all-linear r 8, bf16, 512..4096 tokens
#   FOLDER/pytest_cuda.out          python -m pytest -m cuda -q tests
#   FOLDER/gpu_check.log            start, end and exit code of each part; *.err their stderr
set -u
cd "$(dirname "$0")/.."
dir=${1:-${OUT:-bench/results}/gpu_check}
mkdir -p "$dir"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$dir/gpu_check.log"; }

run() {  # run NAME SECONDS CMD...: stdout and stderr to FOLDER/NAME.out and .err, the exit code to the log
    local name=$1 limit=$2
    shift 2
    log "start $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$dir/$name.out" 2> "$dir/$name.err"
    log "end $name: exit $?"
}

nvidia-smi > "$dir/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
if ! python -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.version.cuda)" \
        > "$dir/torch.txt" 2>&1; then
    log "torch sees no CUDA device: nothing run"
    exit 1
fi
lens=(512 1024 2048 4096)
run llm_memory_1b 240 python bench/llm_memory.py --device cuda --size 1b --large-sizes none \
    --seq-lens "${lens[@]}" --out "$dir/1b" --figure "$dir/1b/llm_memory.png"
run llm_memory_7b 140 python bench/llm_memory.py --device cuda --size 7b --large-sizes none \
    --targets all-linear --ranks 8 --dtype bf16 --seq-lens "${lens[@]}" --out "$dir/7b" --figure "$dir/7b/llm_memory.png"
run pytest_cuda 70 python -m pytest -m cuda -q tests
log "done"
