"""Running a research round's plan: worker processes that each take the first ready run, again and again.

A round supplies its plan as a function `states(log_dir, model, data_dir) -> [(state, RunConfig | None)]`
in priority order (state "finished", "running", "ready" or "waiting: ..."; see a round's `plan.py`) and a
`footer(log_dir, model, data_dir, states) -> str` line for `--list`. Each run is one `run_glue.py` process
with `--resume`, so an interrupted run continues from its last checkpoint to the same numbers; lock files
(`utils.locks`) keep two workers off one run. To keep editing the code while a grid runs, run it from a
worktree of a fixed commit with `--log-dir` and `--ckpt-dir` pointing back into the main checkout.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

from utils.config import RunConfig, cli_args

POLL_S = 60  # how often an idle worker looks again while another worker's run is going
CHECKPOINT_MINUTES = 10  # a run also checkpoints this often, so a killed worker loses at most that much


def command(cfg: RunConfig, threads: int | None, ckpt_dir: str | None = None) -> list[str]:
    """The `run_glue.py` command line of one run: its settings (`cli_args`), resumable, no progress bars,
    checkpoints every `CHECKPOINT_MINUTES` and under `ckpt_dir` if given (a folder outside the sweep's
    worktree survives its removal)."""
    cmd = [sys.executable, "run_glue.py", *cli_args(cfg), "--resume", "--no-progress", "--log-dir", cfg.log_dir,
           "--checkpoint-minutes", str(CHECKPOINT_MINUTES)]
    cmd += ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    cmd += ["--ckpt-dir", ckpt_dir] if ckpt_dir else []
    return cmd + (["--threads", str(threads)] if threads else [])


def work(states: Callable[[], list], run: Callable[[RunConfig], object], *, poll_s: float | None = POLL_S) -> int:
    """Run the first ready run of `states()` with `run(cfg)`, again and again; returns how many it ran.
    With none ready it waits `poll_s` while another worker's run is going (its end may choose an lr and
    so make runs ready) and stops once nothing runs (`poll_s` None: stops at once). A run that fails is
    not tried again by this loop."""
    tried = set()
    while True:
        now = states()
        ready = [cfg for state, cfg in now if state == "ready" and cfg.run_id not in tried]
        if not ready:
            if poll_s is None or not any(state == "running" for state, _ in now):
                return len(tried)
            time.sleep(poll_s)
            continue
        tried.add(ready[0].run_id)
        run(ready[0])


def worker(k: int, states: Callable[[], list], threads: int | None, ckpt_dir: str | None = None) -> None:
    """Worker `k` of a sweep: `work` with one `run_glue.py` process per run (`command`)."""
    def run(cfg):
        print(f"[worker {k}] {' '.join(command(cfg, threads, ckpt_dir))}", flush=True)
        subprocess.run(command(cfg, threads, ckpt_dir), check=False)

    work(states, run)


def main(argv, *, module: str, description: str, log_dir: str, model: str,
         states: Callable[..., list], footer: Callable[..., str]) -> int:
    """The command line of one round's sweep (`python -m <module> --workers 2`, `--list`). `states` and
    `footer` as in the module docstring; `log_dir`, `model`: the round's defaults."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--workers", type=int, default=1, help="one-thread worker processes (default 1: torch's threads)")
    p.add_argument("--log-dir", default=log_dir)
    p.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR)")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint folder (default: run_glue's, checkpoints/ here); "
                   "give one outside a worktree")
    p.add_argument("--model", default=model)
    p.add_argument("--list", action="store_true", help="print every run's state and command, run nothing")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = 1 if args.workers > 1 else None

    def now():
        return states(args.log_dir, model=args.model, data_dir=args.data_dir)

    if args.list:
        listed = now()
        for state, cfg in listed:
            print(state if cfg is None else f"{state:9s} {' '.join(command(cfg, threads, args.ckpt_dir)[1:])}")
        print(f"# {footer(args.log_dir, model=args.model, data_dir=args.data_dir, states=listed)}")
        return 0
    if args.worker_id is not None or args.workers == 1:
        worker(args.worker_id or 0, now, threads, args.ckpt_dir)
        return 0
    procs = []
    for k in range(args.workers):  # one process per worker, staggered so that their first picks differ
        procs.append(subprocess.Popen([sys.executable, "-m", module, *argv, "--worker-id", str(k)]))
        time.sleep(30)
    return max(p.wait() for p in procs)
