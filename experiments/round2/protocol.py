"""Round 2 of the research as data (README "Round 2 protocol"): its runs, and the lr each init gets.

1. Ceilings: full fine-tuning and head-only over `GRID_LRS`, seed 0; RTE only at MRPC's chosen lrs.
2. LoRA-FA, rank 4 on the attention projections: every init over `LORA_LRS`, seed 0.
   The lr of each (task, method, init) is chosen on the holdout slice of train (`select_lr`).
   Ceilings: seeds `CEILING_SEEDS` at their chosen lr.
3. The final comparison: every init at its chosen lr, seeds `FINAL_SEEDS`, paired by seed.
4. The small-lr half: every init at `SMALL_LR`, seeds 0 (the selection run) and `SMALL_LR_SEEDS`.
The rank-16 row (amendment 2): every init at rank `LIMIT_RANK` on `LIMIT_TASKS`, lr chosen over
`LIMIT_LRS` (seed 0) as in step 2, then seeds `LIMIT_SEEDS`: is rank what holds LoRA-FA below full
fine-tuning? On MRPC only `random` and the best rank-4 init, if that one stays below `GOAL`
(`experiments.round2.plan.limit_row`).
A series is (task, method, init, rank): rank 0 for the ceilings, `RANK` for steps 2-4.

`experiments.round2.plan` decides from the logs what runs next (the rank-16 row on MRPC, and the follow-up
checks of `experiments.round2.checks`) and `experiments.round2.sweep` runs it; `experiments.round2.report` reads the results back.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from utils.config import RunConfig
from utils.glue import get_task
from utils.selection import choose_lr, epoch_change, holdout_scores, missing_lrs

LORA_LRS = (1e-4, 4e-4, 1.7e-3, 7e-3, 3e-2)  # the per-init selection grid (step 2)
GRID_LRS = {"full": (2e-5, 5e-5, 1e-4), "head": (1e-3, 5e-3, 2e-2), "lora-fa": LORA_LRS}  # steps 1 and 2
COMPARED_INITS = ("random", "svd", "pissa", "milora", "eva", "grad")
TASKS = ("mrpc", "cola")  # RTE: ceilings only (its LoRA-FA grid did not fit the budget)
RTE_GATE = 0.05  # step 1: RTE is worth LoRA-FA runs only if full FT's final holdout accuracy beats the majority by this
EPOCHS = {"mrpc": 6, "cola": 4, "rte": 6}
HOLDOUT = 0.1  # the share of train held out to choose lrs on (stratified, `utils.data.holdout_split`)
EVAL_EVERY = {"mrpc": 52, "cola": 120, "rte": 35}  # twice per epoch after the 10 % holdout
CEILING_SEEDS = (0, 1, 2)  # step 1: seed 0 is the selection run itself
FINAL_SEEDS = (0, 1, 2, 3, 4)  # step 3, likewise
SMALL_LR = LORA_LRS[0]  # step 4
SMALL_LR_SEEDS = (1, 2)  # step 4 beyond the selection run's seed 0
RANK = 4  # steps 2-4
LIMIT_RANK, LIMIT_TASKS = 16, ("cola",)  # the rank-16 row
LIMIT_LRS = (4e-4, 1.7e-3, 7e-3)  # the middle of LORA_LRS: at its ends no init passed dev MCC 0.046 on CoLA at rank 4
LIMIT_SEEDS = (1, 2)  # beyond the selection run's seed 0
LIMIT_ROW = tuple((t, init) for t in LIMIT_TASKS for init in COMPARED_INITS)  # (task, init) always in the rank-16 row
MAIN_TESTS = 48  # the registered main family: 6 contrasts (5 inits − random, pissa − svd) × final/best × steps 3-4 × 2 tasks
BUDGET = 40  # worker-hours on this machine for the whole round (step 5)
GOAL = 0.9  # the goal: this share of full fine-tuning's final dev gain over the majority class
# results.md's paired tests of cells (both inits at one lr), as first written: round 1's contrasts. The
# registered comparison, each init at its own lr, is round2.md's (`experiments.round2.report`).
CELL_CONTRASTS = (("svd", "random"), ("pissa", "random"), ("pissa", "svd"), ("seed", "random"))
SELECT = "select"  # in `planned_runs`: the lr chosen for this (task, method, init)
CONVERGED = {"mrpc": 0.005, "cola": 0.01, "rte": 0.01}  # step 3's rule: last vs previous epoch on holdout


def planned_runs(limit=None) -> list[tuple]:
    """(task, method, init, lr, seed, rank) in priority order; lr `SELECT` is the lr chosen on the task,
    (`SELECT`, task) the one chosen on another task. init "none" and rank 0 for the ceilings. `limit`:
    the (task, init) pairs of the rank-16 row (default: every init on `LIMIT_TASKS`; `limit_row`)."""
    limit = LIMIT_ROW if limit is None else limit
    out = []
    for task in ("cola", "mrpc"):  # 1. ceilings, seed 0: the lr grids
        out += [(task, m, "none", lr, 0, 0) for m in ("full", "head") for lr in GRID_LRS[m]]
    for task in ("cola", "mrpc"):  # 2. LoRA-FA lr per init, seed 0
        out += [(task, "lora-fa", init, lr, 0, RANK) for init in COMPARED_INITS for lr in LORA_LRS]
    out += [("rte", m, "none", (SELECT, "mrpc"), 0, 0) for m in ("full", "head")]  # 1. RTE at MRPC's lrs
    for task in ("mrpc", "cola"):  # 1. ceiling seeds
        out += [(task, m, "none", SELECT, s, 0) for s in CEILING_SEEDS[1:] for m in ("full", "head")]
    for task in ("mrpc", "cola"):  # 3. final comparison at the selected lrs, 3 seeds first
        out += [(task, "lora-fa", init, SELECT, s, RANK) for s in FINAL_SEEDS[1:3] for init in COMPARED_INITS]
    for task in ("mrpc", "cola"):  # 4. the small-lr half
        out += [(task, "lora-fa", init, SMALL_LR, s, RANK) for s in SMALL_LR_SEEDS for init in COMPARED_INITS]
    for task in dict.fromkeys(t for t, _ in limit):  # the rank-16 row: its lr grid, then its seeds
        inits = [init for t, init in limit if t == task]
        out += [(task, "lora-fa", init, lr, 0, LIMIT_RANK) for init in inits for lr in LIMIT_LRS]
        out += [(task, "lora-fa", init, SELECT, s, LIMIT_RANK) for s in LIMIT_SEEDS for init in inits]
    for task in ("mrpc", "cola"):  # 3. the final comparison's seeds 3 and 4
        out += [(task, "lora-fa", init, SELECT, s, RANK) for s in FINAL_SEEDS[3:] for init in COMPARED_INITS]
    return out


def grid_lrs(method: str, rank: int) -> tuple:
    """The lrs a series of `method` at `rank` chooses from."""
    return LIMIT_LRS if method == "lora-fa" and rank == LIMIT_RANK else GRID_LRS[method]


def run_config(task, method, init, lr, seed, rank=RANK, *, model="minilm", epochs=None, log_dir="logs/round2",
               data_dir=None) -> RunConfig:
    """The RunConfig of one round-2 run (every setting the protocol fixes; `epochs`: the task's, `EPOCHS`,
    unless a follow-up check says otherwise)."""
    return RunConfig(task=task, model=model, method=method, init="random" if init == "none" else init,
                     rank=rank, lr=lr, seed=seed, epochs=epochs or EPOCHS[task], eval_every=EVAL_EVERY[task], batch_size=32,
                     max_length=128, bf16=False, group_by_length=True, holdout=HOLDOUT, init_batches=8,
                     log_dir=log_dir, data_dir=data_dir).canonical()


def series(runs: pd.DataFrame | None = None) -> list[tuple[str, str, str, int]]:
    """(task, method, init, rank) of every series whose lr round 2 selects; RTE borrows MRPC's. The
    rank-16 row: every init on `LIMIT_TASKS`, and each other (task, init) with a rank-16 run in `runs`."""
    limit = list(LIMIT_ROW)
    if runs is not None and len(runs):
        r16 = runs[(runs["method"] == "lora-fa") & (runs["rank"] == LIMIT_RANK)]
        limit += sorted(set(zip(r16["task"], r16["init"])) - set(limit), key=lambda k: (k[0], COMPARED_INITS.index(k[1])))
    return [(t, m, "none", 0) for t in TASKS for m in ("full", "head")] + \
        [(t, "lora-fa", init, RANK) for t in TASKS for init in COMPARED_INITS] + \
        [(t, "lora-fa", init, LIMIT_RANK) for t, init in limit]


def selected_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """The lr chosen for every (task, method, init, rank) of `series()`, NaN while its grid is
    unfinished. Columns task, method, init, rank, lr, grid (how many of the grid's lrs have finished)."""
    rows = []
    for task, method, init, rank in series(runs):
        grid = grid_lrs(method, rank)
        done = holdout_scores(runs, task, init, method=method, epochs=EPOCHS[task], rank=rank)
        rows.append({"task": task, "method": method, "init": init, "rank": rank,
                     "lr": np.nan if missing_lrs(done, grid) else choose_lr(done, grid)[0], "grid": f"{len(done)}/{len(grid)}"})
    for method in ("full", "head"):  # RTE's ceilings run at MRPC's lrs
        mrpc = next(r for r in rows if r["task"] == "mrpc" and r["method"] == method)
        rows.append({**mrpc, "task": "rte", "grid": "MRPC's"})
    return pd.DataFrame(rows)


def at_selected(df: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The rows of `df` (runs or summaries) at their series' selected lr (`selected_lrs`)."""
    if df.empty:
        return df
    keys = ["task", "method", "init", "rank"]
    chosen = selected.dropna(subset=["lr"]).rename(columns={"lr": "_lr"})[keys + ["_lr"]]
    out = df.merge(chosen, on=keys)
    return out[np.isclose(out["lr"].astype(float), out["_lr"].astype(float))].drop(columns="_lr")


def at_small_lr(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of `df` (runs or summaries) at step 4's shared `SMALL_LR`."""
    return df[np.isclose(df["lr"].astype(float), SMALL_LR)]


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


def convergence(runs: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Step 3's convergence rule per (task, method, init, rank) at its chosen lr: `epoch_change` of the
    holdout main metric; converged if the last and previous epochs differ by at most `CONVERGED[task]`."""
    out = epoch_change(at_selected(runs, selected), ["task", "method", "init", "rank"])
    out["converged"] = [bool(abs(a - b) <= CONVERGED[t] + 1e-12)  # at the tolerance: in
                        for t, a, b in zip(out["task"], out["last"], out["previous"])]
    return out


def projected_hours(summaries: pd.DataFrame, planned=None) -> tuple[float, float]:
    """(worker-hours that round 2's finished runs took, as logged; the projected total), each
    unfinished run of `planned` (default `planned_runs()`) at the median time so far of its task,
    method and rank (RTE at MRPC's, rank 16 at rank 4's until they have their own). The budget rule
    of the protocol (40 worker-hours) reads this."""
    planned = planned_runs() if planned is None else planned
    keys = ["task", "method", "rank"]
    median = summaries.groupby(keys)["wall_time_s"].median() / 3600 if len(summaries) else pd.Series(dtype=float)
    done = summaries.groupby(keys).size() if len(summaries) else pd.Series(dtype=int)
    spent = float(summaries["wall_time_s"].sum()) / 3600 if len(summaries) else 0.0
    left = 0.0
    for (task, method, rank), n in Counter((t, m, r) for t, m, _, _, _, r in planned).items():
        fallback = ("mrpc" if task == "rte" else task, method, RANK if method == "lora-fa" else 0)
        hours = median.get((task, method, rank), median.get(fallback, np.nan))
        left += max(0, n - int(done.get((task, method, rank), 0))) * hours
    return spent, spent + left
