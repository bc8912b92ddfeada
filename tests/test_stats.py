"""utils.stats: the paired test, steps to target, majority baselines and the report, against hand
computations (synthetic logs and tables in tmp_path)."""
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from experiments.round1 import report as round1
from tests.test_plots import SEEDS, fake_log, log_dir  # noqa: F401 (fixture)
from utils import report, stats
from utils.logs import load_summaries, predictions_path, write_json_atomic
from utils.record import save_predictions


def _summaries(svd, random, lr=1e-4):
    rows = [{"run_id": f"{i}{s}", "task": "mrpc", "model": "minilm", "method": "lora-fa", "init": i, "rank": 4, "lr": lr,
                 "seed": s, "final_f1": v, "best_f1": v + 0.01, "final_accuracy": v - 0.1}
            for i, vals in (("svd", svd), ("random", random)) for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_paired_comparison_matches_hand_computation():
    # differences 0.02, 0.02, 0.04: mean 0.02667, sd 0.011547, t = 4 with 2 degrees of freedom,
    # where the two-sided p-value has the closed form 1 - t / sqrt(2 + t^2) = 0.057191
    out = stats.paired_comparison(_summaries([0.80, 0.82, 0.85], [0.78, 0.80, 0.81]))
    row = out.iloc[0]
    assert (row["a"], row["b"], row["metric"], row["n"], row["wins"]) == ("svd", "random", "f1", 3, 3)
    assert row["diff"] == pytest.approx(0.08 / 3)
    assert row["p"] == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-6)
    half = 4.302652729911275 * (0.02 / math.sqrt(3)) / math.sqrt(3)  # t_0.975(2) * sd / sqrt(n)
    assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((0.08 / 3 - half, 0.08 / 3 + half))
    best = stats.paired_comparison(_summaries([0.80, 0.82, 0.85], [0.78, 0.80, 0.81]), which="best").iloc[0]
    assert best["diff"] == pytest.approx(0.08 / 3) and best["mean_a"] == pytest.approx(0.8333333)


def test_paired_comparison_pairs_by_seed_and_skips_unpaired():
    df = _summaries([0.8, 0.9], [0.7, 0.6, 0.5])  # random has a seed 2 that svd lacks
    row = stats.paired_comparison(df).iloc[0]
    assert row["n"] == 2 and row["diff"] == pytest.approx(0.2) and row["mean_b"] == pytest.approx(0.65)
    assert stats.paired_comparison(df[df["init"] == "svd"]).empty
    assert stats.paired_comparison(df.iloc[:0]).empty  # no rows at all (no series chosen yet): empty, no error


def test_a_difference_equal_on_every_seed_has_no_p_however_it_rounds():
    """3 more RTE dev examples right on every seed: the spread of the differences is zero, t is undefined,
    and p is NaN whether the floats round to an exact zero spread or (as here) to 1e-17."""
    svd, random = [150 / 277, 160 / 277, 170 / 277], [147 / 277, 157 / 277, 167 / 277]
    diff = np.subtract(svd, random)
    assert 0 < diff.std(ddof=1) < 1e-15  # the floats do not round to an exact zero spread
    for a, b in ((svd, random), ([0.8, 0.9, 0.7], [0.7, 0.8, 0.6]), ([0.5, 0.6], [0.5, 0.6])):
        row = stats.paired_comparison(_summaries(a, b)).iloc[0]
        assert math.isnan(row["p"]) and row["wins"] in (0, len(a))
    assert row["diff"] == 0 and stats.holm([row["p"], 0.01], m=2)[1] == pytest.approx(0.02)
    tiny = stats.paired_comparison(_summaries([0.80, 0.81, 0.83], [0.80, 0.80, 0.80])).iloc[0]
    assert tiny["p"] == pytest.approx(scipy_stats.ttest_rel([0.80, 0.81, 0.83], [0.8] * 3).pvalue)  # real spread: a p


def test_fmt_p_never_prints_zero():
    assert [report.fmt_p(p) for p in (0.0004, 0.0005, 0.0123, 1.0, math.nan)] == ["<0.001", "0.001", "0.012", "1.000", "–"]


def test_holm_matches_hand_computation():
    # m = 4 non-NaN tests; sorted 0.01, 0.03, 0.04, 0.5 scale by 4, 3, 2, 1 -> 0.04, 0.09, 0.08, 0.5,
    # and the running maximum lifts 0.08 to 0.09
    out = stats.holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert out[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(out[3]) and out[4] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 2 · 0.6 clipped at 1, then the maximum
    assert stats.holm([0.2]) == pytest.approx([0.2]) and stats.holm([]).shape == (0,)
    # registered m = 6: the NaN and one test never run count as p = 1; factors 6, 5, 4, 3 -> 0.06, 0.15, 0.16, 1
    out = stats.holm([0.01, 0.04, 0.03, math.nan, 0.5], m=6)
    assert out[:3] == pytest.approx([0.06, 0.16, 0.15]) and math.isnan(out[3]) and out[4] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="5 tests, more than the registered m = 4"):
        stats.holm([0.1] * 5, m=4)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_and_between_p_and_bonferroni(ps):
    adj = stats.holm(ps)
    p = np.asarray(ps)
    assert np.all(adj >= p - 1e-12) and np.all(adj <= np.minimum(1, len(p) * p) + 1e-12)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-12)  # a smaller p never gets a larger adjusted p


def test_steps_to_target_uses_the_majority_baseline():
    # majority F1 0.8, best mean of best = 0.9 (svd): target = 0.8 + 0.9 * 0.1 = 0.89
    rows = []
    for init, curve in (("svd", [0.80, 0.89, 0.90]), ("random", [0.80, 0.85, 0.88])):
        for step, v in zip((10, 20, 30), curve):
            rows.append({"run_id": init, "task": "mrpc", "model": "minilm", "method": "lora-fa", "init": init, "rank": 4,
                             "lr": 1e-4, "seed": 0, "step": step, "f1": v})
    out = stats.steps_to_target(pd.DataFrame(rows), {"mrpc": {"f1": 0.8}}, frac=0.9).set_index("init")
    assert out.loc["svd", "target"] == pytest.approx(0.89)
    assert out.loc["svd", "step"] == 20 and math.isnan(out.loc["random", "step"])
    # nothing beats a majority level of 0.95: no target, nobody "reaches" it
    out = stats.steps_to_target(pd.DataFrame(rows), {"mrpc": {"f1": 0.95}}, frac=0.9)
    assert out["target"].isna().all() and out["step"].isna().all()
    # without a baseline m0 = 0: target 0.81, reached at the second evaluation by both
    out = stats.steps_to_target(pd.DataFrame(rows), {}, frac=0.9).set_index("init")
    assert out["step"].tolist() == [20.0, 20.0]


def test_majority_metrics_from_stored_labels(tmp_path):
    log = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)
    path = tmp_path / "mrpc" / f"{log['run_id']}.json"
    write_json_atomic(log, path)
    save_predictions(predictions_path(path), 30, {"dev": (np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1]))})
    base = stats.majority_metrics(tmp_path)
    assert base == {"mrpc": pytest.approx({"accuracy": 0.75, "f1": 2 * 0.75 / 1.75})}


def test_compute_table_sums_logged_wall_time():
    df = _summaries([0.8, 0.9], [0.7, 0.6, 0.5]).assign(wall_time_s=[600.0, 1200.0, 1800.0, 2400.0, 3000.0])
    df.loc[df["init"] == "random", "method"] = "head"
    out = report.compute_table(df).set_index("method")
    assert out.loc["lora-fa", "runs"] == 2 and out.loc["lora-fa", "total hours"] == "0.5"  # 30 min
    assert out.loc["head", "minutes per run (median, range)"] == "40 (30–50)"
    assert out.loc["head", "total hours"] == "2.0"
    smoke = report.compute_table(df.assign(wall_time_s=[40.0, 60.0, 1.0, 1.0, 1.0])).set_index("method")
    assert smoke.loc["lora-fa", "total hours"] == "< 0.1 (1.7 min)"  # not "0.0"


def test_report_and_summary_of_a_one_seed_run_say_what_is_true(tmp_path):
    log = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)
    write_json_atomic(log, tmp_path / "mrpc" / f"{log['run_id']}.json")
    md = round1.report(tmp_path)
    assert "0 paired tests" not in md and "no paired tests in this report: a test needs ≥ 2 seeds" in md
    text = report.format_summary(stats.summarize(tmp_path))
    assert text.splitlines()[0].split().count("seeds") == 1 and "seeds (n)" in text.splitlines()[0]
    assert "0 (1)" in text.splitlines()[1]


def test_report_has_every_section(log_dir):  # noqa: F811
    md = round1.report(log_dir)
    assert "### MRPC (f1;" in md and "### RTE (accuracy;" in md
    assert md.count("Paired comparisons (same seeds)") == 2  # MRPC and RTE both have svd and random
    assert "| svd − random | 0.0001 | final | 3 |" in md and "| pissa − random | 0.001 | best | 3 |" in md
    assert "Steps to reach 90%" in md and "95% CI (final)" in md and "### Compute" in md
    assert "| pissa − svd | 0.0001 | final | 3 |" in md  # the start-shift contrast
    # one Holm family over every paired test with n >= 2 (RTE has 1 seed): MRPC's 2 lrs x 3 contrasts
    # (svd − random, pissa − random, pissa − svd) x final/best
    assert "adjusted over all 12 paired tests" in md and "| p | p (Holm) | seeds won |" in md
    assert "seed − random" not in md  # no seed-init runs, no row


def test_report_adds_seed_contrast_to_the_holm_family(log_dir):  # noqa: F811
    for s in SEEDS:  # the original factorization, small lr only (as in the grid)
        log = fake_log("mrpc", "lora-fa", "seed", 1e-4, s)
        write_json_atomic(log, log_dir / "mrpc" / f"{log['run_id']}.json")
    md = round1.report(log_dir)
    assert "| seed − random | 0.0001 | final | 3 |" in md and "| seed − random | 0.0001 | best | 3 |" in md
    assert "| seed − random | 0.001 |" not in md
    assert "adjusted over all 14 paired tests" in md


def test_majority_level_is_drawn_on_metric_panels_only(log_dir):  # noqa: F811
    from utils import figures
    from utils.logs import load_runs

    runs = load_runs(log_dir)
    fig = figures.plot_histories(runs, "mrpc", lr=1e-4, majority={"mrpc": {"f1": 0.8123, "accuracy": 0.6838}})
    levels = {ax.get_title(): [ln.get_ydata()[0] for ln in ax.lines if ln.get_label() == "majority class"]
              for ax in fig.axes if ax.get_title()}
    assert levels == {"train loss": [], "dev loss": [], "dev F1": [0.8123], "dev accuracy": [0.6838]}
    # the figure style applies to the whole figure (plot_histories runs inside plt.rc_context(STYLE))
    assert {ax.xaxis.label.get_fontsize() for ax in fig.axes if ax.get_title()} == {figures.STYLE["font.size"]}
    figures.plt.close(fig)


# ------------------------------------------------------------------ one grouping: the README's quick start

def _real_log(cfg, f1, legacy=False):
    """A finished log with the real schema of `cfg` (a RunConfig); `legacy`: written before the fields of
    LEGACY_DEFAULTS existed (the committed logs)."""
    from utils.config import LEGACY_DEFAULTS
    from utils.record import summary

    cfg = cfg.canonical()
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if not (legacy and k in LEGACY_DEFAULTS)}
    history = [{"step": s, "epoch": s / 100, "train_loss": 0.5, "lr": cfg.lr, "dev_loss": 0.4,
                "metrics": {"accuracy": f1 - 0.1, "f1": f1 - 0.01 * (s == 20)}, "time_s": float(s)} for s in (20, 40)]
    return {"schema": 1, "run_id": cfg.run_id, "status": "finished", "error": None, "env": {},
            "config": {**config, "main_metric": "f1"}, "history": history, "train_loss": [],
            "summary": summary(history, steps=40, wall_time_s=1.0)}


@pytest.fixture
def quickstart_logs(tmp_path):
    """logs/: three 3-epoch MRPC runs per init at lr 5e-3 (old logs, eval every 25); logs/quickstart/:
    the README's quick start (60 steps, eval every 20, seed 0, today's defaults) of the same cells."""
    from utils.config import RunConfig

    root = tmp_path / "logs"
    for init in ("random", "svd"):
        for seed in (0, 1, 2):
            cfg = RunConfig(task="mrpc", model="minilm", init=init, lr=5e-3, seed=seed, eval_every=25)
            log = _real_log(cfg, 0.83 + 0.01 * seed, legacy=True)
            write_json_atomic(log, root / "mrpc" / f"{log['run_id']}.json")
        cfg = RunConfig(task="mrpc", model="minilm", init=init, lr=5e-3, max_steps=60, eval_every=20, seed=0,
                        log_dir=str(root / "quickstart"))
        write_json_atomic(_real_log(cfg, 0.70), cfg.log_path)
    return root


QUICKSTART = "max_steps=60, group_by_length=True, eval_every=20"  # every setting it differs in, RunConfig order


def test_quick_start_runs_are_never_averaged_with_the_grid(quickstart_logs, capsys):
    import run_glue

    assert run_glue.main(["summary", "--log-dir", str(quickstart_logs)]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert lines[0].split()[6:10] == ["variant", "metric", "seeds", "(n)"] and len(lines) == 5
    for init in ("random", "svd"):  # the three 3-epoch runs, and apart from them the 60-step run
        assert f"mrpc minilm lora-fa {init} 4 0.005 main f1 0 1 2 (3) 0.8400 ± 0.0100 0.8400 ± 0.0100" in lines
        assert f"mrpc minilm lora-fa {init} 4 0.005 {QUICKSTART} f1 0 (1) 0.7000 0.7000" in lines
    table = stats.summarize(quickstart_logs).set_index(["init", "variant"])
    assert table.loc[("random", ""), "n"] == 3 and table.loc[("random", ""), "seeds"] == "0 1 2"
    assert table.loc[("random", QUICKSTART), "final_mean"] == pytest.approx(0.70)


@pytest.mark.slow
def test_report_figures_and_tables_use_the_same_grouping(quickstart_logs, tmp_path):
    from experiments.round1 import figures as round1_figures

    round1_figures.main(quickstart_logs, tmp_path / "imgs")
    summary = (tmp_path / "imgs" / "summary.md").read_text()
    assert f"| mrpc | minilm | lora-fa | random | 4 | 0.005 | {QUICKSTART} | f1 | 1 |" in summary
    assert "| mrpc | minilm | lora-fa | random | 4 | 0.005 | main | f1 | 3 |" in summary
    results = (tmp_path / "imgs" / "results.md").read_text()
    assert "| svd − random | 0.005 | final | 3 |" in results  # paired within the main runs only
    assert "| svd − random | 0.005 | final | 1 |" in results  # and within the quick start
    pngs = sorted(p.name for p in (tmp_path / "imgs").glob("mrpc_*history.png"))
    assert pngs == ["mrpc_minilm_r4_lr0.005_history.png",
                    "mrpc_minilm_r4_lr0.005_max_steps=60_group_by_length=True_eval_every=20_history.png"]


def test_variant_names_every_differing_setting_and_old_logs_form_one_group(quickstart_logs):
    from utils.logs import load_summaries

    df = stats.add_variant(load_summaries(quickstart_logs))
    old = df[df["max_steps"].isna()]
    assert len(old) == 6 and set(old["variant"]) == {""}  # missing fields at their legacy value, not NaN
    assert set(df[df["max_steps"] == 60]["variant"]) == {QUICKSTART}
    # a head-only run ignores adapter settings; another alpha on an adapter run is its own variant
    extra = df.iloc[:2].assign(run_id=["h", "a"], method=["head", "lora-fa"], init=["none", "random"],
                               alpha=[None, 8.0], seed=[5, 5])
    out = stats.add_variant(pd.concat([df, extra], ignore_index=True)).set_index("run_id")["variant"]
    assert out["h"] == "" and out["a"] == "alpha=8"


def test_grouping_uses_every_result_changing_field():
    from utils.config import LEGACY_DEFAULTS, NAME_FIELDS, UNHASHED_FIELDS, RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(NAME_FIELDS) - set(UNHASHED_FIELDS)
    assert set(stats.SETTINGS) == fields
    assert {"max_steps", "epochs", "eval_every", "holdout", "group_by_length", "init_batches", "batch_size"} <= fields
    assert "threads" not in fields and set(LEGACY_DEFAULTS) - {"threads"} <= fields


def test_select_lr_uses_the_last_epoch_on_holdout_only():
    from utils.selection import select_lr

    rows = []
    # (lr: holdout F1 per evaluation at epochs 0.5..2, dev F1): 1e-3 peaks early, 1e-2 ends best on
    # holdout, 1e-1 ends best on dev (never consulted)
    curves = {1e-3: ([0.85, 0.80, 0.80, 0.79], 0.80), 1e-2: ([0.70, 0.78, 0.82, 0.83], 0.81),
              1e-1: ([0.70, 0.75, 0.81, 0.80], 0.90)}
    for lr, (held, dev) in curves.items():
        for i, h in enumerate(held):
            rows.append({"task": "mrpc", "method": "lora-fa", "init": "svd", "seed": 0, "epochs": 2, "lr": lr,
                         "step": 10 * (i + 1), "epoch": 0.5 * (i + 1), "holdout_f1": h, "f1": dev})
    runs = pd.DataFrame(rows)
    lr, table = select_lr(runs, "mrpc", "svd", [1e-3, 1e-2, 1e-1])
    assert lr == 1e-2 and table["score"].tolist() == pytest.approx([0.795, 0.825, 0.805])
    assert table["evaluations"].tolist() == [2, 2, 2]  # epochs 1.5 and 2: the last epoch
    tie = runs.assign(holdout_f1=0.8)
    assert select_lr(tie, "mrpc", "svd", [1e-2, 1e-3])[0] == 1e-3  # ties: the smaller lr
    with pytest.raises(ValueError, match="lr 0.3"):
        select_lr(runs, "mrpc", "svd", [1e-3, 0.3])
    with pytest.raises(ValueError, match="random"):
        select_lr(runs, "mrpc", "random", [1e-3])
    with pytest.raises(ValueError, match="3 epochs"):
        select_lr(runs, "mrpc", "svd", [1e-3], epochs=3)


def _f1_log(seed, init, f1, best, status="finished"):
    """`fake_log`'s MRPC run with the given final and best dev F1 and status."""
    log = fake_log("mrpc", "lora-fa", init, 1e-4, seed)
    log["summary"]["final"]["f1"], log["summary"]["best"]["f1"]["value"], log["status"] = f1, best, status
    return log


def test_summarize_mean_and_std_over_seeds(tmp_path):
    logs = [_f1_log(0, "svd", 0.80, 0.82), _f1_log(1, "svd", 0.84, 0.86), _f1_log(0, "random", 0.70, 0.71),
            _f1_log(1, "random", 0.1, 0.1, status="failed")]
    df = stats.summarize(logs)
    assert list(df["init"]) == ["random", "svd"] and list(df["n"]) == [1, 2]
    svd = df[df["init"] == "svd"].iloc[0]
    assert svd["final_mean"] == pytest.approx(0.82) and svd["final_std"] == pytest.approx(np.std([0.8, 0.84], ddof=1))
    assert svd["best_mean"] == pytest.approx(0.84) and svd["seeds"] == "0 1"
    text = report.format_summary(df)
    assert "0.8200 ± 0.0283" in text and "0.7000" in text
    for log in logs:  # the same from a log folder
        (tmp_path / f"{log['run_id']}.json").write_text(json.dumps(log))
    pd_from_dir = stats.summarize(str(tmp_path))
    assert pd_from_dir.equals(stats.summarize(load_summaries(tmp_path)))
    assert list(pd_from_dir["final_mean"]) == pytest.approx(list(df["final_mean"]))
