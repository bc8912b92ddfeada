"""Round 2's selection and report (experiments.round2.protocol, experiments.round2.report, the --round2 figures) on
synthetic logs whose chosen lrs and paired differences are known by construction."""
import dataclasses
import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.round2 import figures as round2_figures
from experiments.round2 import plan as round2_plan
from experiments.round2 import protocol as round2
from experiments.round2.report import round2_report
from tests.runner_helpers import dead_pid
from utils import figures, plots
from utils.logs import SCHEMA, load_runs, load_summaries, read_logs, write_json_atomic
from utils.stats import holm, majority_metrics, with_variant

REPO = Path(__file__).resolve().parents[1]

EPOCH_POINTS = (4.5, 5.0, 5.5, 6.0)  # the last two evaluations are MRPC's 6th epoch, the first two its 5th
HOLDOUT_PEAK = {"random": 7e-3, "svd": 1.7e-3, "full": 5e-5, "head": 5e-3}  # where each series' holdout F1 peaks
DEV = {("random", 0): 0.85, ("random", 1): 0.84, ("random", 2): 0.86,  # dev F1 at the chosen lr
       ("svd", 0): 0.83, ("svd", 1): 0.83, ("svd", 2): 0.85, ("full", 0): 0.87}
SMALL = {("random", 0): 0.812, ("random", 1): 0.815, ("svd", 0): 0.82, ("svd", 1): 0.826}


def _log(method, init, lr, seed, dev_f1, holdout_f1, task="mrpc", rank=4):
    """A finished log whose main metric (F1 on MRPC, MCC on CoLA) rises to `dev_f1` on dev and ends at
    `holdout_f1` on holdout over `EPOCH_POINTS`."""
    metric = "f1" if task in ("mrpc", "rte") else "mcc"
    history = [{"step": 10 * (k + 1), "epoch": e, "train_loss": 0.6, "lr": lr, "dev_loss": 0.5,
                "metrics": {"accuracy": dev_f1 - 0.1, metric: dev_f1 - 0.02 * (3 - k)},  # rises to dev_f1
                "holdout": {"accuracy": 0.7, metric: holdout_f1 - (0.01 if k < 2 else 0), "loss": 0.5},
                "time_s": 60.0 * (k + 1)} for k, e in enumerate(EPOCH_POINTS)]
    config = {**dataclasses.asdict(round2.run_config(task, method, init, lr, seed, rank)), "main_metric": metric}
    final = {**history[-1]["metrics"], "dev_loss": 0.5}
    best = {m: {"value": max(h["metrics"][m] for h in history), "step": 40} for m in ("accuracy", metric)}
    return {"schema": SCHEMA, "run_id": f"{task}_{method}_{init}_r{rank}_lr{lr:g}_s{seed}", "status": "finished",
            "error": None,
            "config": config, "env": {}, "history": history, "train_loss": [],
            "summary": {"final": final, "best": best, "holdout": {"final": dict(history[-1]["holdout"])}, "steps": 40,
                        "wall_time_s": 240.0, "peak_rss_mb": 1.0, "trainable_params": 10}}


def _holdout(series, lr):
    """Holdout F1 falling off with the distance (in decades) from the series' peak lr."""
    return 0.85 - 0.05 * abs(math.log10(lr / HOLDOUT_PEAK[series]))


@pytest.fixture
def round2_logs(tmp_path):
    logs = []
    for method in ("full", "head"):
        logs += [_log(method, "none", lr, 0, DEV.get((method, 0), 0.82), _holdout(method, lr))
                 for lr in round2.GRID_LRS[method]]
    for init in ("random", "svd"):
        for lr in round2.LORA_LRS:
            chosen = np.isclose(lr, HOLDOUT_PEAK[init])
            dev = DEV[(init, 0)] if chosen else SMALL[(init, 0)] if lr == round2.SMALL_LR else 0.80
            logs.append(_log("lora-fa", init, lr, 0, dev, _holdout(init, lr)))
        logs += [_log("lora-fa", init, HOLDOUT_PEAK[init], s, DEV[(init, s)], 0.8) for s in (1, 2)]
        logs.append(_log("lora-fa", init, round2.SMALL_LR, 1, SMALL[(init, 1)], 0.8))
    root = tmp_path / "logs"
    for log in logs:
        write_json_atomic(log, root / "mrpc" / f"{log['run_id']}.json")
    return root


def test_selected_lrs_are_the_holdout_peaks(round2_logs):
    sel = round2.selected_lrs(load_runs(round2_logs)).set_index(["task", "method", "init"])
    for init in ("random", "svd"):
        assert sel.loc[("mrpc", "lora-fa", init), "lr"] == pytest.approx(HOLDOUT_PEAK[init])
        assert sel.loc[("mrpc", "lora-fa", init), "grid"] == "5/5"
    assert sel.loc[("mrpc", "full", "none"), "lr"] == pytest.approx(5e-5)
    assert sel.loc[("rte", "full", "none"), "lr"] == pytest.approx(5e-5)  # RTE borrows MRPC's
    assert math.isnan(sel.loc[("mrpc", "lora-fa", "pissa"), "lr"]) and sel.loc[("mrpc", "lora-fa", "pissa"), "grid"] == "0/5"
    assert math.isnan(sel.loc[("cola", "full", "none"), "lr"])


def test_at_selected_keeps_each_series_at_its_own_lr(round2_logs):
    summaries = load_summaries(round2_logs)
    chosen = round2.at_selected(summaries, round2.selected_lrs(load_runs(round2_logs)))
    got = chosen.groupby(["method", "init"])["lr"].agg(lambda s: sorted(set(s))).to_dict()
    assert got == {("full", "none"): [5e-5], ("head", "none"): [5e-3],
                   ("lora-fa", "random"): [7e-3], ("lora-fa", "svd"): [1.7e-3]}
    assert sorted(chosen[chosen["init"] == "svd"]["seed"]) == [0, 1, 2]


def test_report_pairs_each_init_at_its_own_lr_and_holm_counts_the_family(round2_logs):
    runs, summaries = load_runs(round2_logs), load_summaries(round2_logs)
    md = round2_report(runs, summaries, {"mrpc": {"f1": 0.812}})
    # svd − random at the chosen lrs: final F1 differences -0.02, -0.01, -0.01 (seeds 0, 1, 2)
    diffs = np.array([-0.02, -0.01, -0.01])
    line = next(ln for ln in md.splitlines() if ln.startswith("| svd − random | final | 3 |"))
    assert f"{diffs.mean():+.3f}" in line and "0/3" in line
    small = next(ln for ln in md.splitlines() if ln.startswith("| svd − random | final | 2 |"))
    assert f"{np.mean([0.82 - 0.812, 0.826 - 0.815]):+.3f}" in small and "2/2" in small  # at lr 1e-4
    # family: (svd − random) final and best, at the chosen lrs and at the small lr: 4 tests
    assert f"over the {round2.MAIN_TESTS} registered paired tests" in md and "over the 4 defined ones" in md
    # the chosen lr is bold in the selection table, and the share of full fine-tuning's gain
    assert "**0.850 (0.850)**" in md  # random at 7e-3: holdout score 0.85, dev final 0.85
    share = (np.mean([0.85, 0.84, 0.86]) - 0.812) / (0.87 - 0.812)
    row = next(ln for ln in md.splitlines() if ln.startswith("| minilm | lora-fa | random | 4 | 0.007 | 3 |"))
    assert f"| {share:.2f} | +0.010 (not converged) |" in row
    full = next(ln for ln in md.splitlines() if ln.startswith("| minilm | full |"))
    assert full.endswith("| 1.00 | +0.010 (not converged) |")  # the ceilings are checked too
    # at a glance: the same numbers on one row per series (MRPC columns; CoLA has no runs here)
    glance = md[md.index("### At a glance"):md.index("### MRPC")]
    p_holm = next(ln for ln in md.splitlines() if ln.startswith("| svd − random | final | 3 |")).split("|")[6].strip()
    assert f"| svd | 0.0017 | 0.837 ± 0.012 (3) | {(0.83667 - 0.812) / 0.058:.2f} | {diffs.mean():+.3f} ({p_holm}) |" in glance
    assert f"| random | 0.007 | 0.850 ± 0.010 (3) | {share:.2f} |  |" in glance and "CoLA" not in glance


R16_PEAK = {"random": 1.7e-3, "svd": 4e-4}  # rank 16's holdout peaks, not rank 4's (7e-3, 1.7e-3)
R16_GAIN = (0.04, 0.05, 0.06)  # rank 16's final dev MCC − rank 4's, seeds 0-2


def test_rank16_row_is_selected_and_paired_apart_from_rank4(tmp_path):
    """CoLA logs at rank 4 and 16 where both ranks share lr 1.7e-3 at seed 0: each rank chooses its own
    lr, rank 16 − rank 4 is its own Holm family, and the rank-4 family is unchanged."""
    root = tmp_path / "logs"
    for rank, peaks, lrs in ((4, HOLDOUT_PEAK, round2.LORA_LRS), (16, R16_PEAK, round2.LIMIT_LRS)):
        for init in ("random", "svd"):
            for lr in lrs:
                chosen = np.isclose(lr, peaks[init])
                dev = 0.2 + (R16_GAIN[0] if rank == 16 else 0) if chosen else 0.1  # seed 0
                holdout = 0.3 - 0.05 * abs(math.log10(lr / peaks[init]))
                log = _log("lora-fa", init, lr, 0, dev, holdout, task="cola", rank=rank)
                write_json_atomic(log, root / "cola" / f"{log['run_id']}.json")
            for s in (1, 2):
                dev = 0.2 + (0.01 if init == "svd" else 0.02) * s + (R16_GAIN[s] if rank == 16 else 0)
                log = _log("lora-fa", init, peaks[init], s, dev, 0.2, task="cola", rank=rank)
                write_json_atomic(log, root / "cola" / f"{log['run_id']}.json")
    runs = load_runs(root)
    sel = round2.selected_lrs(runs).set_index(["task", "method", "init", "rank"])["lr"]
    assert sel[("cola", "lora-fa", "random", 16)] == pytest.approx(1.7e-3)
    assert sel[("cola", "lora-fa", "random", 4)] == pytest.approx(7e-3)
    assert sel[("cola", "lora-fa", "svd", 16)] == pytest.approx(4e-4)
    md = round2_report(runs, load_summaries(root), {"cola": {"mcc": 0.0}})
    assert next(ln for ln in md.splitlines() if ln.startswith("| random (rank 16) | 3/3 |")).endswith("| 0.0017 |")
    for init in ("random", "svd"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {init} r16 − {init} r4 | final | 3 |"))
        assert f"{np.mean(R16_GAIN):+.3f}" in line and "3/3" in line
    # rank-4 family: svd − random final/best at the chosen lr (no small-lr seeds here); rank family: 2 × 2
    assert "over the 2 defined ones, as first reported (the rank-16 row's 4 tests" in md
    figs = round2_figures.round2_figures(runs, load_summaries(root), {"cola": {"mcc": 0.0}})
    assert {"cola_lr_sensitivity.png", "cola_selected_lr_history.png", "cola_rank16.png"} <= set(figs)
    points = {(round(ln.get_xdata()[0], 2), round(ln.get_ydata()[0], 3))
              for ln in figs["cola_rank16.png"].axes[0].lines if len(ln.get_xdata()) == 1}
    assert {(-0.14, 0.22), (0.14, 0.27), (0.86, 0.21), (1.14, 0.26)} <= points  # random, svd: seed means
    assert [t.get_text() for t in figs["cola_rank16.png"].axes[0].texts] == ["n=3"] * 4  # seeds per point
    for fig in figs.values():
        figures.plt.close(fig)


def test_projected_hours_prices_each_unfinished_run_at_its_group_median():
    done = pd.DataFrame({"task": ["cola"] * 3 + ["mrpc"], "method": ["lora-fa"] * 3 + ["full"],
                         "rank": [4, 4, 4, 0], "wall_time_s": [600.0, 900.0, 3600.0, 1800.0]})
    planned = [("cola", "lora-fa", "svd", 1e-3, s, 4) for s in range(5)] + \
        [("cola", "lora-fa", "svd", 1e-3, s, 16) for s in range(2)] + [("rte", "full", "none", 1e-4, 0, 0)] + \
        [("mrpc", "full", "none", 1e-4, 0, 0)]
    spent, total = round2.projected_hours(done, planned)
    # spent 6900 s; left: 2 cola rank-4 runs and 2 rank-16 ones at cola's median 900 s, RTE at MRPC's 1800 s
    assert spent == pytest.approx(6900 / 3600) and total == pytest.approx((6900 + 4 * 900 + 1800) / 3600)


@pytest.mark.slow
def test_the_main_family_is_the_registered_one_on_the_committed_logs():
    """Holm runs over every registered test of steps 3-4 (6 contrasts × final/best × 2 steps × 2 tasks),
    the 8 that have no p (CoLA at the small lr: zero difference on every seed) counted as p = 1."""
    from experiments.round2.report import _pairs
    logs = read_logs(REPO / "logs" / "round2")
    summaries = with_variant(load_summaries(logs))
    pairs, _ = _pairs(summaries, round2.selected_lrs(load_runs(logs)))
    assert len(pairs) == round2.MAIN_TESTS == 6 * 2 * 2 * len(round2.TASKS)
    assert pairs["p"].isna().sum() == 8 and set(pairs.loc[pairs["p"].isna(), "task"]) == {"cola"}
    assert pairs["p_holm"].notna().sum() == 40
    ok = pairs["p"].notna()
    assert (pairs.loc[ok, "p_holm"] >= pairs.loc[ok, "p_holm_defined"] - 1e-12).all()
    # the audit's numbers at m = 48: CoLA svd − random 0.054, MRPC grad − random 0.058 (final, chosen lrs)
    final = pairs[(pairs["part"] == "selected") & (pairs["which"] == "final") & (pairs["b"] == "random")]
    p48 = {(t, a): p for t, a, p in zip(final["task"], final["a"], final["p_holm"])}
    assert (round(p48[("cola", "svd")], 3), round(p48[("mrpc", "grad")], 3)) == (0.054, 0.058)
    kept = pairs[pairs["p_holm"] < 0.05]  # on the final metric only CoLA pissa − svd; on the best, svd − random too
    assert set(zip(kept["task"], kept["a"], kept["b"], kept["which"])) == {
        ("cola", "pissa", "svd", "final"), ("cola", "pissa", "svd", "best"), ("cola", "svd", "random", "best")}


def test_holm_is_the_step_down_of_the_whole_family():
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.slow
def test_plot_round2_writes_the_figures_and_rings_the_chosen_lr(round2_logs, tmp_path):
    names = {p.name for p in round2_figures.main(round2_logs, tmp_path / "imgs")}
    assert {"mrpc_lr_sensitivity.png", "mrpc_selected_lr_history.png", "round2.md"} <= names
    runs = load_runs(round2_logs)
    fig = round2_figures.lr_sensitivity_figure(runs, "mrpc", round2.selected_lrs(runs), majority_metrics(round2_logs))
    rings = [ln for ln in fig.axes[0].lines if ln.get_markersize() == 14]
    assert sorted(float(ln.get_xdata()[0]) for ln in rings) == pytest.approx([1.7e-3, 7e-3])
    figures.plt.close(fig)


@pytest.mark.slow  # over ~5 s on 2 cores
def test_show_round2_draws_one_task(round2_logs, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    round2_figures.show(round2_logs, "mrpc")
    kinds = [type(o).__name__ for o in shown]
    assert kinds.count("Image") == 2 and kinds[-1] == "Markdown"
    assert "### MRPC" in shown[-1].data and "### CoLA" not in shown[-1].data
    with pytest.raises(plots.NoRunsError, match="cola"):
        round2_figures.show(round2_logs, "cola")


def test_train_ready_runs_what_the_selection_allows(round2_logs, monkeypatch):
    trained = []

    def fake_run(cfg):  # stands in for utils.train.run_experiment: writes a finished log
        trained.append(cfg)
        write_json_atomic(_log(cfg.method, cfg.init, cfg.lr, cfg.seed, 0.6, 0.6, task=cfg.task), cfg.log_path)

    monkeypatch.setattr("utils.train.run_experiment", fake_run)
    assert round2_plan.train_ready(round2_logs / "none", tasks=["rte"]) == 0  # no MRPC grid: RTE waits
    assert round2_plan.train_ready(round2_logs, tasks=["rte"]) == 2
    assert {(c.method, c.lr, c.seed, c.epochs) for c in trained} == {("full", 5e-5, 0, 6), ("head", 5e-3, 0, 6)}
    assert round2_plan.train_ready(round2_logs, tasks=["rte"]) == 0  # finished: only reads the logs
    states = [s for s, _ in round2_plan.run_states(round2_logs, tasks=["rte"])]
    assert states == ["finished", "finished"]


def test_run_states_sees_live_locks_and_takes_over_stale_ones(round2_logs):
    dead = dead_pid()
    _, first = next((s, c) for s, c in round2_plan.run_states(round2_logs) if s == "ready")
    lock = first.log_path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for pid, state in ((os.getpid(), "running"), (dead, "ready")):
        lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        assert dict((c.run_id, s) for s, c in round2_plan.run_states(round2_logs) if c)[first.run_id] == state


def test_convergence_compares_the_last_two_epochs_on_holdout(round2_logs):
    runs = load_runs(round2_logs)
    conv = round2.convergence(runs, round2.selected_lrs(runs)).set_index(["method", "init"])
    # seed 0 (the grid run): holdout 0.85 in the last epoch, 0.84 in the one before; seeds 1, 2: 0.80 and 0.79
    assert conv.loc[("lora-fa", "svd"), "last"] == pytest.approx((0.85 + 0.8 + 0.8) / 3)
    assert conv.loc[("lora-fa", "svd"), "last"] - conv.loc[("lora-fa", "svd"), "previous"] == pytest.approx(0.01)
    assert not conv["converged"].any()  # 0.01 > MRPC's 0.005
    loose = runs.assign(**{"holdout_f1": runs["holdout_f1"].where(runs["epoch"] > 5, runs["holdout_f1"] + 0.006)})
    assert round2.convergence(loose, round2.selected_lrs(runs))["converged"].all()  # |−0.004| <= 0.005


def _mrpc_step3(finals: dict, full=0.872, lr=1e-3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summaries, selected) of MRPC step 3: each init of `finals` (its final dev F1 per seed 0-2) and
    full fine-tuning (`full` on seeds 0-2), every series at `lr`."""
    rows = [{"task": "mrpc", "status": "finished", "method": "lora-fa", "init": init, "rank": 4, "lr": lr,
             "seed": s, "final_f1": f} for init, fs in finals.items() for s, f in enumerate(fs)]
    rows += [{"task": "mrpc", "status": "finished", "method": "full", "init": "none", "rank": 0, "lr": lr,
              "seed": s, "final_f1": full} for s in range(3)]
    selected = pd.DataFrame([{"task": "mrpc", "method": m, "init": i, "rank": r, "lr": lr}
                             for m, i, r in {(x["method"], x["init"], x["rank"]) for x in rows}])
    return pd.DataFrame(rows), selected


@pytest.mark.parametrize("pissa, added", [
    ((0.85, 0.86, 0.84), [("mrpc", "random"), ("mrpc", "pissa")]),  # best pissa: share (0.85 - 0.812) / 0.06 = 0.63
    ((0.82, 0.83, 0.81), [("mrpc", "random")]),  # best random (0.84): added once
    ((0.87, 0.866, 0.87), []),  # best pissa at share (0.8687 - 0.812) / 0.06 = 0.94: the goal is met
])
def test_mrpc_rank16_row_follows_amendment_2(pissa, added):
    finals = {init: (0.84, 0.84, 0.84) if init == "random" else (0.80, 0.81, 0.82) for init in round2.COMPARED_INITS}
    summaries, selected = _mrpc_step3({**finals, "pissa": pissa})
    majority = {"mrpc": {"f1": 0.812}}
    assert round2_plan.limit_row(summaries, selected, majority) == [*round2.LIMIT_ROW, *added]
    # undecided while any of those runs is unfinished: the row stays CoLA's
    for drop in (summaries.index[-1], summaries.index[0]):  # full fine-tuning's seed 2; random's seed 0
        running = summaries.assign(status=["running" if k == drop else "finished" for k in summaries.index])
        assert round2_plan.limit_row(running, selected, majority) == list(round2.LIMIT_ROW)
    plan = round2.planned_runs(round2_plan.limit_row(summaries, selected, majority))
    r16 = [row for row in plan if row[0] == "mrpc" and row[5] == round2.LIMIT_RANK]
    assert len(r16) == 5 * len(added) and {row[2] for row in r16} == {init for _, init in added}
    if added:  # after CoLA's rank-16 row, before step 3's seeds 3-4
        cola_r16 = max(k for k, row in enumerate(plan) if row[0] == "cola" and row[5] == round2.LIMIT_RANK)
        seed3 = min(k for k, row in enumerate(plan) if row[4] == 3)
        assert cola_r16 < plan.index(r16[0]) and plan.index(r16[-1]) < seed3


def test_series_gain_an_mrpc_rank16_row_once_its_runs_exist():
    runs = pd.DataFrame({"task": ["mrpc", "mrpc"], "method": ["lora-fa"] * 2, "init": ["pissa", "random"],
                         "rank": [16, 4]})
    extra = set(round2.series(runs)) - set(round2.series())
    assert extra == {("mrpc", "lora-fa", "pissa", 16)}


def test_ceiling_ratio_is_the_best_inits_share_of_full_fine_tunings_gain():
    finals = {init: (0.84, 0.85, 0.83) if init == "eva" else (0.82, 0.82, 0.82) for init in round2.COMPARED_INITS}
    summaries, selected = _mrpc_step3(finals, full=0.872)
    best, share = round2_plan.ceiling_ratio(summaries, selected, "mrpc", 0.812)
    assert best == "eva" and share == pytest.approx((0.84 - 0.812) / (0.872 - 0.812))
    # over seeds 0-1 only: eva's mean is 0.845
    assert round2_plan.ceiling_ratio(summaries, selected, "mrpc", 0.812, seeds=(0, 1))[1] == pytest.approx(0.033 / 0.06)
    assert round2_plan.ceiling_ratio(summaries, selected, "mrpc", 0.812, seeds=(0, 1, 2, 3)) == (None, pytest.approx(np.nan, nan_ok=True))
    without_grad = summaries[summaries["init"] != "grad"]
    assert round2_plan.ceiling_ratio(without_grad, selected, "mrpc", 0.812)[0] is None


@pytest.mark.slow
def test_report_states_the_ceiling_ratio_once_every_init_has_runs(round2_logs):
    md = round2_report(load_runs(round2_logs), load_summaries(round2_logs), {"mrpc": {"f1": 0.812}})
    assert "Ceiling ratio" not in md  # pissa, milora, eva and grad have no runs
    for init in ("pissa", "milora", "eva", "grad"):  # holdout peaks at 1.7e-3 (svd's); dev 0.86 there
        for lr in round2.LORA_LRS:
            log = _log("lora-fa", init, lr, 0, 0.86 if np.isclose(lr, 1.7e-3) else 0.8, _holdout("svd", lr))
            write_json_atomic(log, round2_logs / "mrpc" / f"{log['run_id']}.json")
    md = round2_report(load_runs(round2_logs), load_summaries(round2_logs), {"mrpc": {"f1": 0.812}})
    share = (0.86 - 0.812) / (0.87 - 0.812)  # pissa (the first of the tied inits), seed 0 against full FT's seed 0
    assert f"`pissa`, {share:.2f} of full fine-tuning's gain over the majority class; the goal of 90% is not met" in md


def _rte_70_30(root):
    """An RTE folder whose train has 70 `entailment` rows and 30 `not_entailment` (dev: 4 rows)."""
    (root / "RTE").mkdir(parents=True)
    head = "index\tsentence1\tsentence2\tlabel\n"
    rows = ["entailment"] * 70 + ["not_entailment"] * 30
    (root / "RTE" / "train.tsv").write_text(head + "".join(f"{i}\ta b .\tc d .\t{y}\n" for i, y in enumerate(rows)))
    (root / "RTE" / "dev.tsv").write_text(head + "".join(f"{i}\ta .\tb .\t{y}\n" for i, y in enumerate(rows[::25])))
    return root


@pytest.mark.parametrize("holdout_acc, verdict", [(0.76, "passes"), (0.74, "fails")])
def test_rte_gate_compares_full_fine_tuning_with_the_holdouts_majority_class(round2_logs, tmp_path, monkeypatch,
                                                                             holdout_acc, verdict):
    """10 % of 70/30 rows held out, stratified: 7 + 3, so the majority class scores 0.7 on holdout by hand;
    the rule asks for 5 points above it."""
    from utils.stats import holdout_majority
    glue = _rte_70_30(tmp_path / "glue")
    assert holdout_majority("rte", 0.1, glue) == {"accuracy": pytest.approx(0.7)}
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr("utils.glue.SHARED_GLUE", tmp_path / "no_shared_glue")
    assert holdout_majority("rte", 0.1) is None  # no local data: no hub call from a report
    log = _log("full", "none", 5e-5, 0, 0.6, 0.0, task="rte")  # MRPC's chosen full-FT lr in the fixture
    log["summary"]["holdout"]["final"]["accuracy"] = holdout_acc  # the final evaluation's (history[-1])
    write_json_atomic(log, round2_logs / "rte" / f"{log['run_id']}.json")
    monkeypatch.setenv("GLUE_DIR", str(glue))
    md = round2_report(load_runs(round2_logs), load_summaries(round2_logs), {"mrpc": {"f1": 0.812}})
    points = 100 * (holdout_acc - 0.7)
    assert (f"full fine-tuning ends at holdout accuracy {holdout_acc:.3f} against the holdout's majority class "
            f"0.700 ({points:+.1f} points; the rule asks for +5): it {verdict}") in md
