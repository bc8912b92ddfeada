"""The learning rate a series gets in round 2, chosen on the holdout slice (`utils.selection.select_lr`):

    python -m experiments.round2.select --task mrpc --init svd --lr 1e-4 4e-4 1.7e-3 7e-3 3e-2 --epochs 6

prints the lr (and the scores behind it on stderr), or exits 1 while a run of the grid is missing.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.round2.select", description="the learning rate chosen on the holdout "
                                "slice for one init (utils.selection.select_lr); prints it, or exits 1 if a run is missing")
    p.add_argument("--log-dir", default="logs/round2", help="folder of JSON run logs (default: logs/round2)")
    p.add_argument("--task", required=True)
    p.add_argument("--init", required=True, help="adapter init (none for head/full)")
    p.add_argument("--method", default="lora-fa")
    p.add_argument("--lr", type=float, nargs="+", required=True, help="the candidate learning rates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="only runs of this many epochs")
    args = p.parse_args(argv)
    from utils.logs import load_runs
    from utils.report import to_markdown
    from utils.selection import select_lr

    try:
        lr, table = select_lr(load_runs(args.log_dir), args.task, args.init, args.lr, method=args.method,
                              seed=args.seed, epochs=args.epochs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(to_markdown(table), file=sys.stderr)
    print(f"{lr:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
