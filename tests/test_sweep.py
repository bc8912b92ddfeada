"""The sweep: grids and shards, commands that are exactly the runs they stand for, the worker loop, and
round 2's run list."""
import dataclasses
import sys

import pytest

import run_glue
from experiments.round2 import protocol as round2
from experiments.round2 import sweep as sweep_round2
from utils import sweep
from utils.config import RunConfig, cli_args
from utils.grid import expand_grid, parse_shard, select_shard


def test_run_list_follows_the_protocol():
    runs = round2.planned_runs()
    assert len(runs) == len(set(runs)) == 12 + 60 + 2 + 8 + 48 + 24 + 30
    grid = [r for r in runs if r[1] == "lora-fa" and r[4] == 0 and r[5] == 4]
    assert {(t, i) for t, _, i, _, _, _ in grid} == {(t, i) for t in ("mrpc", "cola") for i in round2.COMPARED_INITS}
    assert sorted({r[3] for r in grid}) == sorted(round2.LORA_LRS) and min(round2.LORA_LRS) <= 1e-4
    assert max(round2.LORA_LRS) >= 3e-2 and len(round2.LORA_LRS) >= 4
    finals = [r for r in runs if r[3] == "select" and r[1] == "lora-fa" and r[5] == 4]
    assert {r[4] for r in finals} == {1, 2, 3, 4}  # seed 0 of the final comparison is the selection run
    small = [r for r in runs if r[1] == "lora-fa" and r[3] == round2.SMALL_LR]
    assert {r[4] for r in small} == {0, 1, 2} and len(small) == 2 * 6 * 3
    limit = [r for r in runs if r[5] == 16]  # the rank-16 row: CoLA, every init, 3 lrs then 2 more seeds
    assert {(r[0], r[2]) for r in limit} == {("cola", i) for i in round2.COMPARED_INITS} and len(limit) == 6 * (3 + 2)
    assert runs.index(limit[-1]) < runs.index(next(r for r in finals if r[4] == 3))  # before seeds 3-4
    assert {r[5] for r in runs if r[1] != "lora-fa"} == {0}


def test_commands_give_the_runs_they_stand_for(tmp_path):
    for task, method, init, lr, seed, rank in [("mrpc", "lora-fa", "eva", 1.7e-3, 0, 4), ("cola", "full", "none", 5e-5, 2, 0),
                                               ("cola", "lora-fa", "svd", 4e-4, 1, 16)]:
        cfg = round2.run_config(task, method, init, lr, seed, rank, log_dir=str(tmp_path), data_dir=str(tmp_path))
        cmd = sweep.command(cfg, 1, str(tmp_path / "ckpt"))
        assert cmd[:2] == [sys.executable, "run_glue.py"]
        base, grid = run_glue.split_args(run_glue.train_parser().parse_args(cmd[2:]))
        assert not grid and base.canonical().run_id == cfg.run_id and base.threads == 1
        assert base.ckpt_dir == str(tmp_path / "ckpt")  # outside the worktree; not part of the run id
        assert base.resume and base.checkpoint_minutes == sweep.CHECKPOINT_MINUTES
        assert cfg.holdout == 0.1 and cfg.group_by_length and cfg.epochs == round2.EPOCHS[task]


def test_cli_args_rebuild_every_kind_of_field():
    """Every field away from its default (bool both ways, None, a list, floats that %g would round)
    comes back from run_glue's parser; run-control and path fields are the caller's."""
    cfg = RunConfig(task="rte", model="mpnet", method="lora", init="grad", rank=8, alpha=None, targets=["q", "v"],
                    lora_dropout=0.05, train_head=False, train_biases=True, lr=1.2345678e-4, epochs=6,
                    max_steps=None, batch_size=16, max_length=256, clip_norm=None, bf16=True, seed=3,
                    group_by_length=False, init_batches=4, eval_every=35, holdout=0.1, log_every=5,
                    resume=True, threads=2, log_dir="elsewhere")
    args = cli_args(cfg)
    assert not {"--resume", "--threads", "--log-dir"} & set(args) and "--no-train-head" in args
    base, grid = run_glue.split_args(run_glue.train_parser().parse_args(args))
    assert not grid
    control = ("resume", "threads", "log_dir")
    assert dataclasses.replace(base, **{k: getattr(cfg, k) for k in control}) == cfg
    assert base.lr == 1.2345678e-4 and base.clip_norm is None and base.targets == ["q", "v"]


def test_list_marks_selected_runs_as_waiting(tmp_path, capsys):
    assert sweep_round2.main(["--list", "--log-dir", str(tmp_path / "none")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("ready") for ln in lines) == 12 + 60 + 24 + 18  # grids and the small lr
    assert sum(ln.startswith("waiting") for ln in lines) == 2 + 8 + 48 + 12


def test_an_idle_worker_waits_for_the_runs_that_others_are_running(monkeypatch):
    """A worker with nothing ready keeps looking while another worker's run goes (its end can make runs
    ready: a chosen lr, a check's runs), and stops once nothing runs."""
    a, b = (round2.run_config("cola", "lora-fa", "random", lr, 0, 4, log_dir="x") for lr in (1e-4, 4e-4))
    seen = iter([[("running", a)], [("finished", a), ("ready", b)], [("finished", a), ("finished", b)]])
    ran, slept = [], []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, **_: ran.append(cmd))
    monkeypatch.setattr(sweep.time, "sleep", slept.append)
    sweep.worker(0, lambda: next(seen), 1)
    assert slept == [sweep.POLL_S] and len(ran) == 1 and ran[0][ran[0].index("--lr") + 1] == "0.0004"
    assert next(seen, None) is None  # it looked a third time, found nothing running, and stopped


def test_grid_expansion_and_shards():
    base = RunConfig(method="lora-fa")
    grid = {"init": ["random", "svd"], "lr": [1e-4, 4e-4], "seed": [0, 1, 2], "method": ["lora-fa", "head"]}
    configs = expand_grid(base, grid)
    assert len(configs) == 2 * 2 * 3 + 2 * 3  # head runs have no init: 6, not 12
    assert len({c.run_id for c in configs}) == len(configs)
    shards = [select_shard(configs, f"{i}/5") for i in range(5)]
    assert sorted(c.run_id for s in shards for c in s) == sorted(c.run_id for c in configs)
    assert parse_shard((2, 8)) == (2, 8)
    for bad in ("8/8", "x/3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="unknown field"):
        expand_grid(base, {"learning_rate": [1e-3]})
