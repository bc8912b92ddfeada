"""What round 2 runs next, decided from its logs (README "Round 2 protocol" and its amendments).

* `ceiling_ratio`: the best rank-4 init and its share of full fine-tuning's gain: the goal's measure.
* `limit_row`: MRPC's rank-16 runs (amendment 2), once step 3's seeds 0-2 say the goal is not met.
* `current_plan`: the registered runs in their order, then the follow-up checks (`experiments.round2.checks`):
  CoLA at 8 epochs (amendment 4), then, once every MiniLM run has finished, the mpnet confirmation
  (amendment 3) as far as the budget allows.
* `run_states`, `train_ready`, `progress`: the plan against the logs, for `experiments.round2.sweep` and the notebooks.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.round2.checks import (
    CONFIRM,
    CONFIRM_HOURS,
    LONG,
    check_logs,
    confirm_runs,
    finished_hours,
    hours_per_run,
    long_fallback_hours,
    long_runs,
)
from experiments.round2.protocol import (
    COMPARED_INITS,
    FINAL_SEEDS,
    GOAL,
    LIMIT_ROW,
    SELECT,
    mean_finals,
    planned_runs,
    projected_hours,
    run_config,
    selected_lrs,
)
from utils.config import RunConfig
from utils.locks import lock_held
from utils.logs import load_runs, load_summaries, read_logs
from utils.stats import majority_metrics
from utils.sweep import work


def ceiling_ratio(summaries: pd.DataFrame, selected: pd.DataFrame, task: str, m0: float,
                  seeds=None) -> tuple[str | None, float]:
    """(the best rank-4 init, its share of full fine-tuning's gain over the majority class `m0`):

        best  = argmax over `COMPARED_INITS` of the mean final dev main metric at the chosen lr (ties: COMPARED_INITS order)
        share = (best's mean − m0) / (full fine-tuning's mean at its chosen lr − m0)

    over `seeds` as in `mean_finals`; (None, nan) until every init and full fine-tuning have them."""
    means = mean_finals(summaries, selected, task, seeds)
    if "none" not in means or not set(COMPARED_INITS) <= set(means):
        return None, np.nan
    best = max(COMPARED_INITS, key=lambda init: means[init])
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


class Plan(NamedTuple):
    runs: list[tuple]  # (task, method, init, lr, seed, rank) in priority order, the follow-up checks last
    configs: list[RunConfig | None]  # each run's config; None while its lr cannot be chosen yet
    status: dict[str, str]  # {log file name: status} of every log read (every folder)
    hours: tuple[float, float]  # worker-hours logged so far, the projected total (every folder)


def current_plan(log_dir, *, model="minilm", data_dir=None) -> Plan:
    """Round 2's plan against the logs in `log_dir` (and its checks' folders), each read once: the rank-16
    row as `limit_row` decides it, each run's config at its chosen lr, then amendment 4's long runs, then
    the mpnet runs. Projected hours: the registered runs by `projected_hours`, each check's unfinished
    runs at `hours_per_run` (a long run before one has finished: `long_fallback_hours`)."""
    logs = read_logs(log_dir, status=None) if Path(log_dir).is_dir() else {}
    long_logs, confirm_logs = check_logs(log_dir, LONG), check_logs(log_dir, CONFIRM)
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
    status = {p.name: log["status"] for p, log in {**logs, **long_logs, **confirm_logs}.items()}
    spent, total = projected_hours(summaries, runs)

    def left_hours(cfgs, logs, fallback):  # what the unfinished runs of one check will take
        left = sum(status.get(c.log_path.name) != "finished" for c in cfgs)
        return left * hours_per_run(logs, fallback) if left else 0.0

    long = long_runs(selected, log_dir=log_dir, data_dir=data_dir)
    spent_long = sum(finished_hours(long_logs))
    total += spent_long + left_hours(long, long_logs, long_fallback_hours(summaries))
    configs += long
    spent_confirm = sum(finished_hours(confirm_logs))
    confirm = confirm_runs(summaries, selected, confirm_logs, spent + spent_long + spent_confirm,
                           log_dir=log_dir, data_dir=data_dir) \
        if all(c is not None and status.get(c.log_path.name) == "finished" for c in configs) else []
    total += spent_confirm + left_hours(confirm, confirm_logs, CONFIRM_HOURS)
    configs += confirm
    runs = runs + [(c.task, c.method, c.init, c.lr, c.seed, c.rank) for c in long + confirm]
    return Plan(runs, configs, status, (spent + spent_long + spent_confirm, total))


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
    none is ready (`utils.sweep.work`); a run whose lr is chosen from others becomes ready once they
    have finished. Returns how many runs it trained (0 when everything has finished: then it only reads logs)."""
    from utils.train import run_experiment  # lazy: the training stack
    return work(lambda: run_states(log_dir, model=model, data_dir=data_dir, tasks=tasks), run_experiment, poll_s=None)


def progress(states) -> str:
    """One line on `run_states`: how many planned runs have finished, can start (ready, or running:
    lock files are not part of the record) and wait for a chosen lr."""
    kinds = [s if s == "finished" else "waiting" if s.startswith("waiting") else "startable" for s, _ in states]
    return (f"{kinds.count('finished')} of {len(kinds)} planned runs finished, {kinds.count('startable')} "
            f"can start, {kinds.count('waiting')} wait for their chosen lr (`python -m experiments.round2.sweep --list`)")
