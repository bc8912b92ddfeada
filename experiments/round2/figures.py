"""Round 2's figures and tables (`experiments.round2.protocol`): per task, the lr sensitivity of every series,
the histories at the chosen lrs, and on `LIMIT_TASKS` the rank-16 row against rank 4 and the 90 % goal.

    python -m experiments.round2.figures          # logs/round2 (and its checks' folders) -> imgs/round2

writes the general figures and summary of `utils.plots`, results.md (each series at each lr it ran), these
figures and round2.md (`experiments.round2.report`); the task notebooks call `show`. Styles and the shared
drawing helpers are `utils.figures`'.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from experiments.round2.checks import LONG, finished_checks
from experiments.round2.plan import current_plan
from experiments.round2.protocol import (
    CELL_CONTRASTS,
    COMPARED_INITS,
    EPOCHS,
    GOAL,
    LIMIT_RANK,
    LORA_LRS,
    RANK,
    TASKS,
    at_selected,
    selected_lrs,
)
from experiments.round2.report import round2_report
from utils import plots
from utils.config import ADAPTER_METHODS
from utils.figures import STYLE, legend_below, majority_line, metric_label, plot_histories, plt, series_style
from utils.glue import get_task
from utils.report import format_report
from utils.selection import holdout_scores
from utils.stats import series_order, t_interval


def round2_figures(runs: pd.DataFrame, summaries: pd.DataFrame, majority: dict, tasks=None,
                   checks: dict | None = None) -> dict[str, plt.Figure]:
    """Round 2's figures by file name, per task (all, or `tasks`): the lr sensitivity of every series
    (seed 0, rank `RANK`), the histories of every rank-`RANK` series at its chosen lr (once any has
    one), once a rank-`LIMIT_RANK` run has finished, `rank_figure`, and the histories of amendment 4's
    longer runs (`checks`: {check name: (runs, summaries)}, `experiments.round2.checks`)."""
    selected = selected_lrs(runs)
    main = runs[runs["rank"].isin([0, RANK])]
    long = (checks or {}).get(LONG.name)
    figs = {}
    for task in sorted(runs["task"].unique() if tasks is None else [get_task(t).name for t in tasks]):
        if task in TASKS:
            figs[f"{task}_lr_sensitivity.png"] = lr_sensitivity_figure(runs, task, selected, majority)
        chosen = at_selected(main[main["task"] == task], selected)
        if not chosen.empty:
            figs[f"{task}_selected_lr_history.png"] = plot_histories(chosen, task, lr="each", majority=majority)
        if ((summaries["task"] == task) & (summaries["rank"] == LIMIT_RANK)).any():
            figs[f"{task}_rank{LIMIT_RANK}.png"] = rank_figure(summaries, task, selected, majority)
        if long is not None and task == LONG.task:
            figs[f"{task}_{LONG.epochs}_epochs_history.png"] = plot_histories(long[0], task, lr="each", majority=majority)
    return figs


@plt.rc_context(STYLE)
def lr_sensitivity_figure(runs: pd.DataFrame, task, selected: pd.DataFrame, majority=None):
    """Round 2's rank-4 lr grid of one task, seed 0: the holdout score that chooses the lr (left; mean over the
    last epoch's evaluations, `utils.selection.holdout_scores`) and the final dev metric (right) against
    lr, one line per LoRA-FA init with its chosen lr ringed (`selected`: `experiments.round2.protocol.selected_lrs`);
    full fine-tuning and head-only as horizontal lines at their chosen lr. Returns the figure."""
    task = get_task(task)
    metric = task.main_metric
    fig = plt.figure(figsize=(10.4, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    chosen = {(m, i): lr for t, m, i, r, lr in selected[["task", "method", "init", "rank", "lr"]]
              .itertuples(index=False) if t == task.name and r in (0, RANK)}
    mine = runs[(runs["task"] == task.name) & runs["rank"].isin([0, RANK])]
    legend = {}
    for method, init in sorted(set(zip(mine["method"], mine["init"])), key=series_order):
        scores = holdout_scores(mine, task.name, init, method=method, epochs=EPOCHS.get(task.name))
        if scores.empty:
            continue
        style = series_style(method, init)
        pick = scores[np.isclose(scores["lr"], chosen.get((method, init), np.nan))]
        for ax, col in zip(axes, ("score", "final_dev")):
            if method in ADAPTER_METHODS:
                (h,) = ax.plot(scores["lr"], scores[col], color=style["color"], linestyle=style["linestyle"],
                               marker=style["marker"], lw=1.6, markersize=6)
                ax.plot(pick["lr"], pick[col], linestyle="none", marker="o", markersize=14, markerfacecolor="none",
                        markeredgecolor=style["color"], mew=1.8)
            elif len(pick):
                h = ax.axhline(pick[col].iloc[0], color=style["color"], linestyle=style["linestyle"], lw=1.4)
            else:
                continue
            legend.setdefault(style["label"], h)
    for ax, title in zip(axes, (f"holdout {metric_label(metric)}, last-epoch mean (chooses the lr)",
                                f"dev {metric_label(metric)}, final")):
        line = majority_line(ax, majority, task, metric) if title.startswith("dev") else None
        if line is not None:
            legend.setdefault(line.get_label(), line)
        ax.set_xscale("log")
        ax.set_xlim(LORA_LRS[0] / 1.6, LORA_LRS[-1] * 1.6)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate (log scale)", ylabel=title.split(",")[0], title=title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{task.title} · LoRA-FA rank 4, lr grid, seed 0 · ringed: the lr chosen on holdout\n"
                 f"lines without markers: full fine-tuning and head only at their own chosen lr")
    legend_below(fig, list(legend.values()), list(legend))
    return fig


@plt.rc_context(STYLE)
def rank_figure(summaries: pd.DataFrame, task, selected: pd.DataFrame, majority=None):
    """Is rank the limit? Each init's final dev metric at rank `RANK` (filled) and `LIMIT_RANK` (hollow),
    each at the lr chosen for it: mean over seeds (n written beside it) with its 95 % t-interval (none
    for n = 1), against
    full fine-tuning's mean, the goal (`GOAL` of its gain over the majority class) and the majority
    class. Returns the figure."""
    task = get_task(task)
    metric = task.main_metric
    chosen = at_selected(summaries[summaries["task"] == task.name], selected)
    values = chosen[f"final_{metric}"]
    fig, ax = plt.subplots(figsize=(8.4, 4.8), layout="constrained")
    inits = [i for i in COMPARED_INITS if ((chosen["method"] == "lora-fa") & (chosen["init"] == i)).any()]
    for k, init in enumerate(inits):
        style = series_style("lora-fa", init)
        for dx, rank in ((-0.14, RANK), (0.14, LIMIT_RANK)):
            v = values[(chosen["method"] == "lora-fa") & (chosen["init"] == init) & (chosen["rank"] == rank)]
            if v.empty:
                continue
            mean, _, n, half = t_interval(v)
            ax.errorbar(k + dx, mean, yerr=None if math.isnan(half) else half, color=style["color"],
                        marker=style["marker"], markersize=9, capsize=4, lw=1.6,
                        markerfacecolor=style["color"] if rank == RANK else "white", markeredgewidth=1.8)
            ax.annotate(f"n={n}", (k + dx, mean), xytext=(7, -9), textcoords="offset points", fontsize=7,
                        color="#444444")  # seeds behind the point: an interval needs n >= 2
    handles = [Line2D([], [], color="#444444", marker="o", linestyle="none", markersize=8, label=f"rank {RANK}"),
               Line2D([], [], color="#444444", marker="o", markerfacecolor="white", linestyle="none", markersize=8,
                      mew=1.8, label=f"rank {LIMIT_RANK}")]
    full = values[chosen["method"] == "full"]
    m0 = (majority or {}).get(task.name, {}).get(metric)
    if len(full):
        style = series_style("full", None)
        handles.append(ax.axhline(full.mean(), color=style["color"], linestyle=style["linestyle"], lw=1.4,
                                  label=f"full fine-tuning (n={len(full)})"))
        if m0 is not None:
            handles.append(ax.axhline(m0 + GOAL * (full.mean() - m0), color="#D55E00", linestyle="--", lw=1.2,
                                      label=f"goal: {GOAL:.0%} of full fine-tuning's gain"))
    line = majority_line(ax, majority, task, metric)
    handles += [line] if line is not None else []
    ax.set_xticks(range(len(inits)), inits)
    ax.set_xlim(-0.6, len(inits) - 0.4)
    ax.set(xlabel="frozen-A init (LoRA-FA), each rank at its own chosen lr", ylabel=f"dev {metric_label(metric)}, final",
           title=f"{task.folder} · rank {RANK} vs rank {LIMIT_RANK}: mean over seeds, 95 % interval")
    ax.grid(alpha=0.3, axis="y")
    legend_below(fig, handles, [h.get_label() for h in handles], title=None)
    return fig


def main(log_dir="logs/round2", out_dir="imgs/round2") -> list[Path]:
    """Write round 2's figures and tables from `log_dir` (and its checks' folders) into `out_dir`."""
    runs, summaries, majority = data = plots.load(log_dir)
    out = Path(out_dir)
    written = plots.write(data, out)
    (out / "results.md").write_text("# Results (generated by `python -m experiments.round2.figures`)\n\n"
                                    + format_report(runs, summaries, majority, CELL_CONTRASTS))
    written.append(out / "results.md")
    checks = finished_checks(log_dir)
    written += [plots.save_figure(fig, out / name)
                for name, fig in round2_figures(runs, summaries, majority, checks=checks).items()]
    report = round2_report(runs, summaries, majority, checks=checks, hours=current_plan(log_dir).hours)
    (out / "round2.md").write_text("# Round 2 (generated by `python -m experiments.round2.figures`)\n\n" + report)
    return written + [out / "round2.md"]


def show(log_dir, task) -> None:
    """Notebook view of round 2 for one task: the lr sensitivity, the histories at the chosen lrs
    and the task's part of the round-2 report (`experiments.round2.report`)."""
    from IPython.display import Markdown, display
    runs, summaries, majority = plots.load(log_dir)
    if get_task(task).name not in set(runs["task"]):
        raise plots.NoRunsError(f"no finished {get_task(task).name} runs in {log_dir}")
    checks = finished_checks(log_dir)
    for fig in round2_figures(runs, summaries, majority, tasks=[task], checks=checks).values():
        plots.show_figure(fig)
    display(Markdown(round2_report(runs, summaries, majority, tasks=[task], checks=checks)))


if __name__ == "__main__":
    sys.exit(plots.cli(prog="python -m experiments.round2.figures", write=main, log_dir="logs/round2",
                       out_dir="imgs/round2", description="round 2's figures, results.md and round2.md"))
