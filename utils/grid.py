"""Grids of runs (`run_grid`) and their mean ± std over seeds (`summarize`).

    base = RunConfig(task="mrpc", model="minilm", data_dir="../shared/glue")
    logs = run_grid(base, {"init": ["random", "svd"], "lr": [1e-4, 4e-4], "seed": [0, 1, 2]})
    summarize(logs)          # or summarize("logs"): one row per (task, model, method, init, rank, lr)
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pandas as pd

from utils.config import RunConfig
from utils.logs import load_summaries, summary_row
from utils.build import process_state
from utils.train import run_experiment

GROUP = ("task", "model", "method", "init", "rank", "lr")  # runs that differ only in seed


def expand_grid(base: RunConfig, grid: dict | None = None) -> list[RunConfig]:
    """Every combination of the grid's values (fields in RunConfig order), canonical and without
    duplicates (e.g. several inits of a head-only run are one run)."""
    grid = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in (grid or {}).items()}
    names = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(grid) - set(names))
    if unknown:
        raise ValueError(f"grid has unknown field(s) {unknown}; RunConfig fields: {', '.join(names)}")
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"grid field(s) {empty} have no values")
    keys = [n for n in names if n in grid]
    configs, seen = [], set()
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = dataclasses.replace(base, **dict(zip(keys, values))).canonical()
        if cfg.run_id not in seen:
            seen.add(cfg.run_id)
            configs.append(cfg)
    return configs


def parse_shard(shard) -> tuple[int, int]:
    """(i, n) from a tuple or "i/n"; 0 <= i < n (0-based, like process ranks)."""
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like i/n (e.g. 0/8), got {shard!r}") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard i/n needs n >= 1 and 0 <= i < n (0-based), got {i}/{n}")
    return i, n


def select_shard(configs: list, shard=None) -> list:
    """Shard i of n: every n-th run starting at i (the order does not depend on which runs finished)."""
    if shard is None:
        return list(configs)
    i, n = parse_shard(shard)
    return list(configs)[i::n]


def run_grid(base_config: RunConfig, grid: dict | None = None, *, shard=None, progress: bool = True,
             stop_on_error: bool = False) -> list[dict]:
    """Run every combination of `grid` (field -> list of values) on top of `base_config`.

    Finished runs are skipped (their logs returned) unless base_config.overwrite. A failing
    run is logged as failed and the grid goes on (its log is in the result), unless
    `stop_on_error`. `shard=(i, n)` or "i/n" runs only shard i of n (see select_shard).
    """
    configs = select_shard(expand_grid(base_config, grid), shard)
    for cfg in configs:
        cfg.check_files()
    main = process_state().is_main_process
    logs = []
    for k, cfg in enumerate(configs):
        if progress and main:
            print(f"[{k + 1}/{len(configs)}] {cfg.run_id}")
        try:
            logs.append(run_experiment(cfg, progress=progress))
        except Exception as e:
            if stop_on_error:
                raise
            if main:
                print(f"FAILED {cfg.run_id}: {type(e).__name__}: {e}")
            logs.append({"run_id": cfg.run_id, "status": "failed", "error": f"{type(e).__name__}: {e}",
                         "config": dataclasses.asdict(cfg), "summary": {}})
    return logs


def summarize(runs, by=GROUP) -> pd.DataFrame:
    """Mean ± std over seeds of the final and best main metric, one row per `by` group.

    `runs`: a list of logs, a DataFrame from utils.logs.load_summaries, or a log folder.
    Only finished runs count. Columns: the `by` fields, metric (the task's main metric),
    n (runs), seeds, final_mean, final_std, best_mean, best_std (std: sample std, NaN if n = 1).
    """
    if isinstance(runs, (str, Path)):
        runs = load_summaries(runs)
    elif not isinstance(runs, pd.DataFrame):
        runs = pd.DataFrame([summary_row(log) for log in runs if log.get("status") == "finished"])
    cols = list(by) + ["metric", "n", "seeds", "final_mean", "final_std", "best_mean", "best_std"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs[runs["status"] == "finished"] if "status" in runs else runs
    rows = []
    for key, g in runs.groupby(list(by), sort=True, dropna=False):
        metric = g["main_metric"].iloc[0]
        final, best = g[f"final_{metric}"].astype(float), g[f"best_{metric}"].astype(float)
        rows.append({**dict(zip(by, key)), "metric": metric, "n": len(g),
                     "seeds": " ".join(str(s) for s in sorted(g["seed"])),
                     "final_mean": final.mean(), "final_std": final.std(ddof=1),
                     "best_mean": best.mean(), "best_std": best.std(ddof=1)})
    return pd.DataFrame(rows, columns=cols)


def format_summary(df: pd.DataFrame, digits: int = 4) -> str:
    """The summarize() table as text, with `mean ± std` cells."""
    if df.empty:
        return "(no finished runs)"

    def cell(m, s):
        return f"{m:.{digits}f}" if pd.isna(s) else f"{m:.{digits}f} ± {s:.{digits}f}"

    out = df.drop(columns=["final_mean", "final_std", "best_mean", "best_std"]).copy()
    out["final"] = [cell(m, s) for m, s in zip(df["final_mean"], df["final_std"])]
    out["best"] = [cell(m, s) for m, s in zip(df["best_mean"], df["best_std"])]
    out["lr"] = [f"{v:g}" for v in out["lr"]]
    return out.to_string(index=False)
