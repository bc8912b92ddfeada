"""The `plot` command and the notebooks' views: every figure and report of a log folder, written to
imgs/ or shown inline.

``python -m utils.plots --log-dir logs/round1 --out imgs`` (also ``python run_glue.py plot``) writes a
history figure per setting, the dev metric against lr, summary.md/.csv and results.md (`utils.report`);
``--round2`` adds round 2's lr-sensitivity and selected-lr figures and round2.md. The task notebooks
call `show_task` (and `show_round2`), plots_for_preso.ipynb `main` and `show_files`. The figures
themselves are `utils.figures`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from utils.config import ADAPTER_METHODS, model_short_name
from utils.figures import plot_histories, select_series, summary_figure
from utils.glue import get_task
from utils.logs import load_runs, load_summaries, read_logs
from utils.report import fmt_lr, format_report, format_table, to_markdown
from utils.round2_checks import CONFIRM, LONG, check_logs
from utils.round2_figures import round2_figures
from utils.round2_plan import current_plan
from utils.round2_report import round2_report
from utils.stats import add_variant, majority_metrics, summary_table


class NoRunsError(ValueError):
    """The log folder holds no finished runs to plot."""


def _checks(log_dir) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{check name: (runs, summaries)} of round 2's follow-up checks with a log folder next to `log_dir`
    (`utils.round2_checks`): their finished runs."""
    out = {}
    for check in (LONG, CONFIRM):
        logs = check_logs(log_dir, check)
        if any(log["status"] == "finished" for log in logs.values()):
            out[check.name] = (load_runs(logs), load_summaries(logs))
    return out


def _load(log_dir, run_ids=None):
    """(runs, summaries, majority-class metrics) of the finished runs in `log_dir` (only `run_ids`
    if given), with variants; every log file is read once (unreadable ones skipped with a warning)."""
    log_dir = Path(log_dir)
    logs = read_logs(log_dir, status=None) if log_dir.exists() else {}
    runs = load_runs(logs)
    if runs.empty:
        raise NoRunsError(f"no finished runs in {log_dir.resolve()} (looked for *.json run logs): "
                          f"run experiments first (the task notebooks or `python run_glue.py`)")
    summaries = load_summaries(logs)
    if run_ids is not None:
        runs, summaries = runs[runs["run_id"].isin(run_ids)], summaries[summaries["run_id"].isin(run_ids)]
    summaries = add_variant(summaries)
    return runs.merge(summaries[["run_id", "variant"]], on="run_id"), summaries, majority_metrics(logs)


def _settings(runs: pd.DataFrame) -> list[dict]:
    """task/model/rank/lr/variant of every history figure; rank None for baseline-only settings."""
    keys = ["task", "model", "rank", "lr", "variant"]
    adapters = runs[runs["method"].isin(ADAPTER_METHODS)]
    found = [dict(zip(keys, k)) for k in adapters.groupby(keys).groups]
    covered = {(s["task"], s["model"], s["lr"], s["variant"]) for s in found}
    for t, m, lr, v in runs.groupby(["task", "model", "lr", "variant"]).groups:
        if (t, m, lr, v) not in covered:
            found.append({"task": t, "model": m, "rank": None, "lr": lr, "variant": v})
    return sorted(found, key=lambda s: (s["task"], str(s["model"]), s["variant"], s["rank"] or 0, s["lr"]))


def _file_name(task, model, rank, lr, variant) -> str:
    """e.g. mrpc_minilm_r4_lr0.0001_history.png (+ _epochs=1 for a non-default variant)."""
    r = "" if rank is None else f"_r{int(rank)}"  # baselines have no rank
    v = "_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", variant) if variant else ""
    return f"{task}_{model_short_name(model)}{r}_lr{fmt_lr(lr)}{v}_history.png"


def grid_run_ids(config, grid: dict) -> set[str]:
    """Run ids of the runs `utils.run_grid(config, grid)` does."""
    from utils.grid import expand_grid  # lazy: pulls in the training stack
    return {c.run_id for c in expand_grid(config, grid)}


def show_task(log_dir, task, *, config=None, grid=None, **filters) -> pd.DataFrame:
    """Notebook view of one task: history figures per setting, the lr summary and the table.

    With `config` and `grid` (as passed to `utils.run_grid`) exactly the runs of that grid are shown;
    otherwise `filters` (model/init/rank/lr: a value or a list) select runs, baselines included.
    Returns the formatted table of final/best dev metric per series.
    """
    from IPython.display import Markdown, display
    runs, summaries, majority = _load(log_dir, None if config is None else grid_run_ids(config, grid or {}))
    runs, summaries = select_series(runs, task, **filters), select_series(summaries, task, **filters)
    if runs.empty:
        raise NoRunsError(f"no finished {get_task(task).name} runs in {log_dir} match the selection")
    for setting in _settings(runs):
        fig = plot_histories(runs, **setting, majority=majority)
        display(fig)
        plt.close(fig)
    fig = summary_figure(summaries, majority=majority)
    display(fig)
    plt.close(fig)
    table = format_table(summary_table(summaries, metrics="all"))
    display(Markdown(to_markdown(table)))
    return table


def show_round2(log_dir, task) -> None:
    """Notebook view of round 2 for one task: the lr sensitivity, the histories at the chosen lrs
    and the task's part of the round-2 report (`utils.round2_report`)."""
    from IPython.display import Markdown, display
    runs, summaries, majority = _load(log_dir)
    if get_task(task).name not in set(runs["task"]):
        raise NoRunsError(f"no finished {get_task(task).name} runs in {log_dir}")
    checks = _checks(log_dir)
    for fig in round2_figures(runs, summaries, majority, tasks=[task], checks=checks).values():
        display(fig)
        plt.close(fig)
    display(Markdown(round2_report(runs, summaries, majority, tasks=[task], checks=checks)))


def show_files(paths) -> None:
    """Display written PNGs and markdown files inline (notebooks)."""
    from IPython.display import Image, Markdown, display
    for p in map(Path, paths):
        if p.suffix == ".png":
            display(Markdown(f"`{p}`"), Image(filename=str(p)))
        elif p.suffix == ".md":
            display(Markdown(p.read_text()))


def main(log_dir="logs", out_dir="imgs", round2: bool = False) -> list[Path]:
    """Write every history figure, the summary figures, summary.md (+ .csv) and results.md (the
    tables of `utils.report.format_report`) from `log_dir` into `out_dir`; with `round2`, also
    `round2_figures` and round2.md (`utils.round2_report`)."""
    runs, summaries, majority = _load(log_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(out / name, dpi=130)
        plt.close(fig)
        written.append(out / name)

    for setting in _settings(runs):
        save(plot_histories(runs, **setting, majority=majority), _file_name(**setting))
    for which in ("final", "best"):
        save(summary_figure(summaries, which, majority), f"summary_{which}_metric.png")
    table = summary_table(summaries, metrics="all")
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(
        "# Final and best dev metric per setting (mean ± std over seeds; GLUE dev split)\n\n"
        + to_markdown(format_table(table)))
    (out / "results.md").write_text("# Results (generated by `python run_glue.py plot`)\n\n" + format_report(runs, summaries, majority))
    written += [out / "summary.csv", out / "summary.md", out / "results.md"]
    if round2:
        checks = _checks(log_dir)
        for name, fig in round2_figures(runs, summaries, majority, checks=checks).items():
            save(fig, name)
        report = round2_report(runs, summaries, majority, checks=checks, hours=current_plan(log_dir).hours)
        (out / "round2.md").write_text("# Round 2 (generated by `python run_glue.py plot --round2`)\n\n" + report)
        written.append(out / "round2.md")
    return written


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log-dir", default="logs", help="folder of JSON run logs (default: logs)")
    parser.add_argument("--out", default="imgs", help="folder for PNGs and summary.md (default: imgs)")
    parser.add_argument("--round2", action="store_true", help="also round 2's figures and round2.md (utils.round2)")
    args = parser.parse_args(argv)
    try:
        paths = main(args.log_dir, args.out, args.round2)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
