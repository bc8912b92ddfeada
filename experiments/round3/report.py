"""Round 3's results as markdown (PROTOCOL.md, "What is reported"), from the logs alone:

    python -m experiments.round3.report [--log-dir logs/round3] [--data-dir GLUE]

Per task: the lr choice on the holdout slice (seed 0), the gate, every series at its chosen lr on GLUE
dev (final main metric, mean ± std, 95 % t-interval, share of full fine-tuning's gain over the majority
class, the convergence rule), then the registered family of 9 paired tests (each init − random, Holm over
m = 9, an undefined test counted as p = 1), the descriptive pissa − svd, and the logged wall times.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.round3.plan import (
    BUDGET,
    CONVERGED,
    EPOCHS,
    FAMILY,
    FULL_LRS,
    GATE,
    HOLDOUT,
    INITS,
    LORA_LRS,
    MODEL,
    RANK,
    TASKS,
    chosen_lrs,
    gate,
    planned_runs,
    run_states,
)
from utils.glue import get_task
from utils.logs import load_runs, load_summaries, read_logs
from utils.report import compute_table, fmt_lr, format_table, paired_markdown, shares, to_markdown
from utils.selection import epoch_change, holdout_scores
from utils.stats import (
    PAIRED_BY_SERIES,
    holdout_majority,
    holm,
    majority_metrics,
    one_class_runs,
    paired_comparison,
    summary_table,
)

SERIES = [("full", "none")] + [("lora-fa", i) for i in INITS]  # in the order of every table


def label(method: str, init: str) -> str:
    """A series' name in tables and figures."""
    return "full FT" if method == "full" else init


def at_chosen(df: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """The rows (runs or summaries) of round 3's series, each at the lr it chose on the holdout slice."""
    if df.empty:
        return df
    keep = np.zeros(len(df), dtype=bool)
    for (task, method, init), lr in chosen.items():
        keep |= ((df["task"] == task) & (df["method"] == method) & (df["init"] == init)
                 & np.isclose(df["lr"], lr) & (df["epochs"] == EPOCHS)).to_numpy()
    return df[keep]


def family_tests(summaries: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """The registered family, one row per test of `FAMILY` in its order (task, a, b; a test with no pairs
    yet has n = 0): the paired final dev difference a − b over the seeds both series have finished at their
    chosen lrs, its 95 % CI, the paired t-test's p and the Holm-adjusted p over m = len(FAMILY)."""
    mine = at_chosen(summaries[summaries["method"] == "lora-fa"], chosen) if len(summaries) else summaries
    rows = []
    for task, a, b in FAMILY:
        sub = mine[mine["task"] == task] if len(mine) else mine
        got = paired_comparison(sub, a, b, "final", keys=PAIRED_BY_SERIES) if len(sub) else pd.DataFrame()
        rows.append(got.iloc[0].to_dict() if len(got) else
                    dict(task=task, a=a, b=b, which="final", n=0, diff=math.nan, diff_lo=math.nan,
                         diff_hi=math.nan, p=math.nan, wins=0))
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"], len(FAMILY))
    return out


def selection_markdown(runs: pd.DataFrame, task: str, chosen: dict, one_class=frozenset()) -> str:
    """Seed 0 of every series of `task`: holdout score (final dev metric) at each lr of its grid, the
    chosen lr in bold (dev is shown, never used); † marks a run in `one_class` (run ids whose final dev
    predictions are one class, `one_class_runs`)."""
    rows, columns = [], ["series", *map(fmt_lr, sorted(FULL_LRS + LORA_LRS)), "chosen lr"]
    flat = runs[runs["run_id"].isin(one_class) & (runs["task"] == task) & (runs["seed"] == 0)] if len(runs) else runs
    for method, init in SERIES:
        flat_lrs = flat.loc[(flat["method"] == method) & (flat["init"] == init), "lr"].to_numpy() if len(flat) else []
        grid = FULL_LRS if method == "full" else LORA_LRS
        scores = holdout_scores(runs, task, init, method=method, epochs=EPOCHS, rank=RANK if method != "full" else 0)
        lr = chosen.get((task, method, init))
        row = {"series": label(method, init)}
        for g in grid:
            hit = scores[np.isclose(scores["lr"], g)] if len(scores) else scores
            cell = "" if hit.empty else f"{hit['score'].iloc[0]:.3f} ({hit['final_dev'].iloc[0]:.3f})" + (
                " †" if np.isclose(flat_lrs, g).any() else "")
            row[fmt_lr(g)] = f"**{cell}**" if cell and lr is not None and np.isclose(g, lr) else cell
        row["chosen lr"] = "–" if lr is None else fmt_lr(lr)
        if len(scores):
            rows.append(row)
    return to_markdown(pd.DataFrame(rows, columns=columns, dtype=object).fillna("")) if rows else ""


def series_markdown(summaries: pd.DataFrame, runs: pd.DataFrame, chosen: dict, task: str, m0: float,
                    one_class=frozenset()) -> str:
    """Every series of `task` at its chosen lr (dev): seeds, final and best (mean ± std), the final's 95 %
    CI, its share of full fine-tuning's gain over the majority class `m0`, the convergence rule (holdout
    main metric, last epoch − previous, within `CONVERGED[task]`) and the seeds whose final dev predictions
    are one class (their run ids in `one_class`)."""
    mine = at_chosen(summaries[summaries["task"] == task], chosen)
    if mine.empty:
        return ""
    table = summary_table(mine)
    order = sorted(range(len(table)), key=lambda k: SERIES.index((table["method"].iloc[k], table["init"].iloc[k])))
    table = table.iloc[order].reset_index(drop=True)
    f = format_table(table).drop(columns=["task", "metric", "model", "rank", "variant"], errors="ignore")
    f.insert(0, "series", [label(m, i) for m, i in zip(table["method"], table["init"])])
    f = f.drop(columns=["method", "init"])

    def seeds(method, init, among=None) -> str:
        """The series' seeds at its chosen lr (only runs whose ids are in `among`, if given), in order."""
        rows = mine[(mine["method"] == method) & (mine["init"] == init)]
        return " ".join(map(str, sorted(rows["seed"] if among is None else rows.loc[rows["run_id"].isin(among), "seed"])))

    f["seeds"] = [seeds(m, i) for m, i in zip(table["method"], table["init"])]
    f["95% CI (final)"] = ["–" if pd.isna(h) else f"{m - h:.3f} – {m + h:.3f}"
                           for m, h in zip(table["final_mean"], table["final_half"])]
    f["share of full FT"] = shares(table, m0)
    conv = epoch_change(at_chosen(runs[runs["task"] == task], chosen), ["method", "init"]).set_index(["method", "init"])
    f["holdout: last − previous epoch"] = [
        "–" if k not in conv.index else f"{conv.loc[k, 'last'] - conv.loc[k, 'previous']:+.3f}"
        + ("" if abs(conv.loc[k, "last"] - conv.loc[k, "previous"]) <= CONVERGED[task] + 1e-12 else " (not converged)")
        for k in zip(table["method"], table["init"])]
    f["one class on dev (seeds)"] = [seeds(m, i, one_class) or "–" for m, i in zip(table["method"], table["init"])]
    return to_markdown(f)


def family_markdown(tests: pd.DataFrame) -> str:
    """The family's rows as a table (a test without pairs: "no pairs yet", p = 1 in the Holm step)."""
    defined = tests[tests["n"] > 0]
    table = paired_markdown(defined.assign(a=[f"{get_task(t).title}: {a}" for t, a in zip(defined["task"], defined["a"])])
                            ) if len(defined) else ""
    missing = [f"{get_task(t).title} {a} − {b}" for t, a, b, n in zip(tests["task"], tests["a"], tests["b"], tests["n"]) if n == 0]
    note = f"\nNo pairs yet (p = 1 in the Holm step): {', '.join(missing)}.\n" if missing else ""
    return table + note


def gate_sentence(runs: pd.DataFrame, chosen: dict, task: str, data_dir=None) -> str:
    """The task's gate (PROTOCOL.md step 2) as a sentence."""
    if (task, "full", "none") not in chosen:
        return f"Gate: waiting for full fine-tuning's lr grid ({', '.join(map(fmt_lr, FULL_LRS))}, seed 0)."
    majority = holdout_majority(task, HOLDOUT, data_dir)
    if majority is None:
        return "Gate: needs the GLUE data (GLUE_DIR) for the holdout's majority class."
    metric, lr = get_task(task).main_metric, chosen[(task, "full", "none")]
    scores = holdout_scores(runs, task, "none", method="full", epochs=EPOCHS, rank=0)
    final = float(scores.loc[np.isclose(scores["lr"], lr), "final_holdout"].iloc[0])
    verdict = "passes: LoRA-FA runs follow" if gate(runs, chosen, task, majority) else \
        "fails: the task has no LoRA-FA comparison"
    return (f"Gate: full fine-tuning at lr {fmt_lr(lr)} ends at holdout {metric} {final:.3f} against the holdout "
            f"majority class's {majority[metric]:.3f} ({final - majority[metric]:+.3f}; the rule asks for "
            f"{GATE:+.2f}): it {verdict}.")


def progress(log_dir, data_dir=None) -> str:
    """How far the plan is, from the finished logs alone (never from locks or running logs, so a committed
    page regenerates the same anywhere): runs finished, cut by the budget, gated, still to run; hours."""
    kinds = [s.split(":")[0] for s, _ in run_states(log_dir, data_dir=data_dir)]
    logs = read_logs(log_dir) if Path(log_dir).is_dir() else {}
    hours = sum(log["summary"]["wall_time_s"] for log in logs.values()) / 3600
    done, cut, gated = kinds.count("finished"), kinds.count("over budget"), kinds.count("gated")
    return (f"Progress: {done} of {len(kinds)} planned runs finished, {cut} cut by the budget rule as it stands"
            f"{f', {gated} gated out' if gated else ''}, {len(kinds) - done - cut - gated} to run; {hours:.1f} "
            f"worker-hours logged (budget {BUDGET:g}). Cut as it stands: {named_cut(kinds) or 'none'}.")


def named_cut(kinds: list[str]) -> str:
    """The runs `kinds` (states in `planned_runs` order) marks "over budget", named by series and seed."""
    seeds: dict[tuple, list] = {}
    for (task, method, init, _, seed), kind in zip(planned_runs(), kinds):
        if kind == "over budget":
            seeds.setdefault((task, method, init), []).append(seed)
    return "; ".join(f"{get_task(task).title} {label(method, init)} seed{'s' if len(set(s)) > 1 else ''} "
                     + ", ".join(map(str, sorted(set(s)))) + ("" if len(s) == len(set(s)) else f" ({len(s)} runs)")
                     for (task, method, init), s in seeds.items())


def round3_report(log_dir="logs/round3", data_dir=None, tasks=TASKS) -> str:
    """Round 3's tables as markdown, from the finished logs in `log_dir` (see the module docstring): the
    sections of `tasks`, then the whole family and the compute of every task."""
    logs = read_logs(log_dir) if Path(log_dir).is_dir() else {}
    status = progress(log_dir, data_dir)
    if not logs:
        return f"No finished round-3 run yet. {status}\n"
    runs, summaries = load_runs(logs), load_summaries(logs)
    chosen, majority, one_class = chosen_lrs(runs), majority_metrics(logs), one_class_runs(logs)
    tests = family_tests(summaries, chosen)
    out = [f"Model `{MODEL}` (all-mpnet-base-v2, the stand-in for RoBERTa-base), fp32, LoRA-FA rank {RANK} on the "
           f"attention projections, {EPOCHS} epochs. Selection on the holdout slice ({HOLDOUT:.0%} of train, seed 0): "
           "cells are holdout score (final dev), the chosen lr in bold. Everything else is GLUE dev, final epoch: "
           "mean ± std over seeds, 95 % t-interval; share of full FT = (final − majority) / (full FT's mean final − "
           "majority), over the seeds full FT has finished (its seeds 1-2 run in phase 3). Paired: a − b on the "
           "seeds both series finished, two-sided paired t-test, Holm over the "
           f"m = {len(FAMILY)} registered tests (a test without pairs counts as p = 1; so does one whose difference "
           f"is the same on every seed, its p shown as –). {status}\n"]
    for task in tasks:
        t = get_task(task)
        if not (summaries["task"] == t.name).any():
            continue
        m0 = majority.get(t.name, {}).get(t.main_metric, math.nan)
        out += [f"\n### {t.title} ({t.main_metric}; dev majority class "
                + ("–" if math.isnan(m0) else f"{m0:.3f}") + ")\n",
                "Learning rate, seed 0, holdout score (final dev; † predicts one class on every dev example):\n",
                selection_markdown(runs, t.name, chosen, one_class),
                gate_sentence(runs, chosen, t.name, data_dir) + "\n"]
        table = series_markdown(summaries, runs, chosen, t.name, m0, one_class)
        if table:
            out += ["\nEvery series at its chosen lr (dev):\n", table]
        mine = tests[tests["task"] == t.name]
        if (mine["n"] > 0).any():
            out += [f"\nThe registered tests of {t.title} (Holm over all {len(FAMILY)}):\n", family_markdown(mine)]
        pissa = paired_comparison(at_chosen(summaries[summaries["task"] == t.name], chosen), "pissa", "svd", "final",
                                  keys=PAIRED_BY_SERIES)
        if len(pissa):
            out += ["\nDescriptive, outside the family (no p-value): pissa − svd:\n",
                    paired_markdown(pissa.assign(p=math.nan, p_holm=math.nan))]
    out += [f"\n### The registered family (m = {len(FAMILY)})\n", family_markdown(tests),
            "\n### Compute (logged wall time of each finished run)\n", to_markdown(compute_table(summaries))]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.round3.report", description=__doc__.split("\n")[0])
    p.add_argument("--log-dir", default="logs/round3")
    p.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, else ../shared/glue)")
    args = p.parse_args(argv)
    print(round3_report(args.log_dir, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
