"""Round 3's figures and results page from its logs (experiments/round3/PROTOCOL.md):

    python -m experiments.round3.figures          # logs/round3 -> imgs/round3 (figures, round3.md)

Per task, `<task>_comparison.png`: every series' final dev main metric at its chosen lr (each seed a dot,
the mean with its 95 % t-interval), `random` and `svd` first; `<task>_chosen_lr_history.png`: their curves.
Across tasks, `summary.png`: each init's share of full fine-tuning's gain, and the registered paired
differences from `random` with their CIs and Holm p. The task notebooks call `show`, the presentation
notebook `show_summary`.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.round3.plan import INITS, MODEL, RANK, TASKS, chosen_lrs
from experiments.round3.report import SERIES, at_chosen, family_tests, label, round3_report
from utils import plots
from utils.figures import STYLE, legend_below, majority_line, metric_label, plot_histories, plt, series_style
from utils.glue import get_task
from utils.report import fmt_p
from utils.stats import t_interval

TITLE = f"{MODEL} (stand-in for RoBERTa-base) · LoRA-FA rank {RANK} · each series at its holdout-chosen lr"


@plt.rc_context(STYLE)
def comparison_figure(summaries: pd.DataFrame, chosen: dict, task, majority=None):
    """One task's final dev main metric per series at its chosen lr: seeds as dots, the mean as a bar
    tick with its 95 % t-interval (none for one seed), the majority class dashed. Returns the figure."""
    task = get_task(task)
    metric = task.main_metric
    mine = at_chosen(summaries[summaries["task"] == task.name], chosen)
    series = [s for s in SERIES if ((mine["method"] == s[0]) & (mine["init"] == s[1])).any()]
    fig, ax = plt.subplots(figsize=(7.6, 4.6), layout="constrained")
    rng = np.random.default_rng(0)  # the dots' horizontal jitter only
    for k, (method, init) in enumerate(series):
        style = series_style(method, init)
        values = mine.loc[(mine["method"] == method) & (mine["init"] == init), f"final_{metric}"].to_numpy()
        mean, _, n, half = t_interval(values)
        ax.scatter(k + rng.uniform(-0.12, 0.12, len(values)), values, color=style["color"], marker=style["marker"],
                   s=28, alpha=0.7, zorder=3)
        ax.errorbar(k + 0.28, mean, yerr=None if math.isnan(half) else half, color=style["color"], marker="_",
                    markersize=18, capsize=5, lw=1.8, zorder=4)
        ax.annotate(f"n={n}", (k + 0.28, mean), xytext=(8, -3), textcoords="offset points", fontsize=8, color="#444444")
    line = majority_line(ax, majority, task, metric)
    ax.set_xticks(range(len(series)), [label(*s) for s in series])
    ax.set_xlim(-0.6, len(series) - 0.2)
    ax.set(ylabel=f"dev {metric_label(metric)}, final epoch", title=f"{task.folder} · {TITLE}")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    if line is not None:
        legend_below(fig, [line], [line.get_label()], title=None)
    return fig


@plt.rc_context(STYLE)
def summary_figure(summaries: pd.DataFrame, chosen: dict, majority: dict):
    """Across tasks: each LoRA-FA init's share of full fine-tuning's gain over the majority class (left;
    mean final dev), and the registered differences init − random with their 95 % CI and Holm p (right)."""
    tests = family_tests(summaries, chosen)
    mine = at_chosen(summaries, chosen)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.6, 4.8), layout="constrained")
    width = 0.8 / len(INITS)
    handles = {}
    for j, task in enumerate(TASKS):
        metric, m0 = get_task(task).main_metric, majority.get(task, {}).get(get_task(task).main_metric)
        t = mine[mine["task"] == task]
        if t.empty:
            continue
        full = t.loc[t["method"] == "full", f"final_{metric}"]
        for k, init in enumerate(INITS):
            style = series_style("lora-fa", init)
            values = t.loc[(t["method"] == "lora-fa") & (t["init"] == init), f"final_{metric}"]
            if len(values) and len(full) and m0 is not None and full.mean() > m0:
                handles[init] = left.bar(j + (k - 1.5) * width, (values.mean() - m0) / (full.mean() - m0), width,
                                         color=style["color"], label=init)
            row = tests[(tests["task"] == task) & (tests["a"] == init)]
            if len(row) and row["n"].iloc[0] > 0:
                r = row.iloc[0]
                err = None if math.isnan(r["diff_lo"]) else [[r["diff"] - r["diff_lo"]], [r["diff_hi"] - r["diff"]]]
                right.errorbar(j + (k - 2) * width, r["diff"], yerr=err, color=style["color"], marker=style["marker"],
                               capsize=4, lw=1.6, linestyle="none")
                right.annotate(f"p={fmt_p(r['p_holm'])}" if not math.isnan(r["p_holm"]) else f"n={r['n']}",
                               (j + (k - 2) * width, r["diff"]), xytext=(4, 6), textcoords="offset points", fontsize=7)
    left.axhline(1.0, color=series_style("full", None)["color"], lw=1.0, linestyle="-.")
    right.axhline(0.0, color="#444444", lw=1.0)
    for ax in (left, right):
        ax.set_xticks(range(len(TASKS)), [get_task(t).folder for t in TASKS])
        ax.set_xlim(-0.5, len(TASKS) - 0.5)
        ax.grid(alpha=0.3, axis="y")
    left.set(ylabel="share of full FT's gain over the majority", title="each init, mean final dev (full FT = 1)")
    right.set(ylabel="paired difference, final dev main metric",
              title=f"init − random, 95 % CI, p Holm-adjusted over m = {len(tests)}")
    fig.suptitle(TITLE, fontsize=10)
    if handles:
        legend_below(fig, list(handles.values()), list(handles), title="LoRA-FA init")
    return fig


def round3_figures(runs: pd.DataFrame, summaries: pd.DataFrame, majority: dict) -> dict[str, plt.Figure]:
    """Every round-3 figure by file name (a task's once any of its series has a run at its chosen lr)."""
    chosen = chosen_lrs(runs)
    figs = {}
    for task in TASKS:
        if at_chosen(summaries[summaries["task"] == task], chosen).empty:
            continue
        figs[f"{task}_comparison.png"] = comparison_figure(summaries, chosen, task, majority)
        figs[f"{task}_chosen_lr_history.png"] = plot_histories(at_chosen(runs[runs["task"] == task], chosen), task,
                                                               lr="each", majority=majority)
    if figs:
        figs["summary.png"] = summary_figure(summaries, chosen, majority)
    return figs


def _load(log_dir):
    """`plots.load`, or empty frames while no run has finished."""
    try:
        return plots.load(log_dir)
    except plots.NoRunsError:
        return pd.DataFrame(), pd.DataFrame(), {}


def main(log_dir="logs/round3", out_dir="imgs/round3", data_dir=None) -> list[Path]:
    """Write round 3's figures and round3.md (`experiments.round3.report`) into `out_dir`."""
    runs, summaries, majority = _load(log_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plots.save_figure(fig, out / name) for name, fig in round3_figures(runs, summaries, majority).items()
               ] if len(runs) else []
    (out / "round3.md").write_text("# Round 3 (generated by `python -m experiments.round3.figures`)\n\n"
                                   + round3_report(log_dir, data_dir))
    return written + [out / "round3.md"]


def show(log_dir, task, data_dir=None) -> None:
    """Notebook view of round 3 for one task: its comparison, its curves and the report's tables."""
    from IPython.display import Markdown, display
    runs, summaries, majority = _load(log_dir)
    task = get_task(task).name
    if len(runs):
        figs = round3_figures(runs[runs["task"] == task], summaries[summaries["task"] == task], majority)
        for name, fig in figs.items():
            if name != "summary.png":
                plots.show_figure(fig)
            else:
                plt.close(fig)
    display(Markdown(round3_report(log_dir, data_dir, tasks=[task])))


def show_summary(log_dir, data_dir=None) -> None:
    """Notebook view of round 3 across tasks: the summary figure (once any run has finished), the whole
    family's table and the compute."""
    from IPython.display import Markdown, display
    runs, summaries, majority = _load(log_dir)
    if len(runs):
        plots.show_figure(summary_figure(summaries, chosen_lrs(runs), majority))
    display(Markdown(round3_report(log_dir, data_dir, tasks=[])))

if __name__ == "__main__":
    sys.exit(plots.cli(prog="python -m experiments.round3.figures", write=main, log_dir="logs/round3",
                       out_dir="imgs/round3", description="round 3's figures and round3.md"))
