"""The `plot` command and the notebooks' views: a log folder's figures and tables, written to imgs/ or
shown inline.

`main` (``python run_glue.py plot --log-dir logs/round1 --out imgs``) writes a history figure per
setting, the dev metric against lr and summary.md/.csv; a round's own figures and report are
``python -m experiments.roundN.figures``, which call `cli` with their own writer. The task notebooks
call `show_task`, plots_for_preso.ipynb a round's `main` and `show_files`. The figures themselves are
`utils.figures`.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from utils.config import ADAPTER_METHODS, model_short_name
from utils.figures import plot_histories, select_series, summary_figure
from utils.glue import get_task
from utils.logs import load_runs, load_summaries, read_logs
from utils.report import fmt_lr, format_table, to_markdown
from utils.stats import add_variant, majority_metrics, summary_table

SAVE_DPI = 130  # the PNGs under imgs/
SHOW_DPI = 60  # a figure shown in a notebook: the notebooks are committed executed, so kept small
SHOW_WIDTH = 560  # pixels: a written PNG shown in a notebook is scaled down to this width...
SHOW_COLORS = 128  # ...and to a palette of this many colours (a third of the bytes; the figures are flat colours)


class NoRunsError(ValueError):
    """The log folder holds no finished runs to plot."""


def load(log_dir, run_ids=None):
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
    runs, summaries, majority = load(log_dir, None if config is None else grid_run_ids(config, grid or {}))
    runs, summaries = select_series(runs, task, **filters), select_series(summaries, task, **filters)
    if runs.empty:
        raise NoRunsError(f"no finished {get_task(task).name} runs in {log_dir} match the selection")
    for setting in _settings(runs):
        show_figure(plot_histories(runs, **setting, majority=majority))
    show_figure(summary_figure(summaries, majority=majority))
    table = format_table(summary_table(summaries, metrics="all"))
    display(Markdown(to_markdown(table)))
    return table


def show_figure(fig) -> None:
    """Display `fig` inline at `SHOW_DPI` (one small PNG in the notebook) and close it."""
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=SHOW_DPI, metadata={"Software": None})
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def thumbnail(path) -> bytes:
    """A written PNG scaled down to at most `SHOW_WIDTH` pixels wide with `SHOW_COLORS` colours, as PNG
    bytes (deterministic)."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > SHOW_WIDTH:
            im = im.resize((SHOW_WIDTH, round(im.height * SHOW_WIDTH / im.width)), Image.LANCZOS)
        buf = io.BytesIO()
        im.quantize(colors=SHOW_COLORS, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def show_files(paths) -> None:
    """Display written PNGs (scaled down: `thumbnail`; the file is the full-size figure) and markdown
    files inline (notebooks)."""
    from IPython.display import Image, Markdown, display
    for p in map(Path, paths):
        if p.suffix == ".png":
            display(Markdown(f"`{p}`"), Image(data=thumbnail(p), format="png"))
        elif p.suffix == ".md":
            display(Markdown(p.read_text()))


def save_figure(fig, path) -> Path:
    """Write `fig` to `path` at `SAVE_DPI` and close it."""
    fig.savefig(path, dpi=SAVE_DPI)
    plt.close(fig)
    return Path(path)


def write(data, out_dir) -> list[Path]:
    """Every history figure, the summary figures and summary.md (+ .csv) of `data` ((runs, summaries,
    majority) as from `load`) written into `out_dir`; returns the paths written."""
    runs, summaries, majority = data
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [save_figure(plot_histories(runs, **setting, majority=majority), out / _file_name(**setting))
               for setting in _settings(runs)]
    written += [save_figure(summary_figure(summaries, which, majority), out / f"summary_{which}_metric.png")
                for which in ("final", "best")]
    table = summary_table(summaries, metrics="all")
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(
        "# Final and best dev metric per setting (mean ± std over seeds; GLUE dev split)\n\n"
        + to_markdown(format_table(table)))
    return written + [out / "summary.csv", out / "summary.md"]


def main(log_dir="logs", out_dir="imgs") -> list[Path]:
    """`write` the finished runs of `log_dir` into `out_dir` (the `plot` command)."""
    return write(load(log_dir), out_dir)


def cli(argv=None, *, prog="run_glue.py plot", write: Callable[..., list[Path]] = main, log_dir="logs",
        out_dir="imgs", description="figures and summary.md from the run logs") -> int:
    """The plot command line: `write(log_dir, out_dir)` (default `main`; a round passes its own and its
    folders), printing the paths written; exit 1 with one line when there is nothing to plot."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-dir", default=log_dir, help=f"folder of JSON run logs (default: {log_dir})")
    parser.add_argument("--out", default=out_dir, help=f"folder for PNGs and tables (default: {out_dir})")
    args = parser.parse_args(argv)
    try:
        paths = write(args.log_dir, args.out)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0
