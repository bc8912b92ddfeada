#!/usr/bin/env python
"""Round 2 of the research (README "Round 2 protocol"): which frozen A should LoRA-FA use, each init at
its own learning rate chosen on a holdout slice of train, all trained to the task's epoch budget.

    GLUE_DIR=../shared/glue nohup python sweep_round2.py --workers 2 > sweep2.out 2>&1 &
    python sweep_round2.py --list          # the exact commands, with the state of each run

Resumable: finished runs are skipped, interrupted ones continue from their checkpoints (--resume).
Every worker walks the whole list in priority order and runs the first run that is neither finished nor
held by another worker (lock files), one `run_glue.py` process per run. A run whose lr is "select"
waits until every lr of its init's selection grid has finished (`utils.stats.select_lr`). To keep
editing the code meanwhile, run it from a worktree of a fixed commit with `--log-dir` pointing back:
    git worktree add ../sweep HEAD && cd ../sweep && \\
    GLUE_DIR=$PWD/../shared/glue nohup python sweep_round2.py --workers 2 --log-dir $OLDPWD/logs/round2 &
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from utils.config import RunConfig
from utils.logs import load_runs, lock_path, read_log
from utils.stats import select_lr

LORA_LRS = (1e-4, 4e-4, 1.7e-3, 7e-3, 3e-2)  # the per-init selection grid (step 2)
GRID_LRS = {"full": (2e-5, 5e-5, 1e-4), "head": (1e-3, 5e-3, 2e-2), "lora-fa": LORA_LRS}  # step 1 and 2
INITS = ("random", "svd", "pissa", "milora", "eva", "grad")
EPOCHS = {"mrpc": 6, "cola": 4, "rte": 6}
EVAL_EVERY = {"mrpc": 52, "cola": 120, "rte": 35}  # twice per epoch after the 10 % holdout
SMALL_LR = LORA_LRS[0]  # step 4
SMALL_LR_SEEDS = (1,)  # step 4 beyond the selection run's seed 0: 2 seeds in all, as the budget plans


def runs() -> list[tuple]:
    """(task, method, init, lr, seed) in priority order; lr "select" or ("select", task): the chosen lr."""
    out = []
    for task in ("cola", "mrpc"):  # 1. ceilings, seed 0: the lr grids
        out += [(task, m, "none", lr, 0) for m in ("full", "head") for lr in GRID_LRS[m]]
    for task in ("cola", "mrpc"):  # 2. LoRA-FA lr per init, seed 0
        out += [(task, "lora-fa", init, lr, 0) for init in INITS for lr in LORA_LRS]
    out += [("rte", m, "none", ("select", "mrpc"), 0) for m in ("full", "head")]  # 1. RTE at MRPC's lrs
    for task in ("mrpc", "cola"):  # 1. ceiling seeds
        out += [(task, m, "none", "select", s) for s in (1, 2) for m in ("full", "head")]
    for task in ("mrpc", "cola"):  # 3. final comparison at the selected lrs
        out += [(task, "lora-fa", init, "select", s) for s in (1, 2) for init in INITS]
    for task in ("mrpc", "cola"):  # 4. the small-lr half
        out += [(task, "lora-fa", init, SMALL_LR, s) for s in SMALL_LR_SEEDS for init in INITS]
    return out


def config(task, method, init, lr, seed, args) -> RunConfig:
    return RunConfig(task=task, model=args.model, method=method, init="random" if init == "none" else init,
                     rank=4, lr=lr, seed=seed, epochs=EPOCHS[task], eval_every=EVAL_EVERY[task], batch_size=32,
                     max_length=128, bf16=False, group_by_length=True, holdout=0.1, init_batches=8,
                     log_dir=args.log_dir, data_dir=args.data_dir).canonical()


def command(cfg: RunConfig, threads: int | None) -> list[str]:
    """The run_glue.py command line of one run."""
    cmd = [sys.executable, "run_glue.py", "--task", cfg.task, "--model", cfg.model, "--method", cfg.method,
           "--lr", f"{cfg.lr:g}", "--seeds", str(cfg.seed), "--rank", "4", "--epochs", str(cfg.epochs),
           "--eval-every", str(cfg.eval_every), "--batch-size", "32", "--max-length", "128", "--no-bf16",
           "--group-by-length", "--holdout", "0.1", "--init-batches", "8", "--resume", "--no-progress",
           "--log-dir", cfg.log_dir]
    cmd += ["--init", cfg.init] if cfg.method == "lora-fa" else []
    cmd += ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    return cmd + (["--threads", str(threads)] if threads else [])


def resolve(args) -> list[tuple[str, RunConfig | None]]:
    """[(state, config)] for every run: finished, running (locked), ready, or waiting (no lr yet)."""
    history = load_runs(args.log_dir) if Path(args.log_dir).is_dir() else None
    out = []
    for task, method, init, lr, seed in runs():
        if lr == "select" or isinstance(lr, tuple):
            source = lr[1] if isinstance(lr, tuple) else task
            try:
                lr = select_lr(history, source, init if method == "lora-fa" else "none", GRID_LRS[method],
                               method=method, epochs=EPOCHS[source])[0] if history is not None else None
            except ValueError:
                lr = None
        if lr is None:
            out.append((f"waiting: {task} {method} {init} seed {seed} (lr not selected yet)", None))
            continue
        cfg = config(task, method, init, lr, seed, args)
        path = cfg.log_path
        if path.is_file() and read_log(path)["status"] == "finished":
            out.append(("finished", cfg))
        elif lock_path(path).exists():
            out.append(("running", cfg))
        else:
            out.append(("ready", cfg))
    return out


def worker(k: int, args) -> None:
    """Run the first ready run, again and again, until none is ready (waiting ones need others first)."""
    tried = set()
    while True:
        ready = [cfg for state, cfg in resolve(args) if state == "ready" and cfg.run_id not in tried]
        if not ready:
            return
        cfg = ready[0]
        tried.add(cfg.run_id)  # a run that fails is not retried in this sweep
        print(f"[worker {k}] {' '.join(command(cfg, args.threads))}", flush=True)
        subprocess.run(command(cfg, args.threads), check=False)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=1, help="one-thread worker processes (default 1: torch's threads)")
    p.add_argument("--log-dir", default="logs/round2")
    p.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--list", action="store_true", help="print every run's state and command, run nothing")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = 1 if args.workers > 1 else None
    if args.list:
        for state, cfg in resolve(args):
            print(state if cfg is None else f"{state:9s} {' '.join(command(cfg, args.threads)[1:])}")
        return 0
    if args.worker_id is not None or args.workers == 1:
        worker(args.worker_id or 0, args)
        return 0
    procs = []
    for k in range(args.workers):  # one process per worker, staggered so that their first picks differ
        procs.append(subprocess.Popen([sys.executable, __file__, *argv, "--worker-id", str(k)]))
        time.sleep(30)
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
