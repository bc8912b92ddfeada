"""Tests for run_glue.py: flags <-> RunConfig fields, grids, shards, exit codes, summary, plot dispatch."""
import dataclasses
import json
import os
import socket

import pytest

import run_glue
from tests.test_plots import fake_log
from utils.config import RunConfig, field_help
from utils.grid import run_grid
from utils.locks import lock_path
from utils.logs import load_summaries, read_log, write_json_atomic


def _args(tmp_path, tiny_models, glue_dir, *extra):
    return ["--model", str(tiny_models["bert"]), "--data-dir", str(glue_dir), "--log-dir", str(tmp_path / "logs"),
            "--ckpt-dir", str(tmp_path / "ckpt"), "--batch-size", "4", "--max-length", "32", "--rank", "2",
            "--max-steps", "2", "--no-progress", *extra]


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_glue.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    helps = field_help()
    for f in dataclasses.fields(RunConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert helps[f.name] and " ".join(helps[f.name].split()) in text, f.name
    for flag in ("--seeds", "--shard", "--dry-run", "--no-bf16"):
        assert flag in text


def test_flags_map_onto_fields():
    parser = run_glue.train_parser()
    base, grid = run_glue.split_args(parser.parse_args([]))
    assert base == RunConfig() and grid == {}
    args = parser.parse_args(["--task", "rte", "--max-steps", "none", "--alpha", "8", "--bf16", "--no-train-head",
                              "--targets", "query", "value", "--seeds", "0", "1", "2", "--lr", "1e-4", "4e-4",
                              "--eval-every", "50", "--clip-norm", "none"])
    base, grid = run_glue.split_args(args)
    assert (base.task, base.max_steps, base.alpha, base.bf16, base.train_head) == ("rte", None, 8.0, True, False)
    assert base.targets == ["query", "value"] and base.eval_every == 50 and base.clip_norm is None
    assert grid == {"seed": [0, 1, 2], "lr": [1e-4, 4e-4]}


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "unknown GLUE task"),
    (["--init", "gaussian"], "invalid choice"),
    (["--method", "adapter"], "invalid choice"),
    (["--rank", "four"], "invalid int value"),
    (["--data-dir", "/no/such/glue"], "does not exist"),
    (["--shard", "3/3"], "shard"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_glue.main(argv + ["--dry-run"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_grid_runs_skips_and_summarises(tmp_path, tiny_models, glue_dir, capsys):
    argv = _args(tmp_path, tiny_models, glue_dir, "--init", "random", "svd", "--seeds", "0", "1")
    assert run_glue.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs finished" in out and "±" in out
    df = load_summaries(tmp_path / "logs")
    assert sorted(zip(df["init"], df["seed"])) == [("random", 0), ("random", 1), ("svd", 0), ("svd", 1)]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    assert run_glue.main(argv) == 0  # everything finished: skipped (under each run's lock), no file rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "logs").rglob("*") if p.is_file()} == mtimes
    assert "4 of 4 runs finished" in capsys.readouterr().out
    assert run_glue.main(["summary", "--log-dir", str(tmp_path / "logs")]) == 0
    table = capsys.readouterr().out
    assert "random" in table and "svd" in table and "f1" in table


def test_shards_split_the_grid(tmp_path, tiny_models, glue_dir, capsys):
    argv = _args(tmp_path, tiny_models, glue_dir, "--init", "random", "svd", "pissa", "--seeds", "0", "1", "--dry-run")
    assert run_glue.main(argv) == 0
    everything = capsys.readouterr().out.split()
    assert len(everything) == 6
    parts = []
    for i in range(4):
        assert run_glue.main(argv + ["--shard", f"{i}/4"]) == 0
        parts.append(capsys.readouterr().out.split())
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    assert sorted(name for part in parts for name in part) == sorted(everything)
    # a shard runs only its own runs
    assert run_glue.main([a for a in argv if a != "--dry-run"] + ["--shard", "2/4"]) == 0
    assert [p.name for p in (tmp_path / "logs").rglob("*.json")] == [parts[2][0].rsplit("/", 1)[1]]


def test_failed_run_exits_1(tmp_path, tiny_models, glue_dir, capsys):
    argv = _args(tmp_path, tiny_models, glue_dir, "--lr", "1e30", "--clip-norm", "none", "--warmup-ratio", "0",
                 "--max-steps", "6")
    assert run_glue.main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "diverged" in captured.err and "0 of 1 runs finished" in captured.out
    assert captured.err.count("diverged") == 1  # the error once, where it happened
    assert "status failed, with the error) is not a result" in captured.err
    log = next((tmp_path / "logs").rglob("*.json"))
    assert str(log) in captured.err and read_log(log)["status"] == "failed"
    assert load_summaries(tmp_path / "logs").empty  # readers skip it
    assert run_glue.main(["summary", "--log-dir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    assert "(no finished runs)" in out and f"not counted: {log} (failed: TrainingDiverged: training diverged" in out


@pytest.mark.slow  # over ~5 s on 2 cores
def test_plot_writes_the_general_figures_and_no_round_report(tmp_path, capsys):
    """`run_glue.py plot` is the general plot command: figures and summary tables, no round's report;
    a round's own figures come from `python -m experiments.roundN.figures`, which takes the same flags."""
    log = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)
    write_json_atomic(log, tmp_path / "logs" / "mrpc" / f"{log['run_id']}.json")
    assert run_glue.main(["plot", "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "imgs")]) == 0
    names = {p.name for p in (tmp_path / "imgs").iterdir()}
    assert {"summary.md", "summary.csv", "summary_final_metric.png"} <= names and "results.md" not in names
    assert "summary.md" in capsys.readouterr().out
    from experiments.round1 import figures as round1_figures

    assert round1_figures.plots.cli(["--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "r1")],
                                    write=round1_figures.main) == 0
    assert "| svd " in (tmp_path / "r1" / "results.md").read_text()
    with pytest.raises(SystemExit):  # the round flag is gone from the general command
        run_glue.main(["plot", "--round2"])
    assert "select" not in run_glue.COMMANDS


# ---------------------------------------------------------------- several workers, unreadable logs

def _good_and_bad_logs(root):
    """One finished MRPC log and one truncated copy of it (a copy interrupted by a full disk)."""
    log = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)
    write_json_atomic(log, root / "mrpc" / f"{log['run_id']}.json")
    text = (root / "mrpc" / f"{log['run_id']}.json").read_text()
    bad = root / "mrpc" / "copy.json"
    bad.write_text(text[:200])
    return bad


def test_summary_skips_an_unreadable_log(tmp_path, capsys):
    bad = _good_and_bad_logs(tmp_path / "logs")
    assert run_glue.main(["summary", "--log-dir", str(tmp_path / "logs")]) == 0
    out, err = capsys.readouterr()
    assert "mrpc minilm lora-fa svd" in " ".join(out.split())
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"warning: skipping {bad}: not valid JSON")
    assert lines[1] == "warning: skipped 1 of 2 log files (not readable run logs)"


def test_plot_skips_an_unreadable_log(tmp_path, capsys):
    bad = _good_and_bad_logs(tmp_path / "logs")
    assert run_glue.main(["plot", "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "imgs")]) == 0
    out, err = capsys.readouterr()
    assert "summary.md" in out and (tmp_path / "imgs" / "summary.md").is_file()
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"warning: skipping {bad}: not valid JSON")  # each file read once
    assert lines[1] == "warning: skipped 1 of 2 log files (not readable run logs)"


def test_a_run_another_worker_holds_is_skipped_not_failed(tmp_path, tiny_models, glue_dir, capsys):
    argv = _args(tmp_path, tiny_models, glue_dir, "--init", "random", "svd")
    base, grid = run_glue.split_args(run_glue.train_parser().parse_args(argv))
    held = dataclasses.replace(base, init="random")
    lock = lock_path(held.canonical().log_path)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # a live worker
    logs = run_grid(base, grid, progress=False)
    assert [(log["config"]["init"], log["status"]) for log in logs] == [("random", "locked"), ("svd", "finished")]
    assert "held by pid" in logs[0]["error"] and not held.canonical().log_path.exists()
    assert lock.exists() and list((tmp_path / "logs").rglob("*.lock")) == [lock]  # its lock untouched, svd's gone
    capsys.readouterr()
    assert run_glue.main(argv) == 3  # the CLI: nothing failed, one run is running elsewhere
    captured = capsys.readouterr()
    assert "1 of 2 runs finished, 1 running elsewhere (locked)" in captured.out
    assert "LOCKED" in captured.err and "held by pid" in captured.err and "FAILED" not in captured.err
    lock.unlink()
    assert run_glue.main(argv) == 0 and not list((tmp_path / "logs").rglob("*.lock"))
