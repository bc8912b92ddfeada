#!/usr/bin/env python
"""Round 2 of the research (README "Round 2 protocol"): which frozen A should LoRA-FA use, each init at
its own learning rate chosen on a holdout slice of train, all trained to the task's epoch budget.

    GLUE_DIR=../shared/glue nohup python sweep_round2.py --workers 2 > sweep2.out 2>&1 &
    python sweep_round2.py --list          # the exact commands, with the state of each run

Resumable: finished runs are skipped, interrupted ones continue from their checkpoints (--resume).
Every worker walks the whole list in priority order and runs the first run that is neither finished nor
held by another worker (lock files), one `run_glue.py` process per run. A run whose lr is "select"
waits until every lr of its init's selection grid has finished (`utils.round2.select_lr`; the protocol's
runs and settings are `utils.round2`); MRPC's rank-16 runs join the list once amendment 2's rule has
decided them, then CoLA's 8-epoch runs (amendment 4), and the mpnet confirmation's once every MiniLM run
has finished and as far as the budget allows (amendment 3); these checks log next to `--log-dir`
(logs/round2_long, logs/round2_mpnet; `utils.round2_checks`). To keep
editing the code meanwhile, run it from a worktree of a fixed commit with `--log-dir` pointing back:
    git worktree add ../sweep HEAD && cd ../sweep && \\
    GLUE_DIR=$PWD/../shared/glue nohup python sweep_round2.py --workers 2 --log-dir $OLDPWD/logs/round2 \\
        --ckpt-dir $OLDPWD/checkpoints &
(checkpoints in the main checkout's gitignored checkpoints/: a new worktree resumes the runs an old one left).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from utils.config import RunConfig
from utils.round2 import BUDGET
from utils.round2_plan import current_plan, progress, run_states

POLL_S = 60  # how often an idle worker looks again while another worker's run is going


def command(cfg: RunConfig, threads: int | None, ckpt_dir: str | None = None) -> list[str]:
    """The run_glue.py command line of one run (checkpoints under `ckpt_dir`, if given: a folder
    outside the sweep's worktree survives its removal, so interrupted runs resume)."""
    cmd = [sys.executable, "run_glue.py", "--task", cfg.task, "--model", cfg.model, "--method", cfg.method,
           "--lr", f"{cfg.lr:g}", "--seeds", str(cfg.seed), "--epochs", str(cfg.epochs),
           "--eval-every", str(cfg.eval_every), "--batch-size", "32", "--max-length", "128", "--no-bf16",
           "--group-by-length", "--holdout", "0.1", "--init-batches", "8", "--resume", "--no-progress",
           "--log-dir", cfg.log_dir]
    cmd += ["--init", cfg.init, "--rank", str(cfg.rank)] if cfg.method == "lora-fa" else []
    cmd += ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    cmd += ["--ckpt-dir", ckpt_dir] if ckpt_dir else []
    return cmd + (["--threads", str(threads)] if threads else [])


def worker(k: int, args) -> None:
    """Run the first ready run, again and again. With none ready it waits while another worker's run is
    going (its end may choose an lr or add a check's runs to the plan), and stops once nothing is running."""
    tried = set()
    while True:
        states = run_states(args.log_dir, model=args.model, data_dir=args.data_dir)
        ready = [cfg for state, cfg in states if state == "ready" and cfg.run_id not in tried]
        if not ready:
            if not any(state == "running" for state, _ in states):
                return
            time.sleep(POLL_S)
            continue
        cfg = ready[0]
        tried.add(cfg.run_id)  # a run that fails is not retried in this sweep
        print(f"[worker {k}] {' '.join(command(cfg, args.threads, args.ckpt_dir))}", flush=True)
        subprocess.run(command(cfg, args.threads, args.ckpt_dir), check=False)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=1, help="one-thread worker processes (default 1: torch's threads)")
    p.add_argument("--log-dir", default="logs/round2")
    p.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR)")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint folder (default: run_glue's, checkpoints/ here); "
                   "give one outside a worktree")
    p.add_argument("--model", default="minilm")
    p.add_argument("--list", action="store_true", help="print every run's state and command, run nothing")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = 1 if args.workers > 1 else None
    if args.list:
        plan = current_plan(args.log_dir, model=args.model, data_dir=args.data_dir)
        states = run_states(args.log_dir, plan=plan)
        for state, cfg in states:
            print(state if cfg is None else f"{state:9s} {' '.join(command(cfg, args.threads, args.ckpt_dir)[1:])}")
        spent, total = plan.hours
        print(f"# {progress(states)}; {spent:.1f} worker-hours so far, {total:.1f} projected (budget {BUDGET})")
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
