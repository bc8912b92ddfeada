"""Markdown for results: `utils.stats`' tables and tests formatted as strings and GitHub tables.

A round's report (experiments/roundN/report.py) is made of these. Every metric is measured on the GLUE
dev split unless a column says holdout (the slice of train held out for choosing learning rates).
"""
from __future__ import annotations

import math

import pandas as pd

from utils.config import ADAPTER_METHODS
from utils.glue import get_task
from utils.stats import holm, paired_comparison, series_order, steps_to_target, summary_table, t_interval, with_variant


def fmt_lr(lr) -> str:
    return f"{float(lr):g}"


def _pm(mean, std, digits=3):
    """"mean ± std", or just the mean when std is undefined, "–" when the mean is."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`summary_table` output as strings: "mean ± std" per final/best, "–" where undefined."""
    extra = ["variant"] if table["variant"].astype(bool).any() else []
    out = table[["task", "model", "method", "init", "rank", "lr", *extra, "metric", "n"]].copy()
    out["rank"] = [("–" if pd.isna(r) else str(int(r))) for r in out["rank"]]
    out["init"] = out["init"].where(out["method"].isin(ADAPTER_METHODS), "–")
    if extra:
        out["variant"] = out["variant"].replace("", "main")
    out["lr"] = [fmt_lr(v) for v in out["lr"]]
    out["final (mean ± std)"] = [_pm(m, s, digits) for m, s in zip(table["final_mean"], table["final_std"])]
    out["best (mean ± std)"] = [_pm(m, s, digits) for m, s in zip(table["best_mean"], table["best_std"])]
    return out


def format_summary(df: pd.DataFrame, digits: int = 4) -> str:
    """The `summarize` table as text: `format_table` cells, the count n replaced by "seeds (n)":
    the seed numbers and how many ("0 1 2 (3)")."""
    if df.empty:
        return "(no finished runs)"
    out = format_table(df, digits)
    at = out.columns.get_loc("n")
    seeds = [f"{s} ({n})" for s, n in zip(df["seeds"], out.pop("n"))]
    out.insert(at, "seeds (n)", seeds)
    return out.to_string(index=False)


def to_markdown(df: pd.DataFrame, fmt=str, align_numbers: bool = False) -> str:
    """A GitHub markdown table of `df` (no extra dependency), each cell written by `fmt`; with
    `align_numbers`, a column of numbers (and blanks: None, NaN, "", "n/a") is right-aligned."""
    rows = list(df.itertuples(index=False))

    def numeric(i):
        return bool(rows) and all((isinstance(r[i], (int, float)) and not isinstance(r[i], bool))
                                  or r[i] is None or r[i] in ("", "n/a") for r in rows)

    align = ["---:" if align_numbers and numeric(i) else "---" for i in range(len(df.columns))]
    cells = [[str(c) for c in df.columns]] + [[fmt(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "".join(a + "|" for a in align), *lines[1:]]) + "\n"


def fmt_p(p: float) -> str:
    """A p-value to 3 decimals, "<0.001" below that (never "0.000"), "–" for NaN."""
    return "–" if pd.isna(p) else ("<0.001" if p < 0.0005 else f"{p:.3f}")


def shares(chosen: pd.DataFrame, m0: float) -> list[str]:
    """Each row's share of full fine-tuning's gain over the majority class `m0`, (final − m0) / (full
    fine-tuning's final − m0), as text; "–" without a full fine-tuning row or gain. `chosen`: `summary_table`."""
    full = chosen.loc[chosen["method"] == "full", "final_mean"]
    gain = full.iloc[0] - m0 if len(full) else math.nan
    return ["–" if pd.isna(gain) or gain <= 0 else f"{(m - m0) / gain:.2f}" for m in chosen["final_mean"]]


def compute_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Wall time of the finished runs per task and method: runs, median and range per run in
    minutes, and total hours (each run's own logged wall clock, summed; runs that shared the CPU
    overlap in real time, so this is run time, not elapsed time)."""
    rows = []
    for (task, method), g in summaries.groupby(["task", "method"]):
        minutes = g["wall_time_s"].astype(float) / 60
        rows.append({"task": task, "method": method, "runs": len(g),
                     "minutes per run (median, range)": f"{minutes.median():.0f} ({minutes.min():.0f}–{minutes.max():.0f})",
                     "total hours": _hours(minutes.sum())})
    return pd.DataFrame(rows)


def _hours(minutes: float) -> str:
    """Total hours to one decimal; a total that would read "0.0" (a smoke run) in minutes instead."""
    return f"{minutes / 60:.1f}" if minutes >= 3 else f"< 0.1 ({minutes:.1f} min)"


def paired_markdown(pairs: pd.DataFrame) -> str:
    """`paired_comparison` rows (with "p_holm") as a markdown table."""
    lrs = {"lr": [fmt_lr(v) for v in pairs["lr"]]} if "lr" in pairs else {}  # absent: each at its own lr
    return to_markdown(pd.DataFrame({
        "comparison": [f"{a} − {b}" for a, b in zip(pairs["a"], pairs["b"])], **lrs,
        "which": pairs["which"], "n": pairs["n"],
        "difference (95% CI)": [f"{d:+.3f}" + ("" if pd.isna(lo) else f" ({lo:+.3f}, {hi:+.3f})")
                                for d, lo, hi in zip(pairs["diff"], pairs["diff_lo"], pairs["diff_hi"])],
        "p": [fmt_p(p) for p in pairs["p"]], "p (Holm)": [fmt_p(p) for p in pairs["p_holm"]],
        **({"p (Holm, defined tests only)": [fmt_p(p) for p in pairs["p_holm_defined"]]}
           if "p_holm_defined" in pairs else {}),
        "seeds won": [f"{w}/{n}" for w, n in zip(pairs["wins"], pairs["n"])]}))


def steps_markdown(steps: pd.DataFrame, wall: bool = False) -> str:
    """`steps_to_target` rows as a markdown table, one row per lr and series (`wall`: with the
    runs' wall clock at that step, in minutes)."""
    rows = []
    by = ["lr", "method", "init"] if "lr" in steps else ["method", "init"]
    for key, g in sorted(steps.groupby(by), key=lambda kv: (kv[0][0] if len(by) == 3 else 0, series_order(kv[0][-2:]))):
        method, init = key[-2:]
        m, sd, _, _ = t_interval(g["step"])
        row = {"lr": fmt_lr(key[0])} if len(by) == 3 else {}
        row.update({"method": method, "init": init if method in ADAPTER_METHODS else "–",
                    "target": _pm(g["target"].iloc[0], math.nan), "reached": f"{g['step'].notna().sum()}/{len(g)}",
                    "steps (mean ± std over runs that reached it)": _pm(m, sd, 0)})
        if wall:
            tm, tsd, _, _ = t_interval(g["time_s"] / 60)
            row["minutes (mean ± std)"] = _pm(tm, tsd, 1)
        rows.append(row)
    return to_markdown(pd.DataFrame(rows))


def format_report(runs: pd.DataFrame, summaries: pd.DataFrame, baselines: dict, contrasts, frac: float = 0.9) -> str:
    """A report of cells (each series at each lr it ran) as markdown, per task: final/best main dev metric
    per series (mean ± std, n, 95% CI of the final), the `contrasts` ((a, b) init pairs, a − b) on paired
    seeds at each lr under one Holm family, and steps to target. `runs`/`summaries` as from
    `load_runs`/`load_summaries`, `baselines` from `majority_metrics`."""
    if summaries.empty:
        return "No finished runs.\n"
    summaries = with_variant(summaries)
    if "variant" not in runs.columns:
        runs = runs.merge(summaries[["run_id", "variant"]], on="run_id")
    pairs_all = pd.concat([paired_comparison(summaries, a, b, w) for a, b in contrasts
                           for w in ("final", "best")], ignore_index=True)
    tests = int(pairs_all["p"].notna().sum()) if not pairs_all.empty else 0
    if not pairs_all.empty:
        pairs_all["p_holm"] = holm(pairs_all["p"])
    holm_note = (f"p (Holm): Holm-Bonferroni adjusted over all {tests} paired tests in this report (every task, "
                 "lr, contrast, final and best)." if tests else
                 "no paired tests in this report: a test needs ≥ 2 seeds of both series of a contrast.")
    out = [("All metrics on the GLUE dev split. mean ± std over seeds (n seeds); 95% CI: t-interval of "
            f"the mean. Paired: same seed numbers, difference a − b, two-sided paired t-test; {holm_note}\n")]
    for task in sorted(summaries["task"].unique()):
        t = get_task(task)
        s = summaries[summaries["task"] == task]
        base = baselines.get(t.name, {})
        out.append(f"\n### {t.title} ({t.main_metric}; majority-class {t.main_metric} = "
                   f"{base.get(t.main_metric, float('nan')):.3f})\n")
        table = summary_table(s)
        f = format_table(table)
        f["95% CI (final)"] = [("–" if pd.isna(h) else f"{m - h:.3f} – {m + h:.3f}")
                               for m, h in zip(table["final_mean"], table["final_half"])]
        out.append(to_markdown(f.drop(columns=["task", "metric"])))
        pairs = pairs_all[pairs_all["task"] == task] if not pairs_all.empty else pairs_all
        if not pairs.empty:
            out.append("\nPaired comparisons (same seeds):\n")
            out.append(paired_markdown(pairs))
        steps = steps_to_target(runs[runs["task"] == task], baselines, frac)
        if not steps.empty:
            out.append(f"\nSteps to reach {frac:.0%} of the way from the majority-class {t.main_metric} to "
                       f"the best series' mean best (first evaluation at or above the target):\n")
            out.append(steps_markdown(steps))
    out.append("\n### Compute (wall time of each finished run, as logged)\n")
    out.append(to_markdown(compute_table(summaries)))
    return "\n".join(out)
