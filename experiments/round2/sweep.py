#!/usr/bin/env python
"""Round 2 of the research (README "Round 2 protocol"): which frozen A should LoRA-FA use, each init at
its own learning rate chosen on a holdout slice of train, all trained to the task's epoch budget.

    GLUE_DIR=../shared/glue nohup python -m experiments.round2.sweep --workers 2 > sweep2.out 2>&1 &
    python -m experiments.round2.sweep --list          # the exact commands, with the state of each run

Resumable: finished runs are skipped, interrupted ones continue from their checkpoints (--resume).
Every worker walks the whole list in priority order and runs the first run that is neither finished nor
held by another worker (lock files), one `run_glue.py` process per run. A run whose lr is "select"
waits until every lr of its init's selection grid has finished (`utils.selection.select_lr`; the protocol's
runs and settings are `experiments.round2.protocol`); MRPC's rank-16 runs join the list once amendment 2's rule has
decided them, then CoLA's 8-epoch runs (amendment 4), and the mpnet confirmation's once every MiniLM run
has finished and as far as the budget allows (amendment 3); these checks log next to `--log-dir`
(logs/round2_long, logs/round2_mpnet; `experiments.round2.checks`). To keep
editing the code meanwhile, run it from a worktree of a fixed commit with `--log-dir` pointing back:
    git worktree add ../sweep HEAD && cd ../sweep && \\
    GLUE_DIR=$PWD/../shared/glue nohup python -m experiments.round2.sweep --workers 2 --log-dir $OLDPWD/logs/round2 \\
        --ckpt-dir $OLDPWD/checkpoints &
(checkpoints in the main checkout's gitignored checkpoints/: a new worktree resumes the runs an old one left).
"""
from __future__ import annotations

import sys

from experiments.round2.plan import current_plan, progress, run_states
from experiments.round2.protocol import BUDGET
from utils.sweep import main as sweep_main


def footer(log_dir, *, model, data_dir, states) -> str:
    """`--list`'s last line: the progress and the worker-hours against the budget."""
    spent, total = current_plan(log_dir, model=model, data_dir=data_dir).hours
    return f"{progress(states)}; {spent:.1f} worker-hours so far, {total:.1f} projected (budget {BUDGET})"


def main(argv=None) -> int:
    return sweep_main(sys.argv[1:] if argv is None else list(argv), module="experiments.round2.sweep",
                      description=__doc__.split("\n")[0], log_dir="logs/round2", model="minilm",
                      states=run_states, footer=footer)


if __name__ == "__main__":
    sys.exit(main())
