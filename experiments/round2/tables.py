"""Round 2's table pieces that its report (`experiments.round2.report`) and its follow-up checks
(`experiments.round2.checks`) share: a family of paired tests and the table of every series at its chosen lr.
"""
from __future__ import annotations

import pandas as pd

from experiments.round2.protocol import at_selected, convergence
from utils.report import format_table, shares, to_markdown
from utils.stats import holm, series_order, summary_table


def family(frames: list[pd.DataFrame], m: int | None = None) -> pd.DataFrame:
    """`paired_comparison` outputs as one family of tests, with Holm-adjusted p ("p_holm") over `m`, the
    registered family size (undefined tests count as p = 1; `utils.stats.holm`), and, if `m` is given,
    "p_holm_defined" over the defined tests only (as round 2 first reported them)."""
    frames = [f for f in frames if not f.empty]
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not pairs.empty:
        pairs["p_holm"] = holm(pairs["p"], m)
        if m is not None:
            pairs["p_holm_defined"] = holm(pairs["p"])
    return pairs


def within(frames: list[pd.DataFrame], label: str) -> list[pd.DataFrame]:
    """`paired_comparison` outputs of one init against itself (`by` rank or epochs), a and b written
    "<init> <label.format(a)>", e.g. "random r16" with `label` "r{}"."""
    return [f.assign(**{side: [f"{i} {label.format(v)}" for i, v in zip(f["init"], f[side])] for side in "ab"})
            if not f.empty else f for f in frames]


def series_markdown(summaries: pd.DataFrame, runs: pd.DataFrame, selected: pd.DataFrame, m0: float) -> str:
    """One task's series at their chosen lr (dev), one row each in series order: n, final and best (mean ±
    std), the final's 95 % CI, its share of full fine-tuning's gain over the majority class `m0` and step
    3's convergence rule on holdout ("" if no series has a finished run at its chosen lr)."""
    chosen = summary_table(at_selected(summaries, selected))
    if chosen.empty:
        return ""
    ranks = chosen["rank"].fillna(0).astype(int)  # the series' rank; summary_table: NaN for head and full
    order = sorted(range(len(chosen)), key=lambda k: (series_order(
        (chosen["method"].iloc[k], chosen["init"].iloc[k])), ranks.iloc[k]))
    chosen, ranks = chosen.iloc[order].reset_index(drop=True), ranks.iloc[order].tolist()
    f = format_table(chosen).drop(columns=["task", "metric"])
    f["95% CI (final)"] = [("–" if pd.isna(h) else f"{m - h:.3f} – {m + h:.3f}")
                           for m, h in zip(chosen["final_mean"], chosen["final_half"])]
    f["share of full FT"] = shares(chosen, m0)
    conv = convergence(runs, selected).set_index(["method", "init", "rank"])
    f["holdout: last − previous epoch"] = [
        "–" if k not in conv.index else f"{conv.loc[k, 'last'] - conv.loc[k, 'previous']:+.3f}"
        + ("" if conv.loc[k, "converged"] else " (not converged)")
        for k in zip(chosen["method"], chosen["init"], ranks)]
    return to_markdown(f)
