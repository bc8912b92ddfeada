"""Round 1's report as markdown (experiments/round1/README.md): per task, the final/best main dev metric
of every cell (each init at the two shared lrs), round 1's paired contrasts under one Holm family, and
the steps to a target metric. `python -m experiments.round1.figures` writes it to imgs/results.md;
`python -m experiments.round1.tables` puts it into the round's README.
"""
from __future__ import annotations

from utils.logs import load_runs, load_summaries, read_logs
from utils.report import format_report
from utils.stats import majority_metrics

# Round 1's paired tests (a − b), one Holm family: each SVD-based init against random, and pissa
# against svd, which share A and B at step 0 and differ only in the base (W − W_r vs W): that contrast
# isolates svd's start shift W_eff = W + W_r from its A. seed − random tests the original claim with
# the original (wrong) factorization (MRPC, small lr).
CONTRASTS = (("svd", "random"), ("pissa", "random"), ("pissa", "svd"), ("seed", "random"))


def report(log_dir="logs/round1", frac: float = 0.9) -> str:
    """Round 1's tables as markdown from the finished runs in `log_dir` (`utils.report.format_report`
    with `CONTRASTS`)."""
    logs = read_logs(log_dir, status=None)
    return format_report(load_runs(logs), load_summaries(logs), majority_metrics(logs), CONTRASTS, frac)
