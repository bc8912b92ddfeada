"""Round 2's follow-up checks (README amendments 3 and 4): which runs each adds, when, and what they cost.

Each check logs to a folder of its own next to round 2's (`check_dir`: logs/round2 -> logs/round2_long,
logs/round2_mpnet), so that step 2's lr selection and step 3's tables never see its runs.

* `LONG` (amendment 4): CoLA at 8 epochs instead of 4, for `LONG_INITS`, each at the lr chosen for it at
  4 epochs, seeds 0-2 (`long_runs`): does the comparison survive training twice as long?
* `CONFIRM` (amendment 3): `random` against MRPC's best other rank-4 init on all-mpnet-base-v2, each at the
  lr chosen for it on MiniLM, seed pair by seed pair while the budget allows (`confirm_runs`).

`experiments.round2.plan.current_plan` puts the long runs after every run registered before them, and the mpnet
runs after those, once all have finished; `long_markdown` and `confirm_markdown` are their parts of
`experiments.round2.report`.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.round2.protocol import (
    BUDGET,
    COMPARED_INITS,
    EPOCHS,
    FINAL_SEEDS,
    RANK,
    at_selected,
    mean_finals,
    run_config,
)
from experiments.round2.tables import family, series_markdown, within
from utils.config import RunConfig
from utils.glue import get_task
from utils.logs import load_runs, load_summaries, read_logs
from utils.report import format_table, paired_markdown, to_markdown
from utils.stats import PAIRED_BY_SERIES, paired_comparison, summary_table


class Check(NamedTuple):
    name: str  # its folder: <log_dir>_<name>
    model: str
    task: str
    epochs: int
    seeds: tuple


LONG = Check("long", "minilm", "cola", 8, (0, 1, 2))
LONG_INITS = ("random", "svd", "eva", "grad")  # the baseline, the original claim's init, the data-aware pair
CONFIRM = Check("mpnet", "mpnet", "mrpc", EPOCHS["mrpc"], (0, 1))
CONFIRM_HOURS = 1.6  # one mpnet MRPC run until one has finished: 7.4 s per step x 624 steps, 12 evaluations
# x 83 s and 2 min of set-up, measured 2026-12-03 as a one-thread worker next to one other


def check_dir(log_dir, check: Check) -> Path:
    """The log folder of `check`, next to round 2's `log_dir` (logs/round2 -> logs/round2_long)."""
    return Path(log_dir).with_name(f"{Path(log_dir).name}_{check.name}")


def check_logs(log_dir, check: Check) -> dict:
    """{file: log} of every log of `check` (any status; {} before its folder exists)."""
    folder = check_dir(log_dir, check)
    return read_logs(folder, status=None) if folder.is_dir() else {}


def finished_checks(log_dir) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{check name: (runs, summaries)} of the checks (`LONG`, `CONFIRM`) with a finished run in their
    folder next to `log_dir`."""
    out = {}
    for check in (LONG, CONFIRM):
        logs = check_logs(log_dir, check)
        if any(log["status"] == "finished" for log in logs.values()):
            out[check.name] = (load_runs(logs), load_summaries(logs))
    return out


def finished_hours(logs: dict) -> list[float]:
    """The logged wall time, in hours, of each finished run of `logs` ({file: log})."""
    return [log["summary"]["wall_time_s"] / 3600 for log in logs.values() if log["status"] == "finished"]


def hours_per_run(logs: dict, fallback: float) -> float:
    """What one more run of a check costs: the median logged hours of its finished runs (`logs`), `fallback`
    before one has finished."""
    times = finished_hours(logs)
    return float(np.median(times)) if times else float(fallback)


def long_fallback_hours(summaries: pd.DataFrame) -> float:
    """A long run's price before one has finished: the median finished rank-4 LoRA-FA run of `LONG.task`,
    scaled by the epochs (NaN without one)."""
    done = summaries[(summaries["task"] == LONG.task) & (summaries["method"] == "lora-fa")
                     & (summaries["rank"] == RANK)] if len(summaries) else summaries
    return float(done["wall_time_s"].median()) / 3600 * LONG.epochs / EPOCHS[LONG.task] if len(done) else np.nan


def _chosen(selected: pd.DataFrame | None, task: str) -> dict[str, float]:
    """{init: lr chosen for it at rank `RANK` on `task`} of the inits whose grid has finished."""
    if selected is None:
        return {}
    rows = selected[(selected["task"] == task) & (selected["method"] == "lora-fa") & (selected["rank"] == RANK)]
    return {init: float(lr) for init, lr in zip(rows["init"], rows["lr"]) if not np.isnan(lr)}


def _config(check: Check, init: str, lr: float, seed: int, log_dir, data_dir) -> RunConfig:
    """One LoRA-FA run of `check`: step 3's settings (`run_config`, rank `RANK`) on the check's model, task
    and epochs, logged in `check_dir(log_dir, check)`."""
    return run_config(check.task, "lora-fa", init, lr, seed, RANK, model=check.model, epochs=check.epochs,
                      log_dir=str(check_dir(log_dir, check)), data_dir=data_dir)


def long_runs(selected: pd.DataFrame | None, *, log_dir, data_dir=None) -> list[RunConfig]:
    """Amendment 4's runs, seed by seed: each of `LONG_INITS` at `LONG.epochs` on `LONG.task`, at the lr
    chosen for it at the task's registered epochs, every other setting as step 3's, in
    `check_dir(log_dir, LONG)`. Empty until every one of those lrs is chosen."""
    lr = _chosen(selected, LONG.task)
    if not set(LONG_INITS) <= set(lr):
        return []
    return [_config(LONG, init, lr[init], seed, log_dir, data_dir) for seed in LONG.seeds for init in LONG_INITS]


def confirm_inits(summaries: pd.DataFrame, selected: pd.DataFrame) -> tuple[str, str] | None:
    """("random", the best other rank-4 init on `CONFIRM.task` by mean final dev metric at its chosen lr over
    all of step 3's `FINAL_SEEDS`); None until every init has them all."""
    means = mean_finals(summaries, selected, CONFIRM.task, FINAL_SEEDS)
    if not set(COMPARED_INITS) <= set(means):
        return None
    return "random", max((i for i in COMPARED_INITS if i != "random"), key=lambda init: means[init])


def confirm_runs(summaries: pd.DataFrame, selected: pd.DataFrame, confirm_logs: dict, spent: float, *,
                 log_dir, data_dir=None) -> list[RunConfig]:
    """The mpnet runs of amendment 3, seed by seed (`CONFIRM.seeds`), `random` then the best other init
    (`confirm_inits`), each at its MiniLM lr, in `check_dir(log_dir, CONFIRM)`. A seed's pair joins only if

        spent + (its unfinished runs + those of the pairs before it) x hours per mpnet run <= BUDGET

    (`spent`: worker-hours logged so far, every folder; hours per run: `hours_per_run` of `confirm_logs`,
    `CONFIRM_HOURS` before one has finished), or once one of its runs has a log. Empty until
    `confirm_inits` has decided; call it only once every MiniLM run has finished."""
    pair = confirm_inits(summaries, selected)
    if pair is None:
        return []
    lr = _chosen(selected, CONFIRM.task)
    status = {Path(p).name: log["status"] for p, log in confirm_logs.items()}
    hours = hours_per_run(confirm_logs, CONFIRM_HOURS)
    out, left = [], 0
    for seed in CONFIRM.seeds:
        cfgs = [_config(CONFIRM, init, lr[init], seed, log_dir, data_dir) for init in pair]
        todo = sum(status.get(c.log_path.name) != "finished" for c in cfgs)
        started = any(c.log_path.name in status for c in cfgs)
        if not started and spent + (left + todo) * hours > BUDGET:
            break
        out, left = out + cfgs, left + todo
    return out


def confirm_markdown(confirm: pd.DataFrame) -> str:
    """Amendment 3: `random` and the best other init on mpnet, each at its MiniLM lr (dev), and their
    paired difference, final and best (a Holm family of its own)."""
    t = get_task(CONFIRM.task)
    table = format_table(summary_table(confirm)).drop(columns=["task", "metric"])
    out = [f"\n### {t.title} on {CONFIRM.model} (amendment 3: `random` against the best other init, "
           f"each at its MiniLM lr; dev)\n", to_markdown(table)]
    other = [i for i in COMPARED_INITS if i != "random" and i in set(confirm["init"])]
    pairs = family([paired_comparison(confirm, other[0], "random", w, keys=PAIRED_BY_SERIES)
                    for w in ("final", "best")] if other else [])
    if not pairs.empty:
        out += ["\nPaired by seed (Holm over these tests only):\n", paired_markdown(pairs)]
    return "\n".join(out + [_check_compute(confirm, CONFIRM.model)])


def _check_compute(summaries: pd.DataFrame, what: str) -> str:
    hours = summaries["wall_time_s"].astype(float).sum() / 3600
    return f"\nCompute: {len(summaries)} finished {what} runs, {hours:.1f} worker-hours as logged."


def long_markdown(long: tuple[pd.DataFrame, pd.DataFrame], runs: pd.DataFrame, summaries: pd.DataFrame,
                  selected: pd.DataFrame, m0: float) -> str:
    """Amendment 4: `LONG_INITS` on `LONG.task` at `LONG.epochs`, each at the lr chosen for it at the
    registered epochs, next to full fine-tuning at those (dev; `series_markdown`), and one Holm family
    of its own: `LONG.epochs` − registered epochs of each init, paired by seed, and each other init −
    `random` at `LONG.epochs`, final and best. `long`: (runs, summaries) of its folder."""
    long_runs, long_summaries = (df.drop(columns="variant", errors="ignore") for df in long)
    task, registered = LONG.task, EPOCHS[LONG.task]
    mine = summaries[summaries["task"] == task].drop(columns="variant", errors="ignore")
    full = mine[mine["method"] == "full"]
    table = series_markdown(pd.concat([long_summaries, full], ignore_index=True),
                            pd.concat([long_runs, runs[(runs["task"] == task) & (runs["method"] == "full")]]),
                            selected, m0)
    short = at_selected(mine[(mine["method"] == "lora-fa") & (mine["rank"] == RANK) & mine["init"].isin(LONG_INITS)
                             & mine["seed"].isin(LONG.seeds)], selected)
    pool = pd.concat([long_summaries, short], ignore_index=True)
    by_epochs = [paired_comparison(pool, LONG.epochs, registered, w, keys=("task", "model", "method", "init", "rank"),
                                   by="epochs") for w in ("final", "best")]
    by_init = [paired_comparison(long_summaries, i, "random", w, keys=PAIRED_BY_SERIES)
               for i in LONG_INITS if i != "random" for w in ("final", "best")]
    pairs = family([*within(by_epochs, "({} epochs)"), *by_init])
    out = [f"\n### {get_task(task).title} trained for {LONG.epochs} epochs instead of {registered} (amendment 4: "
           f"{', '.join(f'`{i}`' for i in LONG_INITS)}, each at its chosen lr; full fine-tuning at {registered}; "
           "dev)\n", table]
    if not pairs.empty:
        out += [f"\nPaired by seed (Holm over the {int(pairs['p'].notna().sum())} tests of this family only):\n",
                paired_markdown(pairs)]
    return "\n".join(out + [_check_compute(long_summaries, f"{LONG.epochs}-epoch")])
