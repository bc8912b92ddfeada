"""The figures: training histories and the dev metric against learning rate (round 2's: `experiments.round2.figures`).

Inputs are the tables of `utils.logs`: `load_runs` (one row per evaluation) for histories and lr
sensitivity, `load_summaries` (one row per run) for the summary figure. `utils.plots` writes them
to imgs/ and shows them in the notebooks.

Conventions: a *series* is one LoRA-FA init (``random``, ``svd``, ...) or one baseline method
(``head``, ``full``, plain ``lora``). Its colour comes from `series_style` and is the same in every
figure (Okabe-Ito palette, colour-blind safe); line style and marker separate methods. Curves are
means over seeds; bands and error bars are 95% t-intervals over seeds (none for n=1). Every metric
is measured on the GLUE dev split unless labelled holdout (the slice of train that chooses lrs).
"""
from __future__ import annotations

import math
import os
import sys
import zlib

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # scripts and tests: no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from utils.config import ADAPTER_METHODS, model_short_name
from utils.glue import get_task
from utils.report import fmt_lr
from utils.stats import series_order, t_interval, task_metrics, with_variant

# Okabe & Ito (2008) colour-blind-safe palette; yellow is left out (invisible on white), and "wine"
# (Tol's muted palette) gives a seventh init its own colour.
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000", "grey": "#7F7F7F"}
INIT_COLORS = {"random": OKABE_ITO["orange"], "svd": OKABE_ITO["blue"], "pissa": OKABE_ITO["green"],
               "milora": OKABE_ITO["purple"], "seed": OKABE_ITO["vermillion"], "eva": OKABE_ITO["sky"],
               "grad": "#882255"}
BASELINE_COLORS = {"head": OKABE_ITO["grey"], "full": OKABE_ITO["black"]}
INIT_MARKERS = {"random": "o", "svd": "s", "pissa": "^", "milora": "D", "seed": "v", "eva": "*", "grad": "h"}
METHOD_LINES = {"lora-fa": "-", "lora": "--", "head": ":", "full": "-."}
METRIC_LABELS = {"mcc": "MCC", "f1": "F1", "accuracy": "accuracy", "pearson": "Pearson r",
                 "spearman": "Spearman ρ"}
STYLE = {"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10}  # applied per figure only


# ------------------------------------------------------------------ styles and statistics

def series_style(method: str, init: str | None) -> dict:
    """Label, colour, line style and marker of one series; identical in every figure."""
    if method in BASELINE_COLORS:
        label = {"head": "head only", "full": "full fine-tune"}[method]
        return {"label": label, "color": BASELINE_COLORS[method], "linestyle": METHOD_LINES[method],
                "marker": "X" if method == "head" else "P"}
    extra = [OKABE_ITO[c] for c in ("sky", "green", "purple", "vermillion", "blue", "orange")]
    color = INIT_COLORS.get(init) or extra[zlib.crc32(str(init).encode()) % len(extra)]
    label = str(init) if method == "lora-fa" else f"{method} ({init})"
    return {"label": label, "color": color, "linestyle": METHOD_LINES.get(method, "--"),
            "marker": INIT_MARKERS.get(init, "o")}


def seed_curve(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std, n and 95% CI bounds of `column` over seeds at each step (columns lo/hi)."""
    rows = [(step, *t_interval(g[column])) for step, g in runs.groupby("step")]
    out = pd.DataFrame(rows, columns=["step", "mean", "std", "n", "half"]).dropna(subset=["mean"])
    out["lo"], out["hi"] = out["mean"] - out["half"], out["mean"] + out["half"]
    return out


def pooled_train_loss(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` (`load_runs` rows) with each evaluation's train loss, the mean over the steps since the
    previous evaluation, pooled into the next one where that one's window is under half the run's
    median window (an epoch-end evaluation a step or two after a periodic one, whose one-step mean
    is noise): the pooled loss is the step-weighted mean over both windows, at the later step, and
    the earlier row's train loss becomes NaN. Nothing else changes."""
    out = runs.copy()
    for _, g in out.sort_values("step").groupby("run_id"):
        window = np.diff(g["step"].to_numpy(dtype=float), prepend=0.0)
        for k in np.flatnonzero(window < 0.5 * np.median(window)):
            if k == 0:
                continue
            a, b = g.index[k - 1], g.index[k]
            w = window[k - 1], window[k]
            out.loc[b, "train_loss"] = (out.loc[a, "train_loss"] * w[0] + out.loc[b, "train_loss"] * w[1]) / sum(w)
            out.loc[a, "train_loss"] = np.nan
    return out


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def select_series(df: pd.DataFrame, task=None, **filters) -> pd.DataFrame:
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


def _n_text(ns) -> str:
    ns = sorted({int(n) for n in ns})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


# ------------------------------------------------------------------ figures

def legend_below(fig, handles, labels, title="LoRA-FA init / baseline"):
    """One legend below all panels (never over data), wrapped to the figure's width: as many entries
    per row as the longest label leaves room for (~0.075 in per character, 0.7 in for the handle)."""
    widest = max((len(label) for label in labels), default=0) * 0.075 + 0.7
    per_row = max(1, int(fig.get_figwidth() / max(2.1, widest)))
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), per_row),
               title=title)


def focus_ylim(ax, values, pad: float = 0.15) -> None:
    """Y-limits around `values` (the lines' means and reference levels) with `pad` of their span on each
    side, so that a wide confidence band (few seeds) is cut at the axes instead of flattening the lines."""
    values = [float(v) for v in values if np.isfinite(v)]
    if values:
        lo, hi = min(values), max(values)
        span = hi - lo or max(abs(hi), 1.0) * 0.1
        ax.set_ylim(lo - pad * span, hi + pad * span)


def majority_line(ax, majority, task, metric):
    """A dashed grey line at the majority-class value of `metric` (if known); returns it or None."""
    value = (majority or {}).get(get_task(task).name, {}).get(metric)
    if value is None:
        return None
    return ax.axhline(value, color="#444444", linestyle=(0, (6, 3)), lw=1.0, label="majority class")


@plt.rc_context(STYLE)
def plot_histories(df: pd.DataFrame, task, *, model=None, rank=None, lr=None, variant=None, fig=None,
                   majority=None):
    """Train loss, dev loss and the task's dev metric(s) against optimizer step, for one setting.

    `df` is `load_runs` output; `model`/`rank`/`lr`/`variant` (see `add_variant`) pick the setting
    (needed only when `df` holds several). Baselines (head/full) at the same lr are drawn too.
    `lr="each"`: every series of `df` at its own lr (e.g. `experiments.round2.protocol.at_selected` rows), named in
    its legend entry. One colour per series; lines are means over seeds with a shaded 95%
    t-interval; the train loss of an evaluation a step or two after another is pooled with it
    (`pooled_train_loss`). `majority` ({task: {metric: value}}, see `utils.stats.majority_metrics`) adds
    the majority-class level to the metric panels. Returns the figure (drawn into `fig` if given).
    """
    task = get_task(task)
    each = isinstance(lr, str) and lr == "each"
    runs = select_series(with_variant(df), task, model=model, rank=rank, lr=None if each else lr, variant=variant)
    runs = pooled_train_loss(runs)
    adapters = runs[runs["method"].isin(ADAPTER_METHODS)]
    keys = ["model", "variant"] + ([] if each else ["lr"])
    settings = adapters[["rank", *keys]].drop_duplicates() if len(adapters) else runs[keys].drop_duplicates()
    if len(settings) != 1:
        raise ValueError(f"{task.name}: {len(settings)} settings match (model/rank/{'' if each else 'lr/'}variant); pick one of\n"
                         f"{settings.to_string(index=False)}")
    metrics = task_metrics(task, runs.columns)
    panels = [("train_loss", "train loss"), ("dev_loss", "dev loss")] + \
        [(m, f"dev {metric_label(m)}") for m in metrics]
    ncols = 2 if len(panels) == 4 else len(panels)  # MRPC: 2 x 2
    nrows = math.ceil(len(panels) / ncols)
    fig = fig or plt.figure(figsize=(4.2 * ncols, 3.4 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    loss = "MSE loss" if task.is_regression else "cross-entropy loss"
    ns, means = [], [[] for _ in panels]
    for (method, init), g in sorted(runs.groupby(["method", "init"]), key=lambda kv: series_order(kv[0])):
        style = series_style(method, init)
        ns.append(g["seed"].nunique())
        at = f" lr {', '.join(fmt_lr(v) for v in sorted(g['lr'].unique()))}" if each else ""
        for ax, (col, _), seen in zip(axes, panels, means):
            c = seed_curve(g, col)
            seen += list(c["mean"])
            ax.plot(c["step"], c["mean"], color=style["color"], linestyle=style["linestyle"], lw=1.8,
                    marker=style["marker"] if len(c) <= 30 else None, markersize=4,  # eval points
                    label=f"{style['label']}{at} (n={ns[-1]})")
            ax.fill_between(c["step"], c["lo"], c["hi"], color=style["color"], alpha=0.18, lw=0)
    ref = [majority_line(ax, majority, task, col) for ax, (col, _) in zip(axes, panels)]
    for ax, (col, title), seen, r in zip(axes, panels, means, ref):
        focus_ylim(ax, seen + ([] if r is None else list(r.get_ydata())))
        ax.set(title=title, xlabel="optimizer step",
               ylabel=loss if col.endswith("loss") else f"dev {metric_label(col)}")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    s = settings.iloc[0]
    where = model_short_name(s["model"]) + (f" · rank {s['rank']} · " if "rank" in s else " · ")
    seeds = "single seed (n=1), no band" if max(ns) == 1 else \
        f"mean over {_n_text(ns)} seeds, band = 95% CI (cut at the axes where wider)"
    variant = f" · {s['variant']}" if s["variant"] else ""
    lrs = "each at its own lr" if each else f"lr {fmt_lr(s['lr'])}"
    fig.suptitle(f"{task.title} (GLUE dev split) · {where}{lrs}{variant}\n{seeds}")
    handles, labels = axes[0].get_legend_handles_labels()
    ref = [h for h in ref if h is not None]
    legend_below(fig, handles + ref[:1], labels + [h.get_label() for h in ref[:1]])
    return fig


@plt.rc_context(STYLE)
def summary_figure(summaries: pd.DataFrame, which: str = "final", majority=None):
    """Dev main metric (`which`: "final" or "best") against learning rate, one panel per
    task/model/rank; points are seed means with 95% t-interval error bars, joined by a line; a point
    from a single seed is drawn hollow and left out of the line; `majority` as in `plot_histories`.
    Returns the figure."""
    summaries = with_variant(summaries).copy()
    summaries["_key"] = list(zip(summaries["method"], summaries["init"]))
    adapters = summaries[summaries["method"].isin(ADAPTER_METHODS)]
    panels = sorted(adapters.groupby(["task", "model", "variant", "rank"]).groups)
    panels += sorted((t, m, v, None) for t, m, v in summaries.groupby(["task", "model", "variant"]).groups
                     if (t, m, v) not in {p[:3] for p in panels})  # baselines only
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = plt.figure(figsize=(5.2 * ncols, 4.2 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    legend, ns = {}, []
    for ax, (task, model, variant, rank) in zip(axes, panels):
        metric = get_task(task).main_metric
        sub = select_series(summaries, task, model=model, rank=rank, variant=variant)
        keys = sorted(sub["_key"].unique(), key=series_order)
        for i, key in enumerate(keys):
            style = series_style(*key)
            pts = [(lr, *t_interval(g[f"{which}_{metric}"])) for lr, g in
                   sub[sub["_key"] == key].groupby("lr")]
            lr, mean, _, n, half = map(np.array, zip(*pts))
            ns += list(n)
            dodge = 10 ** (0.04 * (i - (len(keys) - 1) / 2))  # spread markers sideways
            multi = n >= 2
            if multi.any():
                h = ax.errorbar(lr[multi] * dodge, mean[multi], yerr=np.nan_to_num(half[multi]), color=style["color"],
                                linestyle=style["linestyle"], marker=style["marker"], capsize=3, lw=1.5)
                legend.setdefault(style["label"], h)
            if (~multi).any():  # one seed: no interval, and not joined to the seed means
                (h,) = ax.plot(lr[~multi] * dodge, mean[~multi], linestyle="none", marker=style["marker"],
                               markerfacecolor="none", markeredgecolor=style["color"], markersize=8, mew=1.5)
                legend.setdefault(style["label"], h)
        line = majority_line(ax, majority, task, metric)
        if line is not None:
            legend.setdefault(line.get_label(), line)
        ax.set_xscale("log")
        lo, hi = np.log10(sub["lr"].min()), np.log10(sub["lr"].max())
        pad = max(0.25, (1 - (hi - lo)) / 2)  # show at least one decade: a labelled major tick
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate (log scale)", ylabel=f"dev {metric_label(metric)} ({which})",
               title=" · ".join([get_task(task).folder, model_short_name(model)]
                                + ([f"rank {rank}"] if rank is not None else []) + ([variant] if variant else [])))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    single = " (hollow: one seed, not joined)" if min(ns, default=2) < 2 else ""
    fig.suptitle(f"{which.capitalize()} dev metric (GLUE dev split) vs learning rate\n"
                 f"mean over {_n_text(ns)} seeds per point{single}, error bars = 95% CI")
    legend_below(fig, list(legend.values()), list(legend))
    return fig
