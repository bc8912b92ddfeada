"""Round 3's report (experiments/round3/report.py) on hand-made logs: each series is read at the lr it
chose on holdout, the family is the registered 9 tests (Holm over m = 9, missing tests as p = 1), pairs
are the seeds both series finished, and the numbers match scipy and a hand computation."""
import dataclasses
import math

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from scipy import stats

from experiments.round3 import plan
from experiments.round3 import report as r3
from tests.runner_helpers import glue_dir  # noqa: F401 (fixture)
from utils.logs import SCHEMA, load_runs, load_summaries, predictions_path, read_logs, write_json_atomic
from utils.record import save_predictions
from utils.stats import one_class_runs

# CoLA, seed 0's holdout MCC per lr (the grid) and the final dev MCC of every seed at the chosen lr
HOLDOUT = {"none": {2e-5: 0.50, 5e-5: 0.55}, "random": {4e-4: 0.40, 1.7e-3: 0.45, 7e-3: 0.42},
           "svd": {4e-4: 0.47, 1.7e-3: 0.44, 7e-3: 0.30}, "pissa": {4e-4: 0.41, 1.7e-3: 0.41, 7e-3: 0.20}}
CHOSEN = {"none": 5e-5, "random": 1.7e-3, "svd": 4e-4, "pissa": 4e-4}  # pissa: a tie goes to the smaller lr
DEV = {"none": [0.58, 0.57, 0.59], "random": [0.44, 0.47, 0.46], "svd": [0.48, 0.47], "pissa": [0.43]}


def _log(method, init, lr, seed, dev, holdout, task="cola", metric="mcc"):
    """A finished round-3 log: one evaluation per epoch, dev and holdout `metric` ending at `dev`, `holdout`."""
    cfg = plan.run_config(task, method, init, lr, seed)
    history = [{"step": 10 * e, "epoch": float(e), "train_loss": 0.6 - 0.05 * e, "lr": lr, "dev_loss": 0.5,
                "metrics": {metric: dev - 0.01 * (plan.EPOCHS - e)},
                "holdout": {metric: holdout - 0.002 * (plan.EPOCHS - e), "loss": 0.5}, "time_s": 60.0 * e}
               for e in range(1, plan.EPOCHS + 1)]
    return {"schema": SCHEMA, "run_id": cfg.run_id, "status": "finished", "error": None,
            "config": {**dataclasses.asdict(cfg), "main_metric": metric}, "env": {}, "history": history,
            "train_loss": [], "summary": {"final": {metric: dev, "dev_loss": 0.5},
                                          "best": {metric: {"value": dev, "step": 60}},
                                          "holdout": {"final": dict(history[-1]["holdout"])}, "steps": 60,
                                          "wall_time_s": 3600.0, "peak_rss_mb": 1.0, "trainable_params": 10}}


@pytest.fixture
def round3_logs(tmp_path):
    root = tmp_path / "logs"
    for init, grid in HOLDOUT.items():
        method = "full" if init == "none" else "lora-fa"
        for lr, score in grid.items():
            dev = DEV[init][0] if lr == CHOSEN[init] else 0.30  # other lrs: dev values the report must not use
            log = _log(method, init, lr, 0, dev, score)
            write_json_atomic(log, root / "cola" / f"{log['run_id']}.json")
        for seed, dev in enumerate(DEV[init][1:], start=1):
            log = _log(method, init, CHOSEN[init], seed, dev, 0.4)
            write_json_atomic(log, root / "cola" / f"{log['run_id']}.json")
    labels = np.array([1, 1, 1, 0])  # dev labels, stored next to a log as runs do: majority class 1, MCC 0
    save_predictions(predictions_path(root / "cola" / f"{log['run_id']}.json"), 60, {"dev": (labels, labels)})
    return root


def test_each_series_is_read_at_the_lr_it_chose_on_holdout(round3_logs):
    runs = load_runs(read_logs(round3_logs))
    chosen = plan.chosen_lrs(runs)
    assert chosen == {("cola", "full" if i == "none" else "lora-fa", i): lr for i, lr in CHOSEN.items()}
    at = r3.at_chosen(load_summaries(read_logs(round3_logs)), chosen)
    for init, devs in DEV.items():
        assert sorted(at.loc[at["init"] == init, "final_mcc"]) == sorted(devs)


def test_the_family_is_the_registered_nine_with_holm_over_nine(round3_logs):
    summaries = load_summaries(read_logs(round3_logs))
    tests = r3.family_tests(summaries, plan.chosen_lrs(load_runs(read_logs(round3_logs))))
    assert list(zip(tests["task"], tests["a"], tests["b"])) == list(plan.FAMILY) and len(tests) == 9
    svd = tests.iloc[0]  # CoLA svd − random: seeds 0 and 1 (svd has no seed 2)
    a, b = np.array(DEV["svd"]), np.array(DEV["random"][:2])
    p = stats.ttest_rel(a, b).pvalue
    assert svd["n"] == 2 and svd["diff"] == pytest.approx((a - b).mean()) and svd["p"] == pytest.approx(p)
    assert svd["p_holm"] == pytest.approx(min(1.0, 9 * p))  # the one defined test, the other 8 count as p = 1
    pissa = tests.iloc[1]  # one pair: a difference but no test
    assert pissa["n"] == 1 and math.isnan(pissa["p"]) and math.isnan(pissa["p_holm"])
    assert (tests.iloc[2:]["n"] == 0).all() and tests.iloc[2:]["p_holm"].isna().all()


def test_the_report_shows_the_choice_the_gate_and_the_family(round3_logs, glue_dir):  # noqa: F811
    text = r3.round3_report(round3_logs, data_dir=glue_dir)
    assert "**0.450 (0.440)**" in text  # random's chosen lr: holdout score (final dev), in bold
    assert "| 0.410 (0.300) |" in text and "**0.410 (0.430)**" in text  # pissa's tie went to the smaller lr
    assert "16 of 102 planned runs finished" in text
    assert "m = 9" in text and "Gate: full fine-tuning at lr 5e-05" in text and "dev majority class 0.000" in text
    assert "No pairs yet (p = 1 in the Holm step): CoLA grad − random, RTE svd − random" in text
    series = text.split("Every series")[1].split("The registered")[0]
    assert "| svd | 0.0004 | 2 | 0.475 ± 0.007 |" in series and "| 0 1 |" in series  # seeds 0 and 1
    # share of full FT's gain over the dev majority class (MCC 0): random's mean / full FT's mean
    assert f"| {np.mean(DEV['random']) / np.mean(DEV['none']):.2f} |" in series.split("| random |")[1].split("\n")[0]


def test_runs_predicting_one_class_are_marked(round3_logs):
    labels = np.array([1, 1, 1, 0])
    flat = {("random", 1.7e-3, 1): np.ones(4, int), ("svd", 7e-3, 0): np.zeros(4, int),  # one class each
            ("svd", 4e-4, 1): np.array([1, 0, 1, 1])}  # two classes: not marked
    for (init, lr, seed), pred in flat.items():
        log_path = round3_logs / "cola" / f"{plan.run_config('cola', 'lora-fa', init, lr, seed).run_id}.json"
        save_predictions(predictions_path(log_path), 60, {"dev": (pred, labels)})
    ids = {plan.run_config("cola", "lora-fa", i, lr, s).run_id for (i, lr, s), p in flat.items() if len(set(p)) == 1}
    assert one_class_runs(round3_logs) == ids
    text = r3.round3_report(round3_logs)
    assert "| 0.300 (0.300) † |" in text and text.count("†") == 2  # svd at 7e-3, seed 0; and the legend
    series = text.split("Every series")[1].split("The registered")[0]
    assert [row.split("|")[-2].strip() for row in series.splitlines() if row.startswith("| ") and "series" not in row
            ] == ["–", "1", "–", "–"]  # full FT, random (seed 1), svd (its 7e-3 run is not the chosen lr), pissa


def test_no_finished_run_says_so(tmp_path):
    text = r3.round3_report(tmp_path / "none", data_dir=tmp_path)
    assert text.startswith("No finished round-3 run yet.") and "0 of 102 planned runs finished" in text
    assert "0.0 worker-hours logged (budget 80)" in text


def test_figures_and_page_are_written_from_the_logs(round3_logs, tmp_path):
    from experiments.round3 import figures

    written = figures.main(round3_logs, tmp_path / "imgs")
    assert sorted(p.name for p in written) == ["cola_chosen_lr_history.png", "cola_comparison.png", "round3.md",
                                               "summary.png"]
    page = (tmp_path / "imgs" / "round3.md").read_text()
    assert "CoLA: svd − random" in page and all(p.stat().st_size > 10_000 for p in written if p.suffix == ".png")
    summaries = load_summaries(read_logs(round3_logs))
    chosen = plan.chosen_lrs(load_runs(read_logs(round3_logs)))
    ax = figures.comparison_figure(summaries, chosen, "cola", {"cola": {"mcc": 0.0}}).axes[0]
    dots = [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)]  # the scatters
    assert [sorted(d) for d in dots] == [sorted(DEV[i]) for i in ("none", "random", "svd", "pissa")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full FT", "random", "svd", "pissa"]


def test_a_task_where_only_full_fine_tuning_has_finished(round3_logs, glue_dir, tmp_path):  # noqa: F811
    from experiments.round3 import figures

    log = _log("full", "none", 2e-5, 0, 0.66, 0.70, task="rte", metric="accuracy")
    write_json_atomic(log, round3_logs / "rte" / f"{log['run_id']}.json")
    rte = r3.round3_report(round3_logs, data_dir=glue_dir).split("### RTE")[1].split("###")[0]
    assert "0.700 (0.660)" in rte and "pissa − svd" not in rte  # its lr grid so far; nothing to pair yet
    assert "round3.md" in [p.name for p in figures.main(round3_logs, tmp_path / "imgs")]


def test_figures_without_runs_write_only_the_status_page(tmp_path):
    from experiments.round3 import figures

    written = figures.main(tmp_path / "none", tmp_path / "imgs")
    assert [p.name for p in written] == ["round3.md"] and "No finished round-3 run yet" in written[0].read_text()


def test_the_cut_is_named_by_series_and_seed():
    runs = plan.planned_runs()
    kinds = ["over budget" if (r[0], r[2]) == ("mrpc", "grad") and r[4] >= 1 or (r[0], r[2], r[4]) == ("rte", "svd", 0)
             else "ready" for r in runs]
    assert r3.named_cut(kinds) == "RTE svd seed 0 (3 runs); MRPC grad seeds 1, 2, 3, 4"  # rte's 3-lr grid: 3 runs
    assert r3.named_cut(["ready"] * len(runs)) == ""
