"""Choosing hyperparameters on the holdout slice of train, never on dev: the score of a run, the lr a
grid chooses, and how much a run still moved over its last epoch (the convergence rules of the rounds).

`runs` everywhere is `utils.logs.load_runs` output: one row per evaluation, with `holdout_<metric>`
columns for runs trained with `--holdout`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from utils.glue import get_task


def holdout_scores(runs: pd.DataFrame, task: str, init: str, *, method: str = "lora-fa", seed: int = 0,
                   epochs: int | None = None, rank: int | None = None) -> pd.DataFrame:
    """Per lr of the finished `seed` runs of one (task, method, init) (and `epochs`, `rank`, if given):

        score = mean of the holdout main metric over the evaluations of the run's last epoch

    (the end of training, averaged over that epoch's evaluations to damp one evaluation's noise),
    with the final holdout metric and the final and best dev metric next to it (for reading only:
    dev never chooses). `runs`: `load_runs` output. Columns lr, score, evaluations, final_holdout,
    final_dev, best_dev; rows sorted by lr; runs without holdout metrics are left out."""
    metric = get_task(task).main_metric
    col = f"holdout_{metric}"
    pick = runs[(runs["task"] == get_task(task).name) & (runs["method"] == method) & (runs["init"] == init)
                & (runs["seed"] == seed)] if len(runs) else runs
    if epochs is not None and len(pick):
        pick = pick[pick["epochs"] == epochs]
    if rank is not None and len(pick):
        pick = pick[pick["rank"] == rank]
    rows = []
    for lr, r in (pick.groupby("lr") if len(pick) and col in pick else []):
        if r[col].isna().all():
            continue
        r = r.sort_values("step")
        last = r[r["epoch"] > r["epoch"].max() - 1]  # the evaluations of the last epoch
        rows.append({"lr": float(lr), "score": float(last[col].mean()), "evaluations": len(last),
                     "final_holdout": float(r[col].iloc[-1]), "final_dev": float(r[metric].iloc[-1]),
                     "best_dev": float(r[metric].max())})
    return pd.DataFrame(rows, columns=["lr", "score", "evaluations", "final_holdout", "final_dev", "best_dev"])


def select_lr(runs: pd.DataFrame, task: str, init: str, lrs, *, method: str = "lora-fa", seed: int = 0,
              epochs: int | None = None, rank: int | None = None) -> tuple[float, pd.DataFrame]:
    """The learning rate chosen on the holdout slice (never dev) for one (task, method, init): the
    highest `holdout_scores` score over `lrs`, ties to the smaller lr. Returns (lr, its rows of
    `holdout_scores`); ValueError naming what is missing if a run of `lrs` has not finished or has no
    holdout metrics."""
    scores = holdout_scores(runs, task, init, method=method, seed=seed, epochs=epochs, rank=rank)
    missing = missing_lrs(scores, lrs)
    if missing:
        raise ValueError(f"select_lr: no finished {task} {method} {init} run at lr {missing[0]:g}, seed {seed}"
                         + (f", rank {rank}" if rank is not None else "")
                         + (f", {epochs} epochs" if epochs else "") + f" with holdout {get_task(task).main_metric}")
    return choose_lr(scores, lrs)


def missing_lrs(scores: pd.DataFrame, lrs) -> list[float]:
    """The lrs of `lrs` that have no row in `scores` (`holdout_scores`): their runs have not finished."""
    return [lr for lr in lrs if not np.isclose(scores["lr"], lr).any()]


def choose_lr(scores: pd.DataFrame, lrs) -> tuple[float, pd.DataFrame]:
    """`select_lr`'s rule on `holdout_scores` rows that cover every lr of `lrs`."""
    table = pd.concat([scores[np.isclose(scores["lr"], lr)] for lr in sorted(float(x) for x in lrs)],
                      ignore_index=True)
    best = table.loc[table["score"].idxmax(), "lr"]  # idxmax: the first (smallest lr) of equal scores
    return float(best), table


def epoch_change(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: the holdout main metric averaged over the last epoch's evaluations ("last")
    and over the previous epoch's ("previous"), each a mean over the seeds' per-epoch means."""
    rows = []
    for key, r in runs.groupby(keys) if len(runs) else []:
        col = f"holdout_{get_task(r['task'].iloc[0]).main_metric}"
        last_epoch = r.groupby("seed")["epoch"].transform("max")
        last = r[r["epoch"] > last_epoch - 1].groupby("seed")[col].mean().mean()
        prev = r[(r["epoch"] > last_epoch - 2) & (r["epoch"] <= last_epoch - 1)].groupby("seed")[col].mean().mean()
        rows.append({**dict(zip(keys, key)), "last": last, "previous": prev})
    return pd.DataFrame(rows, columns=[*keys, "last", "previous"])
