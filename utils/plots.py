"""Figures and tables from the run logs: training histories, the learning-rate summary, tables.

One set of functions serves the task notebooks (`show_task`), plots_for_preso.ipynb and the CLI
``python -m utils.plots --log-dir logs --out imgs`` (also ``python run_glue.py plot``).
Inputs are the tables of `utils.logs`: `load_runs` (one row per evaluation) for histories,
`load_summaries` (one row per run) for the summary figure and table.

Conventions: a *series* is one LoRA-FA init (``random``, ``svd``, ...) or one baseline method
(``head``, ``full``, plain ``lora``). Its colour comes from `series_style` and is the same in every
figure (Okabe-Ito palette, colour-blind safe); line style and marker separate methods. Curves are
means over seeds; bands and error bars are 95% t-intervals over seeds (none for n=1). Every metric
is measured on the GLUE dev split.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import zlib
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # scripts and tests: no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from utils.config import model_short_name  # noqa: E402
from utils.glue import get_task  # noqa: E402
from utils.logs import load_runs, load_summaries  # noqa: E402

# Okabe & Ito (2008) colour-blind-safe palette; yellow is left out (invisible on white).
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000", "grey": "#7F7F7F"}
INIT_COLORS = {"random": OKABE_ITO["orange"], "svd": OKABE_ITO["blue"], "pissa": OKABE_ITO["green"],
               "milora": OKABE_ITO["purple"], "seed": OKABE_ITO["vermillion"]}
BASELINE_COLORS = {"head": OKABE_ITO["grey"], "full": OKABE_ITO["black"]}
INIT_MARKERS = {"random": "o", "svd": "s", "pissa": "^", "milora": "D", "seed": "v"}
METHOD_LINES = {"lora-fa": "-", "lora": "--", "head": ":", "full": "-."}
ADAPTER_METHODS = ("lora-fa", "lora")  # methods with a rank; head/full baselines have none
METRIC_LABELS = {"mcc": "MCC", "f1": "F1", "accuracy": "accuracy", "pearson": "Pearson r",
                 "spearman": "Spearman ρ"}
SETTING = ("task", "model", "rank", "lr")  # one history figure per setting
plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})


class NoRunsError(ValueError):
    """The log folder holds no finished runs to plot."""


# ------------------------------------------------------------------ styles and statistics

def series_style(method: str, init: str | None) -> dict:
    """Label, colour, line style and marker of one series; identical in every figure."""
    if method in BASELINE_COLORS:
        label = {"head": "head only", "full": "full fine-tune"}[method]
        return dict(label=label, color=BASELINE_COLORS[method], linestyle=METHOD_LINES[method],
                    marker="X" if method == "head" else "P")
    extra = [OKABE_ITO[c] for c in ("sky", "green", "purple", "vermillion", "blue", "orange")]
    color = INIT_COLORS.get(init) or extra[zlib.crc32(str(init).encode()) % len(extra)]
    label = str(init) if method == "lora-fa" else f"{method} ({init})"
    return dict(label=label, color=color, linestyle=METHOD_LINES.get(method, "--"),
                marker=INIT_MARKERS.get(init, "o"))


def _series_order(key):
    method, init = key
    inits = list(INIT_COLORS)
    methods = list(METHOD_LINES)
    return (methods.index(method) if method in methods else 9,
            inits.index(init) if init in inits else 9, str(init))


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


def seed_curve(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std, n and 95% CI bounds of `column` over seeds at each step (columns lo/hi)."""
    rows = [(step, *t_interval(g[column])) for step, g in runs.groupby("step")]
    out = pd.DataFrame(rows, columns=["step", "mean", "std", "n", "half"]).dropna(subset=["mean"])
    out["lo"], out["hi"] = out["mean"] - out["half"], out["mean"] + out["half"]
    return out


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def task_metrics(task, columns) -> list[str]:
    """The task's dev metrics present in `columns`, main metric first."""
    t = get_task(task)
    names = [t.main_metric] + [m for m in t.metrics if m != t.main_metric]
    return [m for m in names if m in columns]


def _select(df: pd.DataFrame, task=None, **filters) -> pd.DataFrame:
    """Rows of `task` whose columns match `filters` (a value or a list); rank only binds adapters."""
    keep = pd.Series(True, index=df.index)
    if task is not None:
        keep &= df["task"] == get_task(task).name
    for col, value in filters.items():
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        match = df[col].isin(values)
        if col == "rank":
            match |= ~df["method"].isin(ADAPTER_METHODS)
        if col == "init":
            match |= df["method"].isin(list(BASELINE_COLORS))
        keep &= match
    return df[keep]


def _fmt_lr(lr) -> str:
    return f"{float(lr):g}"


def _n_text(ns) -> str:
    ns = sorted(set(int(n) for n in ns))
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


# ------------------------------------------------------------------ figures

def _legend(fig, handles, labels):
    """One legend below all panels (never over data), wrapped to the figure's width."""
    per_row = max(1, int(fig.get_figwidth() / 2.1))
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), per_row),
               title="LoRA-FA init / baseline")


def plot_histories(df: pd.DataFrame, task, *, model=None, rank=None, lr=None, fig=None):
    """Train loss, dev loss and the task's dev metric(s) against optimizer step, for one setting.

    `df` is `load_runs` output; `model`/`rank`/`lr` pick the setting (needed only when `df` holds
    several). Baselines (head/full) at the same lr are drawn too. One colour per series; lines are
    means over seeds with a shaded 95% t-interval. Returns the figure (drawn into `fig` if given).
    """
    task = get_task(task)
    runs = _select(df, task, model=model, rank=rank, lr=lr)
    adapters = runs[runs["method"].isin(ADAPTER_METHODS)]
    settings = adapters[["model", "rank", "lr"]].drop_duplicates() if len(adapters) else \
        runs[["model", "lr"]].drop_duplicates()
    if len(settings) != 1:
        raise ValueError(f"{task.name}: {len(settings)} settings match (model/rank/lr); pick one of\n"
                         f"{settings.to_string(index=False)}")
    metrics = task_metrics(task, runs.columns)
    panels = [("train_loss", "train loss"), ("dev_loss", "dev loss")] + \
        [(m, f"dev {metric_label(m)}") for m in metrics]
    ncols = 2 if len(panels) == 4 else len(panels)  # MRPC: 2 x 2
    nrows = math.ceil(len(panels) / ncols)
    fig = fig or plt.figure(figsize=(4.2 * ncols, 3.4 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    loss = "MSE loss" if task.is_regression else "cross-entropy loss"
    ns = []
    for (method, init), g in sorted(runs.groupby(["method", "init"]), key=lambda kv: _series_order(kv[0])):
        style = series_style(method, init)
        ns.append(g["seed"].nunique())
        for ax, (col, _) in zip(axes, panels):
            c = seed_curve(g, col)
            ax.plot(c["step"], c["mean"], color=style["color"], linestyle=style["linestyle"],
                    label=f"{style['label']} (n={ns[-1]})", lw=1.8)
            ax.fill_between(c["step"], c["lo"], c["hi"], color=style["color"], alpha=0.18, lw=0)
    for ax, (col, title) in zip(axes, panels):
        ax.set(title=title, xlabel="optimizer step",
               ylabel=loss if col.endswith("loss") else f"dev {metric_label(col)}")
        ax.grid(alpha=0.3)
    s = settings.iloc[0]
    where = model_short_name(s["model"]) + (f" · rank {s['rank']} · " if "rank" in s else " · ")
    seeds = "single seed (n=1), no band" if max(ns) == 1 else \
        f"mean over {_n_text(ns)} seeds, band = 95% CI"
    fig.suptitle(f"{task.folder} (GLUE dev split) · {where}lr {_fmt_lr(s['lr'])}\n{seeds}")
    handles, labels = axes[0].get_legend_handles_labels()
    _legend(fig, handles, labels)
    return fig


def summary_figure(summaries: pd.DataFrame, which: str = "final"):
    """Dev main metric (`which`: "final" or "best") against learning rate, one panel per
    task/model/rank; points are seed means with 95% t-interval error bars. Returns the figure."""
    summaries = summaries.copy()
    summaries["_key"] = list(zip(summaries["method"], summaries["init"]))
    adapters = summaries[summaries["method"].isin(ADAPTER_METHODS)]
    panels = sorted(adapters.groupby(["task", "model", "rank"]).groups)
    panels += sorted((t, m, None) for t, m in summaries.groupby(["task", "model"]).groups
                     if (t, m) not in {p[:2] for p in panels})  # tasks with baselines only
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = plt.figure(figsize=(5.2 * ncols, 4.2 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    legend, ns = {}, []
    for ax, (task, model, rank) in zip(axes, panels):
        metric = get_task(task).main_metric
        sub = _select(summaries, task, model=model, rank=rank)
        keys = sorted(sub["_key"].unique(), key=_series_order)
        for i, key in enumerate(keys):
            style = series_style(*key)
            pts = [(lr, *t_interval(g[f"{which}_{metric}"])) for lr, g in
                   sub[sub["_key"] == key].groupby("lr")]
            lr, mean, _, n, half = map(np.array, zip(*pts))
            ns += list(n)
            dodge = 10 ** (0.04 * (i - (len(keys) - 1) / 2))  # spread markers sideways
            h = ax.errorbar(lr * dodge, mean, yerr=np.nan_to_num(half), color=style["color"],
                            linestyle=style["linestyle"], marker=style["marker"], capsize=3, lw=1.5)
            legend.setdefault(style["label"], h)
        ax.set_xscale("log")
        lo, hi = np.log10(sub["lr"].min()), np.log10(sub["lr"].max())
        pad = max(0.25, (1 - (hi - lo)) / 2)  # show at least one decade: a labelled major tick
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate (log scale)", ylabel=f"dev {metric_label(metric)} ({which})",
               title=f"{get_task(task).folder} · {model_short_name(model)}" + (f" · rank {rank}" if rank is not None else ""))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{which.capitalize()} dev metric (GLUE dev split) vs learning rate\n"
                 f"mean over {_n_text(ns)} seeds per point, error bars = 95% CI")
    _legend(fig, list(legend.values()), list(legend))
    return fig


# ------------------------------------------------------------------ tables

def summary_table(summaries: pd.DataFrame, metrics: str = "main") -> pd.DataFrame:
    """Per task/model/method/init/rank/lr: n seeds, mean and std (ddof=1) of the final and best
    dev metric. `metrics="main"` keeps each task's main metric, `"all"` every dev metric."""
    rows = []
    for task, by_task in summaries.groupby("task"):
        names = task_metrics(task, [c.removeprefix("final_") for c in by_task.columns])
        by_task = by_task.assign(rank=by_task["rank"].where(by_task["method"].isin(ADAPTER_METHODS)))
        for name in names[:1] if metrics == "main" else names:
            for key, g in by_task.groupby(["model", "method", "init", "rank", "lr"], dropna=False):
                final, best = t_interval(g[f"final_{name}"]), t_interval(g.get(f"best_{name}", []))
                rows.append(dict(zip(["model", "method", "init", "rank", "lr"], key), task=task,
                                 metric=name, n=final[2], final_mean=final[0], final_std=final[1],
                                 best_mean=best[0], best_std=best[1]))
    cols = ["task", "model", "method", "init", "rank", "lr", "metric", "n",
            "final_mean", "final_std", "best_mean", "best_std"]
    table = pd.DataFrame(rows, columns=cols)
    order = table.apply(lambda r: _series_order((r["method"], r["init"])), axis=1)
    table = table.assign(_o=order).sort_values(["task", "model", "metric", "rank", "lr", "_o"])
    return table.drop(columns="_o").reset_index(drop=True)


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`summary_table` output as strings: "mean ± std" per final/best, "–" where undefined."""
    def pm(mean, std):
        if pd.isna(mean):
            return "–"
        return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")
    out = table[["task", "model", "method", "init", "rank", "lr", "metric", "n"]].copy()
    out["rank"] = [("–" if pd.isna(r) else str(int(r))) for r in out["rank"]]
    out["init"] = out["init"].where(out["method"].isin(ADAPTER_METHODS), "–")
    out["lr"] = [_fmt_lr(v) for v in out["lr"]]
    out["final (mean ± std)"] = [pm(m, s) for m, s in zip(table["final_mean"], table["final_std"])]
    out["best (mean ± std)"] = [pm(m, s) for m, s in zip(table["best_mean"], table["best_std"])]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table of `df` (no extra dependency)."""
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns), *lines[1:]]) + "\n"


# ------------------------------------------------------------------ notebook and CLI entry points

def _load(log_dir):
    log_dir = Path(log_dir)
    runs = load_runs(log_dir) if log_dir.exists() else pd.DataFrame()
    if runs.empty:
        raise NoRunsError(f"no finished runs in {log_dir.resolve()} (looked for *.json run logs): "
                          f"run experiments first (the task notebooks or `python run_glue.py`)")
    return runs, load_summaries(log_dir)


def _setting_name(task, model, rank, lr) -> str:
    slug = model_short_name(model)
    r = "" if rank is None or pd.isna(rank) else f"_r{int(rank)}"  # baselines have no rank
    return f"{task}_{slug}{r}_lr{_fmt_lr(lr)}_history"


def _settings(runs: pd.DataFrame):
    """(task, model, rank, lr) of every history figure: adapter settings, else baseline-only ones."""
    adapters = runs[runs["method"].isin(ADAPTER_METHODS)]
    found = set(adapters.groupby(list(SETTING)).groups)
    covered = {(t, m, lr) for t, m, _, lr in found}
    for t, m, lr in runs.groupby(["task", "model", "lr"]).groups:
        if (t, m, lr) not in covered:
            found.add((t, m, None, lr))
    return sorted(found, key=lambda s: (s[0], str(s[1]), s[2] or 0, s[3]))


def show_task(log_dir, task, *, model=None, init=None, rank=None, lr=None) -> pd.DataFrame:
    """Notebook view of one task: history figures per setting, the lr summary and the table.

    The filters (a value or a list) restrict to the runs the notebook asked for; baselines with the
    same model/lr are kept. Returns the formatted table of final/best dev metric per series.
    """
    from IPython.display import Markdown, display
    runs, summaries = _load(log_dir)
    runs = _select(runs, task, model=model, init=init, rank=rank, lr=lr)
    summaries = _select(summaries, task, model=model, init=init, rank=rank, lr=lr)
    if runs.empty:
        raise NoRunsError(f"no finished {get_task(task).name} runs in {log_dir} match the filters")
    for t, m, r, l in _settings(runs):
        fig = plot_histories(runs, t, model=m, rank=r, lr=l)
        display(fig)
        plt.close(fig)
    fig = summary_figure(summaries)
    display(fig)
    plt.close(fig)
    table = format_table(summary_table(summaries, metrics="all"))
    display(Markdown(to_markdown(table)))
    return table


def main(log_dir="logs", out_dir="imgs") -> list[Path]:
    """Write every history figure, the summary figures and imgs/summary.md (+ .csv) from `log_dir`."""
    runs, summaries = _load(log_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(out / name, dpi=130)
        plt.close(fig)
        written.append(out / name)

    for t, m, r, l in _settings(runs):
        save(plot_histories(runs, t, model=m, rank=r, lr=l), _setting_name(t, m, r, l) + ".png")
    for which in ("final", "best"):
        save(summary_figure(summaries, which), f"summary_{which}_metric.png")
    table = summary_table(summaries, metrics="all")
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(
        "# Final and best dev metric per setting (mean ± std over seeds; GLUE dev split)\n\n"
        + to_markdown(format_table(table)))
    return written + [out / "summary.csv", out / "summary.md"]


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log-dir", default="logs", help="folder of JSON run logs (default: logs)")
    parser.add_argument("--out", default="imgs", help="folder for PNGs and summary.md (default: imgs)")
    args = parser.parse_args(argv)
    try:
        paths = main(args.log_dir, args.out)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
