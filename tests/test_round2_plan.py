"""Round 2's decisions from its logs (experiments.round2.plan): the mpnet confirmation of amendment 3, and the
plan that the sweep reads, on synthetic logs whose answers are known by construction."""
import dataclasses

import pytest

from experiments.round2 import checks as round2_checks
from experiments.round2 import plan as round2_plan
from experiments.round2 import protocol as round2
from experiments.round2.figures import round2_figures
from experiments.round2.report import round2_report
from tests.test_round2 import _log, _mrpc_step3
from utils import sweep
from utils.logs import load_runs, load_summaries, write_json_atomic


def _step3(means: dict, lr=1e-3):
    """(summaries, selected) of MRPC step 3 over all five seeds: every init at 0.82 unless `means` says."""
    finals = {init: (means.get(init, 0.82),) * len(round2.FINAL_SEEDS) for init in round2.COMPARED_INITS}
    return _mrpc_step3(finals, lr=lr)


@pytest.mark.parametrize("means, other", [
    ({"eva": 0.85, "random": 0.84}, "eva"),
    ({"random": 0.86, "grad": 0.85}, "grad"),  # random on top: the best of the others
    ({"pissa": 0.83, "milora": 0.83}, "pissa"),  # a tie goes to the first in COMPARED_INITS
])
def test_confirmation_pits_random_against_the_best_other_init(means, other):
    summaries, selected = _step3(means)
    assert round2_checks.confirm_inits(summaries, selected) == ("random", other)
    unfinished = summaries.drop(summaries.index[(summaries["init"] == other) & (summaries["seed"] == 4)])
    assert round2_checks.confirm_inits(unfinished, selected) is None  # step 3's seed 4 still missing


def _timed_log(cfg, dev, holdout, wall_s):
    """`_log` of the run `cfg` (its config and run id), taking `wall_s` seconds."""
    log = _log(cfg.method, cfg.init, cfg.lr, cfg.seed, dev, holdout, task=cfg.task, rank=cfg.rank)
    log["config"] = {**dataclasses.asdict(cfg), "main_metric": log["config"]["main_metric"]}
    log["summary"]["wall_time_s"], log["run_id"] = wall_s, cfg.run_id
    return log


@pytest.mark.parametrize("spent, done, runs", [
    (30.0, {}, 4),  # 30 + 4 x 1.6 h fits
    (36.0, {}, 2),  # 36 + 2 x 1.6 = 39.2 fits, + 4 x 1.6 = 42.4 does not: seed 0's pair only
    (37.0, {}, 0),  # 37 + 3.2 > 40: nothing
    (37.5, {"wall_s": 3600.0}, 4),  # seed 0's pair took 1 h each: seed 1's fits (37.5 + 2 x 1.0)
    (39.0, {"wall_s": 3600.0}, 2),  # ... and at 39 h it does not
    (45.0, {"status": "running"}, 2),  # a started pair stays, whatever the budget says now
])
def test_confirmation_runs_pair_by_pair_while_the_budget_allows(tmp_path, spent, done, runs):
    summaries, selected = _step3({"eva": 0.85})
    log_dir = tmp_path / "round2"
    logs = {}
    if "wall_s" in done:  # seed 0's two runs finished
        for cfg in round2_checks.confirm_runs(summaries, selected, {}, 0.0, log_dir=log_dir)[:2]:
            logs[cfg.log_path] = _timed_log(cfg, 0.85, 0.8, done["wall_s"])
    if "status" in done:  # seed 0's random run has started
        cfg = round2_checks.confirm_runs(summaries, selected, {}, 0.0, log_dir=log_dir)[0]
        logs = {cfg.log_path: {**_log("lora-fa", "random", 1e-3, 0, 0.8, 0.8), "status": done["status"]}}
    plan = round2_checks.confirm_runs(summaries, selected, logs, spent, log_dir=log_dir)
    assert len(plan) == runs
    expected = [("random", 0), ("eva", 0), ("random", 1), ("eva", 1)][:runs]
    assert [(c.init, c.seed) for c in plan] == expected
    for c in plan:  # the MiniLM lr, mpnet, every other setting as in round 2, in a folder of its own
        ref = round2.run_config("mrpc", "lora-fa", c.init, 1e-3, c.seed, model="mpnet", log_dir=str(tmp_path / "round2_mpnet"))
        assert c == ref and c.log_path.parent == tmp_path / "round2_mpnet" / "mrpc"


def _write(cfg, dev, holdout, wall_s=600.0):
    write_json_atomic(_timed_log(cfg, dev, holdout, wall_s), cfg.log_path)


@pytest.mark.slow
def test_the_plan_adds_the_mpnet_runs_once_every_minilm_run_has_finished(tmp_path, monkeypatch):
    """MRPC's rank-4 plan (ceilings, grid, final seeds) all finished, `eva` on top: the sweep's list ends
    with the four mpnet runs, at MiniLM's chosen lr, logged next to the MiniLM folder."""
    real = round2.planned_runs
    monkeypatch.setattr(round2_plan, "planned_runs", lambda limit=None: [  # MRPC, without step 4's seeds 1-2
        r for r in real(limit) if r[0] == "mrpc" and r[5] in (0, 4) and not (r[3] == round2.SMALL_LR and r[4] > 0)])
    log_dir = tmp_path / "round2"
    peak = {"full": 1e-4, "head": 5e-3}
    for task, method, init, lr, seed, rank in round2_plan.planned_runs():
        lr = peak.get(method, 1.7e-3) if lr == round2.SELECT else lr
        best = lr == peak.get(method, 1.7e-3)
        cfg = round2.run_config(task, method, init, lr, seed, rank, log_dir=str(log_dir))
        _write(cfg, 0.87 if method == "full" else 0.85 if init == "eva" else 0.83, 0.85 if best else 0.8)
    states = round2_plan.run_states(log_dir)
    assert {s for s, _ in states[:-4]} == {"finished"}
    mpnet = [c for _, c in states[-4:]]
    assert [(s, c.model, c.init, c.seed, c.lr) for (s, _), c in zip(states[-4:], mpnet)] == [
        ("ready", "mpnet", i, s, 1.7e-3) for s in (0, 1) for i in ("random", "eva")]
    cmd = sweep.command(mpnet[0], 1)
    assert cmd[cmd.index("--model") + 1] == "mpnet" and cmd[cmd.index("--log-dir") + 1] == str(tmp_path / "round2_mpnet")
    _write(mpnet[0], 0.86, 0.85, wall_s=5400.0)  # the first mpnet run finishes (1.5 h)
    plan = round2_plan.current_plan(log_dir)
    spent = (len(states) - 4) * 600 / 3600 + 1.5
    assert plan.hours == pytest.approx((spent, spent + 3 * 1.5))  # the rest at the finished one's time
    assert [s for s, _ in round2_plan.run_states(log_dir, plan=plan)[-4:]] == ["finished", "ready", "ready", "ready"]
    checks = {"mpnet": (load_runs(tmp_path / "round2_mpnet"), load_summaries(tmp_path / "round2_mpnet"))}
    md = round2_report(load_runs(log_dir), load_summaries(log_dir), {"mrpc": {"f1": 0.812}}, checks=checks)
    assert "MRPC on mpnet" in md and "1 finished mpnet runs, 1.5 worker-hours" in md
    states[0][1].log_path.unlink()  # a MiniLM run not finished after all: no mpnet run yet
    assert all(c.model == "minilm" for _, c in round2_plan.run_states(log_dir) if c)



@pytest.mark.slow
def test_the_plan_adds_amendment_4s_long_runs_after_the_registered_ones(tmp_path, monkeypatch):
    """CoLA's rank-4 plan all finished (every LoRA-FA init chosen at 1.7e-3): the list ends with the 12
    runs of amendment 4, at 8 epochs and the chosen lr, in a folder of their own, seed by seed; they are
    priced at twice the median 4-epoch run until one has finished, then at their own median; the
    report pairs them with the registered runs of the same seeds."""
    real = round2.planned_runs
    monkeypatch.setattr(round2_plan, "planned_runs", lambda limit=None: [  # CoLA rank 4, without step 4's seeds 1-2
        r for r in real(limit) if r[0] == "cola" and r[5] in (0, 4) and not (r[3] == round2.SMALL_LR and r[4] > 0)])
    log_dir, peak = tmp_path / "round2", {"full": 5e-5, "head": 2e-2}
    short = {"random": 0.10, "svd": 0.05, "eva": 0.12, "grad": 0.11, "pissa": 0.1, "milora": 0.1}
    for task, method, init, lr, seed, rank in round2_plan.planned_runs():
        lr = peak.get(method, 1.7e-3) if lr == round2.SELECT else lr
        chosen = lr == peak.get(method, 1.7e-3)
        cfg = round2.run_config(task, method, init, lr, seed, rank, log_dir=str(log_dir))
        dev = 0.30 if method == "full" else short.get(init, 0.0) + 0.01 * seed if chosen else 0.0
        _write(cfg, dev, 0.2 if chosen else 0.1)
    states = round2_plan.run_states(log_dir)
    registered = len(states) - 12
    assert {s for s, _ in states[:registered]} == {"finished"}
    long = [c for _, c in states[registered:]]
    assert [(s, c.init, c.seed) for (s, _), c in zip(states[registered:], long)] == [
        ("ready", i, seed) for seed in (0, 1, 2) for i in round2_checks.LONG_INITS]
    for c in long:  # step 3's run but for the epochs, logged apart
        assert c == round2.run_config("cola", "lora-fa", c.init, 1.7e-3, c.seed, epochs=8, log_dir=str(tmp_path / "round2_long"))
        assert c.log_path.parent == tmp_path / "round2_long" / "cola"
    assert sweep.command(long[0], 1)[sweep.command(long[0], 1).index("--epochs") + 1] == "8"
    spent = registered * 600 / 3600
    assert round2_plan.current_plan(log_dir).hours == pytest.approx((spent, spent + 12 * 2 * 600 / 3600))
    _write(long[0], 0.15, 0.2, wall_s=1800.0)
    assert round2_plan.current_plan(log_dir).hours == pytest.approx((spent + 0.5, spent + 0.5 + 11 * 0.5))
    for c in long[1:]:  # 8 epochs: random +0.05 + 0.01 x seed over its 4-epoch runs, svd 0.03 - 0.01 x seed below it
        _write(c, {"random": 0.15 + 0.02 * c.seed, "svd": 0.12 + 0.03 * c.seed}.get(c.init, 0.2), 0.2)
    assert {s for s, _ in round2_plan.run_states(log_dir)} == {"finished"}  # no MRPC: no mpnet runs
    folder = tmp_path / "round2_long"
    md = round2_report(load_runs(log_dir), load_summaries(log_dir), {"cola": {"mcc": 0.0}},
                       checks={"long": (load_runs(folder), load_summaries(folder))})
    part = md[md.index("CoLA trained for 8 epochs"):]
    assert "Holm over the 14 tests of this family only" in part
    assert "| random (8 epochs) − random (4 epochs) | final | 3 | +0.060 (+0.035, +0.085) |" in part
    assert "| svd − random | final | 3 | -0.020 (-0.045, +0.005) |" in part
    row = next(line for line in part.splitlines() if line.startswith("| minilm | lora-fa | random |"))
    assert "| 0.170 ± 0.020 |" in row and f"| {0.17 / 0.30:.2f} |" in row  # share of 4-epoch full fine-tuning
    assert row.endswith("| +0.010 |")  # last − previous epoch on holdout: at the tolerance, converged
    assert "Compute: 12 finished 8-epoch runs, 2.3 worker-hours as logged." in part
    figs = round2_figures(load_runs(log_dir), load_summaries(log_dir), {"cola": {"mcc": 0.0}},
                          checks={"long": (load_runs(folder), load_summaries(folder))})
    fig = figs["cola_8_epochs_history.png"]  # the long runs' curves: one line per init
    labels = {label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]} | \
        {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert all(any(init in label for label in labels) for init in round2_checks.LONG_INITS)
