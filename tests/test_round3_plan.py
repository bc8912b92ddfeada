"""Round 3's plan (experiments/round3/plan.py) against its protocol: the settings every run gets, the
order, the lr chosen on holdout (never dev), the gate and the budget cut, checked by hand."""
import pandas as pd
import pytest

from experiments.round3 import plan


def test_every_run_has_the_protocols_settings():
    cfg = plan.run_config("rte", "lora-fa", "svd", 1.7e-3, 2)
    assert (cfg.model, cfg.method, cfg.init, cfg.rank, cfg.epochs, cfg.holdout) == ("mpnet", "lora-fa", "svd", 4, 6, 0.1)
    assert (cfg.bf16, cfg.eval_every, cfg.batch_size, cfg.svd_method, cfg.log_dir) == (False, None, 32, "lanczos", "logs/round3")
    full = plan.run_config("rte", "full", "none", 2e-5, 0)
    assert (full.init, full.rank) == ("none", 0)
    assert plan.run_config("cola", "lora-fa", "grad", 4e-4, 0).init_batches == 8


def test_the_order_is_phase_by_phase_and_task_by_task():
    runs = plan.planned_runs()
    assert runs[:2] == [("cola", "full", "none", 2e-5, 0), ("cola", "full", "none", 5e-5, 0)]
    # every series: its lr grid at seed 0, then seeds 1-2 (phases 1-3) and 3-4 (phase 4) at its chosen lr
    for task in plan.TASKS:
        for method, init, grid in [("full", "none", plan.FULL_LRS)] + [("lora-fa", i, plan.LORA_LRS) for i in plan.INITS]:
            mine = [r for r in runs if r[:3] == (task, method, init)]
            assert [r[3] for r in mine[:len(grid)]] == list(grid) and {r[4] for r in mine[:len(grid)]} == {0}
            assert [r[4] for r in mine[len(grid):]] == [1, 2, 3, 4] and {r[3] for r in mine[len(grid):]} == {plan.SELECT}
    def at(pick):  # the positions of the runs `pick` selects
        return [i for i, r in enumerate(runs) if pick(r)]

    primary, full_grid = at(lambda r: r[2] in plan.PRIMARY and r[4] < 3), at(lambda r: r[1] == "full" and r[4] == 0)
    secondary = at(lambda r: r[2] in plan.SECONDARY and r[4] < 3)
    full_seeds = at(lambda r: r[1] == "full" and r[4] in (1, 2))
    assert max(primary + full_grid) < min(secondary)  # phase 1 (full FT's grid, random, svd) of all tasks first
    assert max(secondary) < min(full_seeds)  # full FT's seeds 1-2 after LoRA-FA's seeds 0-2 (phase 3)
    assert max(full_seeds) < min(at(lambda r: r[4] == 3))  # and before any seed 3 (phase 4)
    assert list(dict.fromkeys(r[0] for r in runs)) == ["cola", "rte", "mrpc"]
    assert len(runs) == 3 * (2 + 4 * 3) + 3 * 5 * 4  # the grids, then four more seeds of 5 series


def _runs(rows):
    """A `load_runs`-like frame: one row per (lr, epoch) of CoLA's random series at seed 0."""
    out = []
    for lr, holdout, dev in rows:
        for epoch in range(1, plan.EPOCHS + 1):
            out.append({"task": "cola", "method": "lora-fa", "init": "random", "seed": 0, "epochs": plan.EPOCHS,
                        "rank": plan.RANK, "lr": lr, "step": epoch * 10, "epoch": float(epoch),
                        "holdout_mcc": holdout * epoch / plan.EPOCHS, "mcc": dev})
    return pd.DataFrame(out)


def test_the_lr_is_chosen_on_the_holdout_never_on_dev():
    runs = _runs([(4e-4, 0.30, 0.50), (1.7e-3, 0.40, 0.10), (7e-3, 0.20, 0.60)])
    assert plan.chosen_lrs(runs) == {("cola", "lora-fa", "random"): 1.7e-3}
    tie = _runs([(4e-4, 0.40, 0.0), (1.7e-3, 0.40, 0.0), (7e-3, 0.10, 0.0)])
    assert plan.chosen_lrs(tie) == {("cola", "lora-fa", "random"): 4e-4}  # ties: the smaller lr
    assert plan.chosen_lrs(runs[runs["lr"] != 7e-3]) == {}  # an unfinished grid chooses nothing


def test_the_gate_needs_five_points_over_the_holdout_majority():
    runs = _runs([(2e-5, 0.35, 0.0), (5e-5, 0.30, 0.0)]).assign(method="full", init="none", rank=0)
    chosen = plan.chosen_lrs(runs)
    assert chosen == {("cola", "full", "none"): 2e-5}
    assert plan.gate(runs, chosen, "cola", {"mcc": 0.30}) is True  # 0.35 − 0.30 = 0.05: passes
    assert plan.gate(runs, chosen, "cola", {"mcc": 0.31}) is False
    assert plan.gate(runs, chosen, "cola", None) is None  # no data to count the majority: undecided
    assert plan.gate(runs, {}, "cola", {"mcc": 0.0}) is None


def test_the_budget_cuts_from_the_first_run_that_passes_it():
    hours = {("cola", "full"): 30.0, ("cola", "lora-fa"): 20.0}
    entries = [("finished", "cola", "full"), ("ready", "cola", "full"), ("gated: x", "cola", "lora-fa"),
               ("waiting: y", "cola", "lora-fa"), ("ready", "cola", "lora-fa"), ("finished", "cola", "lora-fa")]
    # spent 25 h: +30 = 55, gated costs nothing, +20 = 75, +20 = 95 > 80: cut there and after
    assert plan.budget_states(entries, hours, 25.0) == [
        "finished", "ready", "gated: x", "waiting: y", "over budget", "finished"]
    assert plan.budget_states(entries, hours, 0.0)[4] == "ready"  # 70 h: within


def test_with_no_logs_only_the_first_tasks_full_grid_and_every_full_grid_can_start(tmp_path):
    states = plan.run_states(tmp_path)
    ready = [(c.task, c.method, c.lr) for s, c in states if s == "ready"]
    assert ready == [(t, "full", lr) for t in plan.TASKS for lr in plan.FULL_LRS]
    assert all(s.startswith("waiting") or s == "over budget" for s, c in states if c is None)
    assert "over budget" in {s for s, _ in states}  # phase 3 is past the 80 worker-hours estimate
    assert plan.footer(tmp_path, states=states).endswith("0.0 worker-hours logged (budget 80)")


@pytest.mark.parametrize("task", plan.TASKS)
def test_the_family_is_three_contrasts_per_task(task):
    assert [f for f in plan.FAMILY if f[0] == task] == [(task, i, "random") for i in ("svd", "pissa", "grad")]
    assert len(plan.FAMILY) == 9
