"""Statistics from the run logs: mean ± std over seeds, 95% t-intervals, paired comparisons of inits
with Holm's correction, and steps to a target metric (formatted as markdown by `utils.report`).

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

from lora import INITS
from utils.config import ADAPTER_METHODS, DATA_INITS, METHODS, NAME_FIELDS, UNHASHED_FIELDS, RunConfig
from utils.glue import get_task
from utils.logs import load_predictions, load_summaries, predictions_path, select_logs, summary_row
from utils.metrics import compute_metrics


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
    """`df` (runs or summaries) with the "variant" column, computed once per run if missing (an empty
    `df` gets an empty one, so grouping by it gives no groups rather than a KeyError)."""
    if "variant" in df.columns:
        return df
    if df.empty:
        return df.assign(variant=pd.Series(index=df.index, dtype=object))
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
        out[task.name] = _constant_majority(task.name, labels, labels)
    return out


def one_class_runs(log_dir) -> set[str]:
    """The run ids of finished classification runs whose last dev evaluation predicts one class on every
    dev example (a constant prediction: MCC 0, the majority class's scores if it is that class), read from the
    `*.preds.npz` next to the logs. `log_dir`: a folder or a `utils.logs.read_logs` result."""
    out = set()
    for path, log in select_logs(log_dir).items():
        pred_file = predictions_path(path)
        if not get_task(log["config"]["task"]).is_regression and pred_file.exists():
            if np.unique(np.asarray(load_predictions(pred_file)["dev"]["pred"])).size == 1:
                out.add(log["run_id"])
    return out


def _constant_majority(task: str, labels, fit_labels) -> dict[str, float]:
    """{metric: value} on `labels` of always predicting the most frequent class of `fit_labels`."""
    return compute_metrics(task, np.full_like(labels, np.bincount(fit_labels).argmax()), labels)


def holdout_majority(task, fraction: float, data_dir=None) -> dict[str, float] | None:
    """{metric: value} of the constant prediction of the training rows' majority class on the holdout
    slice that runs with `--holdout fraction` keep out of train (`utils.data.holdout_split`); None
    without local GLUE data (`data_dir`, else $GLUE_DIR: a report never waits on the hub)."""
    from utils.data import holdout_split  # noqa: PLC0415 (the tokenising stack: only here)
    from utils.glue import load_glue, local_data_dir  # noqa: PLC0415

    task = get_task(task)
    if task.is_regression or local_data_dir(data_dir) is None:
        return None
    labels = np.asarray(load_glue(task, data_dir).train["label"])
    keep, held = holdout_split(labels, fraction)
    return _constant_majority(task.name, labels[held], labels[keep])


PAIRED_BY = ("task", "model", "method", "rank", "lr", "variant")  # both inits at one lr
PAIRED_BY_SERIES = ("task", "model", "method", "rank", "variant")  # each init at whatever lr its rows have
SAME_DIFF = 1e-12  # paired differences closer than this are equal: float rounding, not variation between seeds


def paired_comparison(summaries: pd.DataFrame, a="svd", b="random", which: str = "final", keys=PAIRED_BY,
                      by: str = "init") -> pd.DataFrame:
    """Init `a` against init `b` on the same seeds, per group of `keys` (by default one
    task/model/method/rank/lr/variant; without "lr", each init at whatever lr its rows have, e.g.
    its selected one), on the task's main metric (`which`: "final" or "best"): n pairs, both means,
    the mean paired difference a − b with its 95% t-interval, the two-sided paired t-test p-value
    and how many seeds `a` won. `by="rank"` compares rank `a` with rank `b` instead (then `keys` holds
    "init" and not "rank").

    p is NaN for n < 2 and where the difference is the same on every seed (zero spread: t undefined).
    "The same" is up to float rounding (`SAME_DIFF`): a gain of 3 RTE dev examples on every seed is 3/277
    in exact arithmetic but a spread of 1e-17 in floats, where scipy would return p ≈ 1e-29."""
    df = with_variant(summaries)
    df = df[df["method"].isin(ADAPTER_METHODS) & df[by].isin([a, b])]
    keys, rows = list(keys), []
    for key, g in df.groupby(keys):
        metric = get_task(key[0]).main_metric
        col = f"{which}_{metric}"
        wide = g.pivot_table(index="seed", columns=by, values=col).dropna()
        if a not in wide or b not in wide or wide.empty:
            continue
        diff = wide[a] - wide[b]
        mean, _, n, half = t_interval(diff)
        spread = float(diff.max() - diff.min())
        p = float(stats.ttest_rel(wide[a], wide[b]).pvalue) if n >= 2 and spread > SAME_DIFF else math.nan
        rows.append(dict(zip(keys, key), a=a, b=b, metric=metric, which=which, n=n, mean_a=float(wide[a].mean()),
                         mean_b=float(wide[b].mean()), diff=mean, diff_lo=mean - half, diff_hi=mean + half,
                         p=p, wins=int((diff > 0).sum())))
    return pd.DataFrame(rows)


def holm(pvalues, m: int | None = None) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of tests: with the p-values sorted,
    p_(1) <= ... <= p_(m), the adjusted p_(i) = max over j <= i of min(1, (m - j + 1) · p_(j)). Rejecting
    where adjusted p < alpha keeps the family-wise error rate at alpha under any dependence between the tests.

    `m`: the registered family size. A test whose p is undefined (NaN, e.g. a difference that is zero on
    every seed) counts as p = 1: it stays in m, is never rejected and its adjusted p stays NaN. Default:
    m = the number of defined p-values (undefined tests dropped from the family)."""
    p = np.asarray(pd.Series(pvalues, dtype=float))
    out, ok = np.full(p.shape, math.nan), ~np.isnan(p)
    k, order = int(ok.sum()), np.argsort(p[ok])
    if m is None:
        m = k
    elif m < len(p):
        raise ValueError(f"holm: the family has {len(p)} tests, more than the registered m = {m}")
    scaled = np.minimum(1.0, (m - np.arange(k)) * p[ok][order])
    adjusted = np.empty(k)
    adjusted[order] = np.maximum.accumulate(scaled)
    out[ok] = adjusted
    return out


def steps_to_target(runs: pd.DataFrame, baselines: dict, frac: float = 0.9,
                    keys=("task", "model", "lr", "variant")) -> pd.DataFrame:
    """First evaluated step (and its `time_s`, the run's wall clock there) at which each run's main
    dev metric reaches the target

        target = m0 + frac · (m_best − m0)

    per group of `keys` (by default one task/model/lr/variant setting: all series at that lr,
    baselines included), where m0 is the majority-class metric (`baselines`, see
    `majority_metrics`; 0 if missing) and m_best the highest mean-over-seeds best metric of any
    series in the group. (A plain fraction of the best would be met at step 0 by MRPC's F1, whose
    majority-class value is 0.81.) NaN steps: the run never reached the target; NaN target: no
    series' mean best beat the majority class."""
    df = with_variant(runs)
    keys, rows = list(keys), []
    for key, g in df.groupby(keys):
        metric = get_task(key[0]).main_metric
        m0 = baselines.get(get_task(key[0]).name, {}).get(metric, 0.0)
        best_per_run = g.groupby(["method", "init", "rank", "seed"], dropna=False)[metric].max()
        m_best = best_per_run.groupby(level=["method", "init", "rank"], dropna=False).mean().max()
        # no series beat the trivial predictor: "converging" has no target to reach
        target = m0 + frac * (m_best - m0) if m_best > m0 else math.nan
        for (method, init, rank, seed), r in g.groupby(["method", "init", "rank", "seed"], dropna=False):
            hit = r[r[metric] >= target].sort_values("step")
            first = hit.iloc[0] if len(hit) else {}
            rows.append(dict(zip(keys, key), method=method, init=init, rank=rank, seed=seed, metric=metric,
                             target=target, step=float(first.get("step", math.nan)),
                             time_s=float(first.get("time_s") or math.nan)))
    return pd.DataFrame(rows)
