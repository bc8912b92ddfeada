"""utils.plots on synthetic run logs written into tmp_path (never into the repo's logs/)."""
import math
import zlib

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from scipy import stats

from utils import figures, plots
from utils.logs import SCHEMA, load_runs, load_summaries, write_json_atomic
from utils.report import format_table
from utils.stats import summary_table

INITS = ("random", "svd", "pissa")
LRS = (1e-4, 1e-3)
SEEDS = (0, 1, 2)
STEPS = (0, 10, 20, 30)


def fake_log(task, method, init, lr, seed, rank=4, model="minilm", rng=None):
    """A finished run log (schema 1) with noisy, improving curves; metrics follow the task."""
    rng = rng or np.random.default_rng(zlib.crc32(repr((task, method, init, lr, seed)).encode()))
    names = {"mrpc": ("accuracy", "f1"), "rte": ("accuracy",), "cola": ("mcc",)}[task]
    history = []
    for i, step in enumerate(STEPS):
        base = 0.5 + 0.1 * i + (0.05 if init == "svd" else 0) + rng.normal(0, 0.02)
        history.append({"step": step, "epoch": step / 30, "train_loss": 0.7 - 0.1 * i + rng.normal(0, 0.02),
                         "lr": lr, "dev_loss": 0.72 - 0.08 * i + rng.normal(0, 0.02),
                         "metrics": {m: base - 0.01 * k for k, m in enumerate(names)}, "time_s": float(step)})
    final = {**history[-1]["metrics"], "dev_loss": history[-1]["dev_loss"]}
    best = {m: {"value": max(h["metrics"][m] for h in history), "step": 30} for m in names}
    config = {"task": task, "model": model, "method": method, "init": init, "rank": rank,
              "alpha": 2 * rank, "lr": lr, "seed": seed, "epochs": 1, "max_steps": None,
              "batch_size": 16, "main_metric": names[-1] if task == "mrpc" else names[0]}
    run_id = f"{task}_{method}_{init}_r{rank}_lr{lr:g}_s{seed}"
    return {"schema": SCHEMA, "run_id": run_id, "status": "finished", "error": None, "config": config,
            "env": {}, "history": history, "train_loss": [],
            "summary": {"final": final, "best": best, "steps": 30, "wall_time_s": 1.0,
                        "peak_rss_mb": 1.0, "trainable_params": 10}}


@pytest.fixture
def log_dir(tmp_path):
    """MRPC: 3 inits x 2 lrs x 3 seeds (LoRA-FA, rank 4) + a head baseline; RTE: 2 inits, 1 lr, 1 seed."""
    root = tmp_path / "logs"
    logs = [fake_log("mrpc", "lora-fa", i, lr, s) for i in INITS for lr in LRS for s in SEEDS]
    logs += [fake_log("mrpc", "head", "none", lr, s, rank=0) for lr in LRS for s in SEEDS[:2]]
    logs += [fake_log("rte", "lora-fa", i, 1e-4, 0) for i in ("random", "svd")]
    failed = {**fake_log("rte", "lora-fa", "svd", 1e-3, 0), "status": "failed", "run_id": "x"}
    for log in logs + [failed]:
        write_json_atomic(log, root / log["config"]["task"] / f"{log['run_id']}.json")
    return root


@pytest.mark.slow  # over ~5 s on 2 cores
def test_main_writes_expected_files(log_dir, tmp_path):
    out = tmp_path / "imgs"
    written = plots.main(log_dir, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "mrpc_minilm_r4_lr0.0001_history.png", "mrpc_minilm_r4_lr0.001_history.png",
        "rte_minilm_r4_lr0.0001_history.png", "summary_final_metric.png", "summary_best_metric.png",
        "summary.md", "summary.csv"])
    assert sorted(p.name for p in written) == names
    md = (out / "summary.md").read_text()
    assert "| mrpc | minilm | lora-fa | svd | 4 | 0.0001 | f1 | 3 |" in md
    assert "| mrpc | minilm | head | – | – | 0.001 | f1 | 2 |" in md


def test_cli_and_empty_dir_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(plots.NoRunsError, match="no finished runs in .*empty"):
        plots.main(tmp_path / "empty", tmp_path / "imgs")
    assert plots.cli(["--log-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "imgs")]) == 1
    assert "no finished runs" in capsys.readouterr().err
    assert not (tmp_path / "imgs").exists()


def test_summary_table_matches_hand_computation(log_dir):
    summaries = load_summaries(log_dir)
    table = summary_table(summaries, metrics="all")
    row = table[(table.task == "mrpc") & (table.init == "svd") & (table.lr == 1e-3)
                & (table.metric == "f1") & (table.method == "lora-fa")]
    assert len(row) == 1
    values = [fake_log("mrpc", "lora-fa", "svd", 1e-3, s)["summary"]["final"]["f1"] for s in SEEDS]
    bests = [fake_log("mrpc", "lora-fa", "svd", 1e-3, s)["summary"]["best"]["f1"]["value"] for s in SEEDS]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    row = row.iloc[0]
    assert row.n == 3
    assert row.final_mean == pytest.approx(mean) and row.final_std == pytest.approx(std)
    assert row.best_mean == pytest.approx(np.mean(bests)) and row.best_std == pytest.approx(np.std(bests, ddof=1))
    # main metric only: F1 for MRPC, accuracy for RTE; a single seed has no std
    main = summary_table(summaries)
    assert set(main.groupby("task").metric.unique().map(tuple)) == {("f1",), ("accuracy",)}
    rte = main[main.task == "rte"]
    assert (rte.n == 1).all() and rte.final_std.isna().all()
    assert format_table(rte).iloc[0]["final (mean ± std)"].count("±") == 0


def test_band_is_the_t_interval(log_dir):
    runs = load_runs(log_dir)
    sel = runs[(runs.task == "mrpc") & (runs.init == "random") & (runs.lr == 1e-4) & (runs.method == "lora-fa")]
    curve = figures.seed_curve(sel, "f1").set_index("step")
    vals = sel[sel.step == 20]["f1"].to_numpy()
    half = stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3)
    assert curve.loc[20, "n"] == 3
    assert curve.loc[20, "lo"] == pytest.approx(vals.mean() - half)
    assert curve.loc[20, "hi"] == pytest.approx(vals.mean() + half)
    # the figure's band is that interval: the fill_between polygon spans lo..hi at step 20
    fig = figures.plot_histories(runs, "mrpc", lr=1e-4)
    f1_ax = [ax for ax in fig.axes if ax.get_ylabel() == "dev F1"][0]
    color = figures.series_style("lora-fa", "random")["color"]
    band = [c for c in f1_ax.collections if to_hex(c.get_facecolor()[0]) == color.lower()][0]
    ys = band.get_paths()[0].vertices
    at20 = ys[np.isclose(ys[:, 0], 20), 1]
    assert at20.min() == pytest.approx(vals.mean() - half) and at20.max() == pytest.approx(vals.mean() + half)
    # one seed: no band
    one = figures.seed_curve(sel[sel.seed == 0], "f1")
    assert one["lo"].isna().all()
    matplotlib.pyplot.close("all")


def test_axes_follow_the_means_and_cut_a_wide_band(log_dir, tmp_path):
    """Two seeds 0.2 apart at one step: t(1) puts their band at ±1.27 around the mean; the F1 axis still
    spans the means (and the majority level) with 15 % margins, not the band."""
    runs = load_runs(log_dir)
    runs = runs[(runs.task == "mrpc") & (runs.lr == 1e-4) & (runs.method == "lora-fa") & (runs.seed < 2)].copy()
    runs.loc[(runs.step == 20) & (runs.seed == 1), "f1"] += 0.2
    fig = figures.plot_histories(runs, "mrpc", lr=1e-4, majority={"mrpc": {"f1": 0.4}})
    f1_ax = [ax for ax in fig.axes if ax.get_ylabel() == "dev F1"][0]
    means = runs.groupby(["init", "step"])["f1"].mean()
    lo, hi = min(means.min(), 0.4), means.max()
    assert f1_ax.get_ylim() == pytest.approx((lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo)))
    band = max(c.get_paths()[0].vertices[:, 1].max() for c in f1_ax.collections)
    assert band > f1_ax.get_ylim()[1] + 0.5  # drawn, and cut at the axes
    assert "cut at the axes" in fig._suptitle.get_text()
    matplotlib.pyplot.close("all")


def test_titles_labels_and_setting_choice(log_dir):
    runs = load_runs(log_dir)
    with pytest.raises(ValueError, match="2 settings"):
        figures.plot_histories(runs, "mrpc")
    fig = figures.plot_histories(runs, "mrpc", lr=1e-3)
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "dev loss", "dev F1", "dev accuracy"]
    assert all(ax.get_xlabel() == "optimizer step" for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "cross-entropy loss"
    title = fig._suptitle.get_text()
    assert "dev" in title and "n=2–3 seeds" in title and "lr 0.001" in title
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["random (n=3)", "svd (n=3)", "pissa (n=3)", "head only (n=2)"]
    cola = figures.plot_histories(runs, "rte")
    assert cola.axes[2].get_ylabel() == "dev accuracy"
    matplotlib.pyplot.close("all")


def _line_colors(fig):
    """{legend label without "(n=..)": colour} of every legend entry in `fig`."""
    leg = fig.legends[0]
    return {t.get_text().split(" (n=")[0]: to_hex(h.get_color() if hasattr(h, "get_color") else h.lines[0].get_color())
            for t, h in zip(leg.get_texts(), leg.legend_handles)}


def test_colours_consistent_across_figures(log_dir):
    runs, summaries = load_runs(log_dir), load_summaries(log_dir)
    figs = [figures.plot_histories(runs, "mrpc", lr=1e-4), figures.plot_histories(runs, "rte"),
            figures.summary_figure(summaries)]
    seen = {}
    for fig in figs:
        for label, color in _line_colors(fig).items():
            assert seen.setdefault(label, color) == color, label
    assert seen["svd"] == figures.INIT_COLORS["svd"].lower()
    assert seen["random"] == figures.INIT_COLORS["random"].lower()
    assert len(set(seen.values())) == len(seen)  # every series its own colour
    matplotlib.pyplot.close("all")


@pytest.mark.slow
def test_runs_with_other_settings_are_not_averaged(log_dir, tmp_path):
    """Two extra svd runs with epochs=2 form their own variant: own figure, own table rows."""
    for seed in (0, 1):
        log = fake_log("mrpc", "lora-fa", "svd", 1e-4, seed)
        log["config"]["epochs"], log["run_id"] = 2, log["run_id"] + "_e2"
        write_json_atomic(log, log_dir / "mrpc" / f"{log['run_id']}.json")
    out = tmp_path / "imgs"
    names = {p.name for p in plots.main(log_dir, out)}
    assert {"mrpc_minilm_r4_lr0.0001_history.png", "mrpc_minilm_r4_lr0.0001_epochs=2_history.png"} <= names
    table = summary_table(load_summaries(log_dir))
    svd = table[(table.task == "mrpc") & (table.init == "svd") & (table.lr == 1e-4)].set_index("variant")
    assert svd.loc["", "n"] == 3 and svd.loc["epochs=2", "n"] == 2
    assert "| epochs=2 |" in (out / "summary.md").read_text()
    matplotlib.pyplot.close("all")


def test_show_task_displays_figures_and_table(log_dir, capsys):
    table = plots.show_task(log_dir, "mrpc", lr=[1e-3], init=["random", "svd"])
    assert list(table.init) == ["random", "svd", "–"] * 2  # f1 and accuracy; head baseline kept
    assert capsys.readouterr().out.count("Image object") == 2  # history + lr summary, as small PNGs
    with pytest.raises(plots.NoRunsError, match="cola"):
        plots.show_task(log_dir, "cola")


def test_single_seed_points_are_hollow_and_not_joined(log_dir):
    log = fake_log("mrpc", "lora-fa", "random", 1e-2, 0)  # a one-seed pilot next to the 3-seed lrs
    write_json_atomic(log, log_dir / "mrpc" / f"{log['run_id']}.json")
    fig = figures.summary_figure(load_summaries(log_dir))
    ax = next(a for a in fig.axes if a.get_title().startswith("MRPC"))
    color = figures.INIT_COLORS["random"].lower()
    lines = [ln for ln in ax.get_lines() if to_hex(ln.get_color() if ln.get_marker() in ("None", "") else
                                                   ln.get_markeredgecolor()) == color and len(ln.get_xdata())]
    joined = [ln for ln in lines if ln.get_linestyle() != "None"]
    hollow = [ln for ln in lines if ln.get_linestyle() == "None" and ln.get_markerfacecolor() == "none"]
    assert len(joined) == 1 and len(joined[0].get_xdata()) == 2  # the two 3-seed lrs only
    assert len(hollow) == 1 and hollow[0].get_xdata()[0] == pytest.approx(1e-2, rel=0.2)
    assert "hollow: one seed, not joined" in fig._suptitle.get_text()
    matplotlib.pyplot.close("all")


def test_an_evaluation_a_step_after_another_pools_its_train_loss_with_it(log_dir):
    """Epoch-end evaluations come a step or two after a periodic one: their train loss (the mean since the
    previous evaluation) covers one step. The history figure pools it, step-weighted, with the window before."""
    runs = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 3, "step": [120, 240, 241, 360, 100, 200, 300],
                         "train_loss": [1.0, 0.8, 0.2, 0.7, 0.5, 0.4, 0.3], "dev_loss": [0.1] * 7})
    out = figures.pooled_train_loss(runs)
    assert out["train_loss"].tolist() == pytest.approx([1.0, np.nan, (0.8 * 120 + 0.2 * 1) / 121, 0.7, 0.5, 0.4, 0.3],
                                                       nan_ok=True)
    assert out["dev_loss"].tolist() == [0.1] * 7 and runs["train_loss"].notna().all()  # the input is left alone
    logged = load_runs(log_dir)
    sel = logged[(logged.task == "mrpc") & (logged.lr == 1e-4) & (logged.method == "lora-fa") & (logged.init == "random")]
    extra = sel[sel.step == 30].assign(step=31, train_loss=5.0)  # an epoch-end evaluation one step later
    fig = figures.plot_histories(pd.concat([sel, extra], ignore_index=True), "mrpc", lr=1e-4)
    line = [ax for ax in fig.axes if ax.get_title() == "train loss"][0].lines[0]
    assert list(line.get_xdata()) == [0, 10, 20, 31]
    expected = ((sel[sel.step == 30]["train_loss"] * 10 + 5.0) / 11).mean()
    assert line.get_ydata()[-1] == pytest.approx(expected)
    matplotlib.pyplot.close("all")
