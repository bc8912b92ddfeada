"""What round 2 runs next, decided from its logs (README "Round 2 protocol" and its amendments).

* `ceiling_ratio`: the best rank-4 init and its share of full fine-tuning's gain: the goal's measure.
* `limit_row`: MRPC's rank-16 runs (amendment 2), once step 3's seeds 0-2 say the goal is not met.
* `confirm_runs`: the mpnet confirmation (amendment 3): `random` against MRPC's best other rank-4 init on
  all-mpnet-base-v2, each at the lr chosen for it on MiniLM, after every MiniLM run and seed pair by seed
  pair while the budget allows. Its logs go to a folder of their own (`confirm_dir`), so MiniLM's lr
  selection and tables never see them.
* `current_plan`, `run_states`, `train_ready`, `progress`: the plan against the logs, for
  `sweep_round2.py` and the notebooks.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from utils.config import RunConfig
from utils.glue import get_task
from utils.locks import lock_held
from utils.logs import load_runs, load_summaries, read_logs
from utils.round2 import (
    BUDGET,
    CEILING_SEEDS,
    FINAL_SEEDS,
    GOAL,
    INITS,
    LIMIT_ROW,
    RANK,
    SELECT,
    at_selected,
    planned_runs,
    projected_hours,
    run_config,
    selected_lrs,
)
from utils.stats import majority_metrics

CONFIRM_MODEL, CONFIRM_TASK, CONFIRM_SEEDS = "mpnet", "mrpc", (0, 1)
CONFIRM_HOURS = 1.6  # one mpnet MRPC run until one has finished: 7.4 s per step x 624 steps, 12 evaluations
# x 83 s and 2 min of set-up, measured 2026-12-03 as a one-thread worker next to one other


def mean_finals(summaries: pd.DataFrame, selected: pd.DataFrame, task: str, seeds=None) -> dict[str, float]:
    """{init: mean final dev main metric at its chosen lr} of every rank-4 init, and of full fine-tuning
    under "none", over the finished runs of `seeds` (full fine-tuning: `CEILING_SEEDS`); a series appears
    once all of them have finished. `seeds` None: whichever have finished."""
    if summaries.empty or selected is None:
        return {}
    metric = get_task(task).main_metric
    done = summaries[(summaries["task"] == get_task(task).name) & (summaries["status"] == "finished")
                     & summaries["rank"].isin([0, RANK])]
    means = {}
    for (method, init), r in at_selected(done, selected).groupby(["method", "init"]):
        want = CEILING_SEEDS if method == "full" and seeds is not None else seeds
        if method in ("full", "lora-fa") and (want is None or set(want) <= set(r["seed"])):
            means[init] = float(r[r["seed"].isin(r["seed"] if want is None else want)][f"final_{metric}"].mean())
    return means


def ceiling_ratio(summaries: pd.DataFrame, selected: pd.DataFrame, task: str, m0: float,
                  seeds=None) -> tuple[str | None, float]:
    """(the best rank-4 init, its share of full fine-tuning's gain over the majority class `m0`):

        best  = argmax over `INITS` of the mean final dev main metric at the chosen lr (ties: INITS order)
        share = (best's mean − m0) / (full fine-tuning's mean at its chosen lr − m0)

    over `seeds` as in `mean_finals`; (None, nan) until every init and full fine-tuning have them."""
    means = mean_finals(summaries, selected, task, seeds)
    if "none" not in means or not set(INITS) <= set(means):
        return None, np.nan
    best = max(INITS, key=lambda init: means[init])
    return best, float((means[best] - m0) / (means["none"] - m0))


def limit_row(summaries: pd.DataFrame, selected: pd.DataFrame, majority: dict) -> list[tuple[str, str]]:
    """The (task, init) pairs of the rank-16 row: every init on `LIMIT_TASKS`, and on MRPC (amendment 2)
    `random` and the best rank-4 init if its share of full fine-tuning's gain is below `GOAL`
    (`ceiling_ratio` over step 3's seeds 0-2 and the ceiling seeds; nothing until all have finished).
    `summaries`: `load_summaries`; `selected`: `selected_lrs`; `majority`: {task: {metric: value}}
    (`utils.stats.majority_metrics`)."""
    out = list(LIMIT_ROW)
    m0 = majority.get("mrpc", {}).get("f1")
    best, share = (None, np.nan) if m0 is None else ceiling_ratio(summaries, selected, "mrpc", m0, FINAL_SEEDS[:3])
    if best is not None and share < GOAL:
        out += [("mrpc", init) for init in dict.fromkeys(("random", best))]
    return out


def confirm_dir(log_dir) -> Path:
    """The mpnet confirmation's log folder: next to `log_dir` (logs/round2 -> logs/round2_mpnet)."""
    return Path(log_dir).with_name(Path(log_dir).name + f"_{CONFIRM_MODEL}")


def confirm_inits(summaries: pd.DataFrame, selected: pd.DataFrame) -> tuple[str, str] | None:
    """("random", the best other rank-4 init on `CONFIRM_TASK` by mean final dev metric at its chosen lr over
    all of step 3's `FINAL_SEEDS`); None until every init has them all."""
    means = mean_finals(summaries, selected, CONFIRM_TASK, FINAL_SEEDS)
    if not set(INITS) <= set(means):
        return None
    return "random", max((i for i in INITS if i != "random"), key=lambda init: means[init])


def confirm_runs(summaries: pd.DataFrame, selected: pd.DataFrame, confirm_logs: dict, spent: float, *,
                 log_dir, data_dir=None) -> list[RunConfig]:
    """The mpnet runs of amendment 3, seed by seed (`CONFIRM_SEEDS`), `random` then the best other init
    (`confirm_inits`), each at its MiniLM lr, in `confirm_dir(log_dir)`. A seed's pair joins only if

        spent + (its unfinished runs + those of the pairs before it) x hours per mpnet run <= BUDGET

    (`spent`: worker-hours logged so far, both folders; hours per run: the median of the finished mpnet
    runs, `CONFIRM_HOURS` before one has finished), or once one of its runs has a log. Empty until
    `confirm_inits` has decided; call it only once every MiniLM run has finished."""
    pair = confirm_inits(summaries, selected)
    if pair is None:
        return []
    rows = selected[(selected["task"] == CONFIRM_TASK) & (selected["method"] == "lora-fa") & (selected["rank"] == RANK)]
    lr = dict(zip(rows["init"], rows["lr"]))
    status = {Path(p).name: log["status"] for p, log in confirm_logs.items()}
    times = _finished_hours(confirm_logs)
    hours = float(np.median(times)) if times else CONFIRM_HOURS
    out, left = [], 0
    for seed in CONFIRM_SEEDS:
        cfgs = [run_config(CONFIRM_TASK, "lora-fa", init, lr[init], seed, RANK, model=CONFIRM_MODEL,
                           log_dir=str(confirm_dir(log_dir)), data_dir=data_dir) for init in pair]
        todo = sum(status.get(c.log_path.name) != "finished" for c in cfgs)
        started = any(c.log_path.name in status for c in cfgs)
        if not started and spent + (left + todo) * hours > BUDGET:
            break
        out, left = out + cfgs, left + todo
    return out


def _finished_hours(logs: dict) -> list[float]:
    """The logged wall time, in hours, of each finished run of `logs` ({file: log})."""
    return [log["summary"]["wall_time_s"] / 3600 for log in logs.values() if log["status"] == "finished"]


class Plan(NamedTuple):
    runs: list[tuple]  # (task, method, init, lr, seed, rank) in priority order, the mpnet runs last
    configs: list[RunConfig | None]  # each run's config; None while its lr cannot be chosen yet
    status: dict[str, str]  # {log file name: status} of every log read (both folders)
    hours: tuple[float, float]  # worker-hours logged so far, the projected total (`projected_hours`)


def current_plan(log_dir, *, model="minilm", data_dir=None) -> Plan:
    """Round 2's plan against the logs in `log_dir` (and `confirm_dir(log_dir)`), each read once: the
    rank-16 row as `limit_row` decides it, each run's config at its chosen lr, then the mpnet runs."""
    logs = read_logs(log_dir, status=None) if Path(log_dir).is_dir() else {}
    extra = read_logs(confirm_dir(log_dir), status=None) if confirm_dir(log_dir).is_dir() else {}
    summaries, selected = load_summaries(logs), selected_lrs(load_runs(logs)) if logs else None
    runs = planned_runs(limit_row(summaries, selected, majority_metrics(logs))) if logs else planned_runs()
    chosen = {} if selected is None else {
        key[:4]: key[4] for key in selected[["task", "method", "init", "rank", "lr"]].itertuples(index=False, name=None)
        if not np.isnan(key[4])}
    configs = []
    for task, method, init, lr, seed, rank in runs:
        if lr == SELECT or isinstance(lr, tuple):  # RTE's (SELECT, "mrpc") rows are in selected_lrs
            lr = chosen.get((task, method, init, rank))
        configs.append(None if lr is None else run_config(task, method, init, lr, seed, rank, model=model,
                                                          log_dir=str(log_dir), data_dir=data_dir))
    status = {p.name: log["status"] for p, log in {**logs, **extra}.items()}
    spent, total = projected_hours(summaries, runs)
    spent_mpnet = sum(_finished_hours(extra))
    confirm = confirm_runs(summaries, selected, extra, spent + spent_mpnet, log_dir=log_dir, data_dir=data_dir) \
        if all(c is not None and status.get(c.log_path.name) == "finished" for c in configs) else []
    runs = runs + [(c.task, c.method, c.init, c.lr, c.seed, c.rank) for c in confirm]
    left = sum(status.get(c.log_path.name) != "finished" for c in confirm)
    return Plan(runs, configs + confirm, status, (spent + spent_mpnet, total + spent_mpnet + left * CONFIRM_HOURS))


def run_states(log_dir, *, model="minilm", data_dir=None, tasks=None, plan=None) -> list[tuple[str, RunConfig | None]]:
    """[(state, config)] for every planned run (of `tasks`, if given) against the logs in `log_dir`:
    "finished", "running" (a live process holds its lock; a killed one's stale lock is taken over),
    "ready", or "waiting: ..." with config None while its lr cannot be chosen yet (its grid has
    unfinished runs). `plan`: `current_plan(log_dir)`, if already read."""
    plan = current_plan(log_dir, model=model, data_dir=data_dir) if plan is None else plan
    out = []
    for (task, method, init, _, seed, rank), cfg in zip(plan.runs, plan.configs):
        if tasks is not None and task not in tasks:
            continue
        if cfg is None:
            out.append((f"waiting: {task} {method} {init} rank {rank} seed {seed} (lr not selected yet)", None))
        elif plan.status.get(cfg.log_path.name) == "finished":
            out.append(("finished", cfg))
        else:
            out.append(("running" if lock_held(cfg.log_path) else "ready", cfg))
    return out


def train_ready(log_dir, *, model="minilm", data_dir=None, tasks=None) -> int:
    """Train every ready run of `tasks` (all, if None) in the planned order, in this process, until
    none is ready; a run whose lr is chosen from others becomes ready once they have finished.
    Returns how many runs it trained (0 when everything has finished: then it only reads logs)."""
    from utils.train import run_experiment  # lazy: the training stack
    tried = set()
    while True:
        ready = [c for state, c in run_states(log_dir, model=model, data_dir=data_dir, tasks=tasks)
                 if state == "ready" and c.run_id not in tried]
        if not ready:
            return len(tried)
        tried.add(ready[0].run_id)
        run_experiment(ready[0])


def progress(states) -> str:
    """One line on `run_states`: how many planned runs have finished, can start (ready, or running:
    lock files are not part of the record) and wait for a chosen lr."""
    kinds = [s if s == "finished" else "waiting" if s.startswith("waiting") else "startable" for s, _ in states]
    return (f"{kinds.count('finished')} of {len(kinds)} planned runs finished, {kinds.count('startable')} "
            f"can start, {kinds.count('waiting')} wait for their chosen lr (`python sweep_round2.py --list`)")
