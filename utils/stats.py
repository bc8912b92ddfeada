"""Tables and statistics from the run logs: mean ± std over seeds, 95% t-intervals, the paired
svd-vs-random comparison, steps to a target metric, and the markdown report behind the README's
Results (`python run_glue.py plot` writes it to imgs/results.md, next to the figures).

Inputs are the tables of `utils.logs`: `load_summaries` (one row per run) and `load_runs` (one row
per evaluation). Every metric is measured on the GLUE dev split; seeds are paired by their number
(the same seed gives the same head init, data order and dropout masks for every init).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lora.inits import INITS
from utils.config import ADAPTER_METHODS, DATA_INITS, METHODS, NAME_FIELDS, UNHASHED_FIELDS, RunConfig
from utils.glue import compute_metrics, get_task
from utils.logs import (
    load_predictions,
    load_runs,
    load_summaries,
    predictions_path,
    read_logs,
    select_logs,
    summary_row,
)


def series_order(key):
    """Sort key of a (method, init) series in tables and legends: methods in utils.config.METHODS
    order, then inits in lora.inits.INITS order (unknown names last, alphabetically)."""
    method, init = key
    return (METHODS.index(method) if method in METHODS else 9,
            INITS.index(init) if init in INITS else 9, str(init))


def task_metrics(task, columns) -> list[str]:
    """The task's dev metrics present in `columns`, main metric first."""
    t = get_task(task)
    names = [t.main_metric] + [m for m in t.metrics if m != t.main_metric]
    return [m for m in names if m in columns]


def fmt_lr(lr) -> str:
    return f"{float(lr):g}"


def t_interval(values) -> tuple[float, float, int, float]:
    """(mean, std with ddof=1, n, half-width of the 95% t-interval); NaNs dropped, NaN if n < 2."""
    v = np.asarray(pd.Series(values, dtype=float).dropna())
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0, math.nan
    if n == 1:
        return float(v[0]), math.nan, 1, math.nan
    std = float(v.std(ddof=1))
    return float(v.mean()), std, n, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


# ------------------------------------------------------------------ which runs are averaged together

CELL = ("task", "model", "method", "init", "rank", "lr")  # a row of the tables: its runs differ in seed...
# ...and, in a `variant` of the cell, in settings: every RunConfig field that changes results
SETTINGS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in NAME_FIELDS + UNHASHED_FIELDS)
ADAPTER_SETTINGS = ("alpha", "targets", "lora_dropout", "svd_method", "reg_lambda")  # unused by head/full


def _applies(field: str, method: str, init: str) -> bool:
    """Whether `field` can change a run of this method and init (else it is not compared)."""
    if field in ADAPTER_SETTINGS:
        return method in ADAPTER_METHODS
    if field == "init_batches":
        return method in ADAPTER_METHODS and init in DATA_INITS
    return True


def _setting_text(value) -> str:
    """A setting's value as written in a variant name: "none" for None/NaN, 60 for 60.0 (a
    column with missing values holds floats), round-trip digits otherwise."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def add_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of `df` (one row per run, as from load_summaries) with a "variant" column.

    The main configuration of a task and model is the most common combination of its runs'
    result-changing settings (`SETTINGS`: epochs, max_steps, eval_every, holdout, group_by_length,
    batch_size, ...; adapter settings among adapter runs only); a run's variant names every setting
    where it differs from it, in RunConfig order, e.g. "max_steps=60, group_by_length=True,
    eval_every=20"; "" for the main configuration. This is the one grouping of every table, figure
    and test of the report and of `run_glue.py summary`: runs of different variants are never
    averaged or paired. Logs without a (newer) field count at its legacy value (utils.logs)."""
    df = df.copy()
    fields = [f for f in SETTINGS if f in df.columns]
    text = pd.DataFrame({f: [_setting_text(v) if _applies(f, m, i) else None
                             for v, m, i in zip(df[f], df["method"], df["init"])] for f in fields}, index=df.index)
    parts = pd.Series([[] for _ in range(len(df))], index=df.index, dtype=object)
    for _, g in text.groupby([df["task"], df["model"]], sort=False):
        for scope in (["init_batches"], list(ADAPTER_SETTINGS), None):  # data inits, adapters, all runs
            cols = [f for f in fields if (f not in ADAPTER_SETTINGS + ("init_batches",) if scope is None else f in scope)]
            rows = g[cols].dropna()
            if rows.empty or not cols:
                continue
            counts = rows.value_counts(sort=False)  # the most common combination; ties: the smallest
            main = dict(zip(cols, min(counts.index[counts == counts.max()])))
            for i, values in rows.iterrows():
                parts[i] += [(f, v) for f, v in values.items() if v != main[f]]
    order = {f: k for k, f in enumerate(SETTINGS)}
    df["variant"] = parts.map(lambda ps: ", ".join(f"{f}={v}" for f, v in sorted(ps, key=lambda p: order[p[0]])))
    return df


def with_variant(df: pd.DataFrame) -> pd.DataFrame:
    """`df` (runs or summaries) with the "variant" column, computed once per run if missing."""
    if "variant" in df.columns or df.empty:
        return df
    variant = add_variant(df.drop_duplicates("run_id")).set_index("run_id")["variant"]
    return df.assign(variant=df["run_id"].map(variant))


# ------------------------------------------------------------------ tables

def summary_table(summaries: pd.DataFrame, metrics: str = "main") -> pd.DataFrame:
    """Per task/model/method/init/rank/lr: n seeds, mean and std (ddof=1) of the final and best
    dev metric. `metrics="main"` keeps each task's main metric, `"all"` every dev metric."""
    rows, keys = [], ["model", "method", "init", "rank", "lr", "variant"]
    for task, by_task in with_variant(summaries).groupby("task"):
        names = task_metrics(task, [c.removeprefix("final_") for c in by_task.columns])
        by_task = by_task.assign(rank=by_task["rank"].where(by_task["method"].isin(ADAPTER_METHODS)))
        for name in names[:1] if metrics == "main" else names:
            for key, g in by_task.groupby(keys, dropna=False):
                final, best = t_interval(g[f"final_{name}"]), t_interval(g.get(f"best_{name}", []))
                rows.append(dict(zip(keys, key), task=task,
                                 metric=name, n=final[2], final_mean=final[0], final_std=final[1],
                                 final_half=final[3], best_mean=best[0], best_std=best[1]))
    cols = ["task", *keys, "metric", "n", "final_mean", "final_std", "final_half", "best_mean", "best_std"]
    table = pd.DataFrame(rows, columns=cols)
    order = table.apply(lambda r: series_order((r["method"], r["init"])), axis=1)
    main = table["metric"] != [get_task(t).main_metric for t in table["task"]]  # main metric first
    table = table.assign(_o=order, _m=main).sort_values(["task", "model", "variant", "_m", "rank", "lr", "_o"])
    return table.drop(columns=["_o", "_m"]).reset_index(drop=True)


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


def summarize(runs) -> pd.DataFrame:
    """The `run_glue.py summary` table: `summary_table` of the main dev metric (one row per cell and
    variant, see `add_variant`) plus "seeds", the seeds of each row. `runs`: run logs (dicts), a
    `load_summaries` table, or a log folder; only finished runs count."""
    if isinstance(runs, (str, Path)):
        runs = load_summaries(runs)
    elif not isinstance(runs, pd.DataFrame):
        runs = pd.DataFrame([summary_row(log) for log in runs if log.get("status") == "finished"])
    runs = runs[runs["status"] == "finished"] if "status" in runs else runs
    if runs.empty:
        return pd.DataFrame(columns=[*CELL, "variant", "metric", "n", "final_mean", "final_std", "final_half",
                                     "best_mean", "best_std", "seeds"])
    cells = with_variant(runs).assign(rank=lambda d: d["rank"].where(d["method"].isin(ADAPTER_METHODS)))
    seeds = cells.groupby([*CELL, "variant"], dropna=False)["seed"].agg(lambda s: " ".join(map(str, sorted(s))))
    return summary_table(cells).merge(seeds.rename("seeds").reset_index(), on=[*CELL, "variant"], how="left")


def format_summary(df: pd.DataFrame, digits: int = 4) -> str:
    """The `summarize` table as text: `format_table` cells plus the seeds."""
    if df.empty:
        return "(no finished runs)"
    out = format_table(df, digits)
    out.insert(out.columns.get_loc("n") + 1, "seeds", df["seeds"].to_numpy())
    return out.to_string(index=False)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table of `df` (no extra dependency)."""
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns), *lines[1:]]) + "\n"




# ------------------------------------------------------------------ statistics for the verdict

def majority_metrics(log_dir) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the constant majority-class prediction on the dev split, from the
    dev labels stored next to the logs (`*.preds.npz`). Regression tasks are left out. `log_dir`:
    a folder or a `utils.logs.read_logs` result."""
    out = {}
    for path, log in select_logs(log_dir, status=None).items():
        task = get_task(log["config"]["task"])
        pred_file = predictions_path(path)
        if task.name in out or task.is_regression or not pred_file.exists():
            continue
        labels = np.asarray(load_predictions(pred_file)["dev"]["label"])
        majority = np.full_like(labels, np.bincount(labels).argmax())
        out[task.name] = compute_metrics(task.name, majority, labels)
    return out


# The paired tests of the report (a − b), one Holm family: each SVD-based init against random, and
# pissa against svd, which share A and B at step 0 and differ only in the base (W − W_r vs W): that
# contrast isolates svd's start shift W_eff = W + W_r from its A (added before any pissa run finished).
# seed − random tests the original claim with the original (wrong) factorization (MRPC, small lr).
CONTRASTS = (("svd", "random"), ("pissa", "random"), ("pissa", "svd"), ("seed", "random"))


def paired_comparison(summaries: pd.DataFrame, a: str = "svd", b: str = "random",
                      which: str = "final") -> pd.DataFrame:
    """Init `a` against init `b` on the same seeds, per task/model/method/rank/lr/variant, on the
    task's main metric (`which`: "final" or "best"): n pairs, both means, the mean paired
    difference a − b with its 95% t-interval, the two-sided paired t-test p-value (NaN for n < 2)
    and how many seeds `a` won."""
    df = with_variant(summaries)
    df = df[df["method"].isin(ADAPTER_METHODS) & df["init"].isin([a, b])]
    keys, rows = ["task", "model", "method", "rank", "lr", "variant"], []
    for key, g in df.groupby(keys):
        metric = get_task(key[0]).main_metric
        col = f"{which}_{metric}"
        wide = g.pivot_table(index="seed", columns="init", values=col).dropna()
        if a not in wide or b not in wide or wide.empty:
            continue
        diff = wide[a] - wide[b]
        mean, std, n, half = t_interval(diff)
        p = float(stats.ttest_rel(wide[a], wide[b]).pvalue) if n >= 2 and std > 0 else math.nan
        rows.append(dict(zip(keys, key), a=a, b=b, metric=metric, which=which, n=n, mean_a=float(wide[a].mean()),
                         mean_b=float(wide[b].mean()), diff=mean, diff_lo=mean - half, diff_hi=mean + half,
                         p=p, wins=int((diff > 0).sum())))
    return pd.DataFrame(rows)


def fmt_p(p: float) -> str:
    """A p-value to 3 decimals, "<0.001" below that (never "0.000"), "–" for NaN."""
    return "–" if pd.isna(p) else ("<0.001" if p < 0.0005 else f"{p:.3f}")


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of tests (NaNs stay NaN and are not counted):
    with the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) · p_(j)). Rejecting where adjusted p < alpha keeps the family-wise error
    rate at alpha under any dependence between the tests."""
    p = np.asarray(pd.Series(pvalues, dtype=float))
    out, ok = np.full(p.shape, math.nan), ~np.isnan(p)
    m, order = int(ok.sum()), np.argsort(p[ok])
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[ok][order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    out[ok] = adjusted
    return out


def steps_to_target(runs: pd.DataFrame, baselines: dict, frac: float = 0.9) -> pd.DataFrame:
    """First evaluated step at which each run's main dev metric reaches the target

        target = m0 + frac · (m_best − m0)

    per task/model/lr/variant setting (all series at that lr, baselines included), where m0 is the majority-class metric (`baselines`,
    see `majority_metrics`; 0 if missing) and m_best the highest mean-over-seeds best metric of
    any series in that setting. (A plain fraction of the best would be met at step 0 by MRPC's
    F1, whose majority-class value is 0.81.) NaN steps: the run never reached the target; NaN target:
    no series' mean best beat the majority class."""
    df = with_variant(runs)
    keys, rows = ["task", "model", "lr", "variant"], []
    for key, g in df.groupby(keys):
        metric = get_task(key[0]).main_metric
        m0 = baselines.get(get_task(key[0]).name, {}).get(metric, 0.0)
        best_per_run = g.groupby(["method", "init", "rank", "seed"], dropna=False)[metric].max()
        m_best = best_per_run.groupby(level=["method", "init", "rank"], dropna=False).mean().max()
        # no series beat the trivial predictor: "converging" has no target to reach
        target = m0 + frac * (m_best - m0) if m_best > m0 else math.nan
        for (method, init, rank, seed), r in g.groupby(["method", "init", "rank", "seed"], dropna=False):
            hit = r[r[metric] >= target]["step"]
            rows.append(dict(zip(keys, key), method=method, init=init, rank=rank, seed=seed, metric=metric,
                             target=target, step=float(hit.min()) if len(hit) else math.nan))
    return pd.DataFrame(rows)


def select_lr(runs: pd.DataFrame, task: str, init: str, lrs, *, method: str = "lora-fa", seed: int = 0,
              epochs: int | None = None) -> tuple[float, pd.DataFrame]:
    """The learning rate chosen on the holdout slice (never dev) for one (task, method, init):

        score(lr) = mean of the holdout main metric over the evaluations of the run's last epoch

    (the end of training, averaged over that epoch's evaluations to damp one evaluation's noise),
    over finished `seed` runs of `task`/`method`/`init` (and `epochs`, if given); the highest score
    wins, ties go to the smaller lr. `runs`: `load_runs` output. Returns (lr, candidates table);
    ValueError naming what is missing if a run of `lrs` has not finished or has no holdout metrics."""
    metric = get_task(task).main_metric
    col = f"holdout_{metric}"
    pick = runs[(runs["task"] == get_task(task).name) & (runs["method"] == method) & (runs["init"] == init)
                & (runs["seed"] == seed)] if len(runs) else runs
    if epochs is not None and len(pick):
        pick = pick[pick["epochs"] == epochs]
    rows = []
    for lr in sorted(float(x) for x in lrs):
        r = pick[np.isclose(pick["lr"].astype(float), lr)] if len(pick) else pick
        if r.empty or col not in r or r[col].isna().all():
            raise ValueError(f"select_lr: no finished {task} {method} {init} run at lr {lr:g}, seed {seed}"
                             + (f", {epochs} epochs" if epochs else "") + f" with holdout {metric}")
        last = r[r["epoch"] > r["epoch"].max() - 1]  # the evaluations of the last epoch
        rows.append({"lr": lr, "score": float(last[col].mean()), "evaluations": len(last),
                     "final_holdout": float(r.sort_values("step")[col].iloc[-1])})
    table = pd.DataFrame(rows)
    best = table.loc[table["score"].idxmax(), "lr"]  # idxmax: the first (smallest lr) of equal scores
    return float(best), table


def compute_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Wall time of the finished runs per task and method: runs, median and range per run in
    minutes, and total hours (each run's own logged wall clock, summed; runs that shared the CPU
    overlap in real time, so this is run time, not elapsed time)."""
    rows = []
    for (task, method), g in summaries.groupby(["task", "method"]):
        minutes = g["wall_time_s"].astype(float) / 60
        rows.append({"task": task, "method": method, "runs": len(g),
                     "minutes per run (median, range)": f"{minutes.median():.0f} ({minutes.min():.0f}–{minutes.max():.0f})",
                     "total hours": f"{minutes.sum() / 60:.1f}"})
    return pd.DataFrame(rows)


def report(log_dir="logs", frac: float = 0.9) -> str:
    """The Results tables as markdown from the finished runs in `log_dir` (see `format_report`)."""
    logs = read_logs(log_dir, status=None)
    return format_report(load_runs(logs), load_summaries(logs), majority_metrics(logs), frac)


def format_report(runs: pd.DataFrame, summaries: pd.DataFrame, baselines: dict, frac: float = 0.9) -> str:
    """The Results tables as markdown, per task: final/best main dev metric per series (mean ± std,
    n, 95% CI of the final), the `CONTRASTS` on paired seeds, and steps to target.
    `runs`/`summaries` as from `load_runs`/`load_summaries`, `baselines` from `majority_metrics`."""
    if summaries.empty:
        return "No finished runs.\n"
    summaries = with_variant(summaries)
    if "variant" not in runs.columns:
        runs = runs.merge(summaries[["run_id", "variant"]], on="run_id")
    pairs_all = pd.concat([paired_comparison(summaries, a, b, w) for a, b in CONTRASTS
                           for w in ("final", "best")], ignore_index=True)
    tests = int(pairs_all["p"].notna().sum()) if not pairs_all.empty else 0
    if not pairs_all.empty:
        pairs_all["p_holm"] = holm(pairs_all["p"])
    out = [("All metrics on the GLUE dev split. mean ± std over seeds (n seeds); 95% CI: t-interval of "
            "the mean. Paired: same seed numbers, difference a − b, two-sided paired t-test; "
            f"p (Holm): Holm-Bonferroni adjusted over all {tests} paired tests in this report (every task, "
            "lr, contrast, final and best).\n")]
    for task in sorted(summaries["task"].unique()):
        t = get_task(task)
        s = summaries[summaries["task"] == task]
        base = baselines.get(t.name, {})
        out.append(f"\n### {t.name.upper()} ({t.main_metric}; majority-class {t.main_metric} = "
                   f"{base.get(t.main_metric, float('nan')):.3f})\n")
        table = summary_table(s)
        f = format_table(table)
        f["95% CI (final)"] = [("–" if pd.isna(h) else f"{m - h:.3f} – {m + h:.3f}")
                               for m, h in zip(table["final_mean"], table["final_half"])]
        out.append(to_markdown(f.drop(columns=["task", "metric"])))
        pairs = pairs_all[pairs_all["task"] == task] if not pairs_all.empty else pairs_all
        if not pairs.empty:
            out.append("\nPaired comparisons (same seeds):\n")
            out.append(to_markdown(pd.DataFrame({
                "comparison": [f"{a} − {b}" for a, b in zip(pairs["a"], pairs["b"])],
                "lr": [fmt_lr(v) for v in pairs["lr"]], "which": pairs["which"], "n": pairs["n"],
                "difference (95% CI)": [f"{d:+.3f}" + ("" if pd.isna(lo) else f" ({lo:+.3f}, {hi:+.3f})")
                                        for d, lo, hi in zip(pairs["diff"], pairs["diff_lo"], pairs["diff_hi"])],
                "p": [fmt_p(p) for p in pairs["p"]], "p (Holm)": [fmt_p(p) for p in pairs["p_holm"]],
                "seeds won": [f"{w}/{n}" for w, n in zip(pairs["wins"], pairs["n"])]})))
        steps = steps_to_target(runs[runs["task"] == task], baselines, frac)
        if not steps.empty:
            out.append(f"\nSteps to reach {frac:.0%} of the way from the majority-class {t.main_metric} to "
                       f"the best series' mean best (first evaluation at or above the target):\n")
            rows = []
            groups = steps.groupby(["lr", "method", "init"])
            for (lr, method, init), g in sorted(groups, key=lambda kv: (kv[0][0], series_order(kv[0][1:]))):
                m, sd, _, _ = t_interval(g["step"])
                rows.append({"lr": fmt_lr(lr), "method": method, "init": init if method in ADAPTER_METHODS else "–",
                             "target": _pm(g["target"].iloc[0], math.nan), "reached": f"{g['step'].notna().sum()}/{len(g)}",
                             "steps (mean ± std over runs that reached it)": _pm(m, sd, 0)})
            out.append(to_markdown(pd.DataFrame(rows)))
    out.append("\n### Compute (wall time of each finished run, as logged)\n")
    out.append(to_markdown(compute_table(summaries)))
    return "\n".join(out)
