"""Round 3 of the research as data (experiments/round3/PROTOCOL.md): its runs in priority order, and
which of them can run now, decided from the logs alone.

Phase 1, task by task (CoLA, RTE, MRPC): full fine-tuning over `FULL_LRS` (seed 0); the task's gate;
`random` and `svd` over `LORA_LRS` (seed 0); then seeds 1-2 of random and svd at the lr each chose on
the holdout slice. Phase 2, task by task: the same for `pissa` and `grad`. Phase 3: seeds 1-2 of full
fine-tuning (the ceiling, outside the tested family; moved here by the protocol's Amendment 2). Phase 4:
seeds 3-4 of every series, as far as the budget goes.

Every run trains on train minus the holdout slice (`HOLDOUT`, stratified, seeded by task), evaluates
holdout and dev at every epoch's end, and is reported on dev; only the holdout chooses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import RunConfig
from utils.glue import get_task
from utils.locks import lock_held
from utils.logs import load_runs, load_summaries, read_logs
from utils.selection import choose_lr, holdout_scores, missing_lrs

MODEL = "mpnet"  # all-mpnet-base-v2 (110 M, 12 x 768): the stand-in for RoBERTa-base
TASKS = ("cola", "rte", "mrpc")  # in this order: cheapest first
PRIMARY, SECONDARY = ("random", "svd"), ("pissa", "grad")
INITS = PRIMARY + SECONDARY
LORA_LRS = (4e-4, 1.7e-3, 7e-3)  # each init's lr grid (the middle of round 2's)
FULL_LRS = (2e-5, 5e-5)  # full fine-tuning's
SEEDS, EXTRA_SEEDS = (0, 1, 2), (3, 4)  # seed 0 is the selection run itself
RANK, EPOCHS, HOLDOUT = 4, 6, 0.1
GATE = 0.05  # a task's LoRA-FA runs start only if full FT's final holdout metric beats the majority by this
CONVERGED = {"mrpc": 0.005, "cola": 0.01, "rte": 0.01}  # round 2's rule: holdout, last vs previous epoch
BUDGET = 80.0  # worker-hours, as logged, for the whole round
ESTIMATE_H = {("cola", "lora-fa"): 0.7, ("rte", "lora-fa"): 1.05, ("mrpc", "lora-fa"): 1.35,
              ("cola", "full"): 1.05, ("rte", "full"): 1.6, ("mrpc", "full"): 2.0}  # until one has finished
FAMILY = tuple((task, init, "random") for task in TASKS for init in ("svd", "pissa", "grad"))  # m = 9
SELECT = "select"  # in `planned_runs`: the lr the series chose on the holdout slice


def planned_runs() -> list[tuple]:
    """(task, method, init, lr, seed) in priority order; lr `SELECT`: the series' chosen lr."""
    def seeds(task, series, which):
        return [(task, m, init, SELECT, s) for s in which for m, init in series]

    full = [("full", "none")]
    out = []
    for task in TASKS:  # phase 1
        out += [(task, "full", "none", lr, 0) for lr in FULL_LRS]
        out += [(task, "lora-fa", init, lr, 0) for init in PRIMARY for lr in LORA_LRS]
        out += seeds(task, [("lora-fa", i) for i in PRIMARY], SEEDS[1:])
    for task in TASKS:  # phase 2
        out += [(task, "lora-fa", init, lr, 0) for init in SECONDARY for lr in LORA_LRS]
        out += seeds(task, [("lora-fa", i) for i in SECONDARY], SEEDS[1:])
    for task in TASKS:  # phase 3
        out += seeds(task, full, SEEDS[1:])
    for task in TASKS:  # phase 4
        out += seeds(task, full + [("lora-fa", i) for i in INITS], EXTRA_SEEDS)
    return out


def run_config(task, method, init, lr, seed, *, model=MODEL, log_dir="logs/round3", data_dir=None) -> RunConfig:
    """The RunConfig of one round-3 run: every setting the protocol fixes (fp32, rank 4 on the attention
    projections, 6 epochs, batch 32, evaluation at epoch ends, 10 % holdout, Lanczos SVD)."""
    adapter = method == "lora-fa"
    return RunConfig(task=task, model=model, method=method, init=init if adapter else "none",
                     rank=RANK if adapter else 0, lr=lr, seed=seed, epochs=EPOCHS, eval_every=None,
                     batch_size=32, max_length=128, bf16=False, group_by_length=True, holdout=HOLDOUT,
                     init_batches=8, svd_method="lanczos", log_dir=log_dir, data_dir=data_dir).canonical()


def chosen_lrs(runs: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """{(task, method, init): lr} of every series whose seed-0 grid has finished: the highest holdout
    score (`utils.selection.choose_lr`: the last epoch's holdout main metric, ties to the smaller lr)."""
    out = {}
    for task in TASKS:
        for method, init, grid in [("full", "none", FULL_LRS)] + [("lora-fa", i, LORA_LRS) for i in INITS]:
            scores = holdout_scores(runs, task, init, method=method, epochs=EPOCHS, rank=RANK if init != "none" else 0)
            if not missing_lrs(scores, grid):
                out[(task, method, init)] = choose_lr(scores, grid)[0]
    return out


def gate(runs: pd.DataFrame, chosen: dict, task: str, majority: dict | None) -> bool | None:
    """Whether `task` gets LoRA-FA runs: full fine-tuning's final holdout main metric at its chosen lr
    (seed 0) minus the holdout majority class's (`majority`: `utils.stats.holdout_majority`) is at least
    `GATE`. None while undecided (the full grid unfinished, or no local data to count the majority)."""
    lr = chosen.get((task, "full", "none"))
    if lr is None or majority is None:
        return None
    scores = holdout_scores(runs, task, "none", method="full", epochs=EPOCHS, rank=0)
    final = float(scores.loc[np.isclose(scores["lr"], lr), "final_holdout"].iloc[0])
    return final - majority[get_task(task).main_metric] >= GATE - 1e-12


def hours_per_run(summaries: pd.DataFrame) -> dict[tuple[str, str], float]:
    """{(task, method): hours} of one run: the median logged wall time of the finished round-3 runs
    of that task and method, `ESTIMATE_H` until one has finished."""
    out = dict(ESTIMATE_H)
    if len(summaries):
        for (task, method), r in summaries.groupby(["task", "method"]):
            out[(task, method)] = float(r["wall_time_s"].median()) / 3600
    return out


def budget_states(entries: list[tuple[str, str, str]], hours: dict, spent: float) -> list[str]:
    """For (state, task, method) in priority order: the state, or "over budget" for the first unfinished
    run whose projection (`spent` + the hours of every unfinished run up to and including it) passes
    `BUDGET`, and for every unfinished run after it. Finished and gated runs cost nothing more."""
    out, total, over = [], spent, False
    for state, task, method in entries:
        if state != "finished" and not state.startswith("gated"):
            total += hours[(task, method)]
            over = over or total > BUDGET + 1e-9
        out.append("over budget" if over and state != "finished" and not state.startswith("gated") else state)
    return out


def run_states(log_dir, *, model=MODEL, data_dir=None) -> list[tuple[str, RunConfig | None]]:
    """[(state, config)] of every planned run against the logs in `log_dir`: "finished", "running" (a
    live worker holds its lock), "ready", "waiting: ..." (config None until its lr or its task's gate
    is decided), "gated: ..." (the task failed its gate) or "over budget" (`budget_states`)."""
    from utils.stats import holdout_majority  # noqa: PLC0415 (reads train labels: only when asked)

    logs = read_logs(log_dir, status=None) if Path(log_dir).is_dir() else {}
    finished = {p: log for p, log in logs.items() if log["status"] == "finished"}
    runs, summaries = load_runs(finished), load_summaries(finished)
    chosen = chosen_lrs(runs) if finished else {}
    gates = {t: gate(runs, chosen, t, holdout_majority(t, HOLDOUT, data_dir) if (t, "full", "none") in chosen
                     else None) for t in TASKS}
    status = {p.name: log["status"] for p, log in logs.items()}
    entries, configs = [], []
    for task, method, init, lr, seed in planned_runs():
        cfg, state = None, None
        if method == "lora-fa" and gates[task] is not True:
            state = (f"gated: {task} (full FT within {GATE} of the majority on holdout)" if gates[task] is False
                     else f"waiting: {task}'s gate (full FT's lr grid, then local GLUE data)")
        elif lr == SELECT and (task, method, init) not in chosen:
            state = f"waiting: {task} {method} {init} seed {seed} (lr not chosen yet)"
        else:
            cfg = run_config(task, method, init, chosen.get((task, method, init)) if lr == SELECT else lr, seed,
                             model=model, log_dir=str(log_dir), data_dir=data_dir)
            state = "finished" if status.get(cfg.log_path.name) == "finished" else \
                "running" if lock_held(cfg.log_path) else "ready"
        entries.append((state, task, method))
        configs.append(cfg)
    spent = float(summaries["wall_time_s"].sum()) / 3600 if len(summaries) else 0.0
    states = budget_states(entries, hours_per_run(summaries), spent)
    return list(zip(states, configs))


def footer(log_dir, *, model=MODEL, data_dir=None, states) -> str:
    """`--list`'s last line: progress, and the worker-hours logged against the budget."""
    logs = read_logs(log_dir) if Path(log_dir).is_dir() else {}
    spent = sum(log["summary"]["wall_time_s"] for log in logs.values()) / 3600
    kinds = [s.split(":")[0] for s, _ in states]
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    return f"{len(kinds)} planned runs: {counts}; {spent:.1f} worker-hours logged (budget {BUDGET:g})"
