"""Round 3's grid (experiments/round3/PROTOCOL.md): mpnet, fp32, LoRA-FA rank 4 on CoLA, RTE and MRPC,
each init at the lr it chose on the holdout slice, paired seeds; full fine-tuning as the ceiling.

    python -m experiments.round3.sweep --list      # every run's state and exact command, and the budget
    git worktree add ../sweep-r3 HEAD && cd ../sweep-r3 && GLUE_DIR=/path/to/glue nohup nice -n 19 \\
        python -m experiments.round3.sweep --workers 2 --log-dir $OLDPWD/logs/round3 --ckpt-dir $OLDPWD/checkpoints &

Resumable (`utils.sweep`): finished runs are skipped, an interrupted one continues from its checkpoint to
the same numbers. Runs come from `experiments.round3.plan.run_states`, in the protocol's order.
"""
from __future__ import annotations

import sys

from experiments.round3.plan import MODEL, footer, run_states
from utils.sweep import main as sweep_main


def main(argv=None) -> int:
    return sweep_main(sys.argv[1:] if argv is None else list(argv), module="experiments.round3.sweep",
                      description=__doc__.split("\n")[0], log_dir="logs/round3", model=MODEL,
                      states=run_states, footer=footer)


if __name__ == "__main__":
    sys.exit(main())
