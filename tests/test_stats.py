"""utils.stats: the paired test, steps to target, majority baselines and the report, against hand
computations (synthetic logs and tables in tmp_path)."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_plots import SEEDS, fake_log, log_dir  # noqa: F401 (fixture)
from utils import stats
from utils.logs import write_json_atomic
from utils.runlog import predictions_path, save_predictions


def _summaries(svd, random, lr=1e-4):
    rows = [dict(run_id=f"{i}{s}", task="mrpc", model="minilm", method="lora-fa", init=i, rank=4, lr=lr,
                 seed=s, final_f1=v, best_f1=v + 0.01, final_accuracy=v - 0.1)
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


def test_fmt_p_never_prints_zero():
    assert [stats.fmt_p(p) for p in (0.0004, 0.0005, 0.0123, 1.0, math.nan)] == ["<0.001", "0.001", "0.012", "1.000", "–"]


def test_holm_matches_hand_computation():
    # m = 4 non-NaN tests; sorted 0.01, 0.03, 0.04, 0.5 scale by 4, 3, 2, 1 -> 0.04, 0.09, 0.08, 0.5,
    # and the running maximum lifts 0.08 to 0.09
    out = stats.holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert out[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(out[3]) and out[4] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 2 · 0.6 clipped at 1, then the maximum
    assert stats.holm([0.2]) == pytest.approx([0.2]) and stats.holm([]).shape == (0,)


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
            rows.append(dict(run_id=init, task="mrpc", model="minilm", method="lora-fa", init=init, rank=4,
                             lr=1e-4, seed=0, step=step, f1=v))
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
    out = stats.compute_table(df).set_index("method")
    assert out.loc["lora-fa", "runs"] == 2 and out.loc["lora-fa", "total hours"] == "0.5"  # 30 min
    assert out.loc["head", "minutes per run (median, range)"] == "40 (30–50)"
    assert out.loc["head", "total hours"] == "2.0"


def test_report_has_every_section(log_dir):  # noqa: F811
    md = stats.report(log_dir)
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
    md = stats.report(log_dir)
    assert "| seed − random | 0.0001 | final | 3 |" in md and "| seed − random | 0.0001 | best | 3 |" in md
    assert "| seed − random | 0.001 |" not in md
    assert "adjusted over all 14 paired tests" in md


def test_majority_level_is_drawn_on_metric_panels_only(log_dir):  # noqa: F811
    from utils import plots
    from utils.logs import load_runs

    runs = load_runs(log_dir)
    fig = plots.plot_histories(runs, "mrpc", lr=1e-4, majority={"mrpc": {"f1": 0.8123, "accuracy": 0.6838}})
    levels = {ax.get_title(): [ln.get_ydata()[0] for ln in ax.lines if ln.get_label() == "majority class"]
              for ax in fig.axes if ax.get_title()}
    assert levels == {"train loss": [], "dev loss": [], "dev F1": [0.8123], "dev accuracy": [0.6838]}
    # the figure style applies to the whole figure (plot_histories runs inside plt.rc_context(STYLE))
    assert {ax.xaxis.label.get_fontsize() for ax in fig.axes if ax.get_title()} == {plots.STYLE["font.size"]}
    plots.plt.close(fig)
