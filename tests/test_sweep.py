"""The round-2 sweep: its run list, and commands that are exactly the runs the protocol names."""
import sys

import run_glue
import sweep_round2 as sweep


def test_run_list_follows_the_protocol():
    runs = sweep.runs()
    assert len(runs) == len(set(runs)) == 12 + 60 + 2 + 8 + 24 + 12
    grid = [r for r in runs if r[1] == "lora-fa" and r[4] == 0]
    assert {(t, i) for t, _, i, _, _ in grid} == {(t, i) for t in ("mrpc", "cola") for i in sweep.INITS}
    assert sorted({r[3] for r in grid}) == sorted(sweep.LORA_LRS) and min(sweep.LORA_LRS) <= 1e-4
    assert max(sweep.LORA_LRS) >= 3e-2 and len(sweep.LORA_LRS) >= 4
    finals = [r for r in runs if r[3] == "select" and r[1] == "lora-fa"]
    assert {r[4] for r in finals} == {1, 2}  # seed 0 of the final comparison is the selection run


def test_commands_give_the_runs_they_stand_for(tmp_path):
    args = sweep.argparse.Namespace(model="minilm", log_dir=str(tmp_path), data_dir=str(tmp_path), threads=1)
    for task, method, init, lr, seed in [("mrpc", "lora-fa", "eva", 1.7e-3, 0), ("cola", "full", "none", 5e-5, 2)]:
        cfg = sweep.config(task, method, init, lr, seed, args)
        cmd = sweep.command(cfg, 1)
        assert cmd[:2] == [sys.executable, "run_glue.py"]
        base, grid = run_glue.split_args(run_glue.train_parser().parse_args(cmd[2:]))
        assert not grid and base.canonical().run_id == cfg.run_id and base.threads == 1
        assert cfg.holdout == 0.1 and cfg.group_by_length and cfg.epochs == sweep.EPOCHS[task]


def test_list_marks_selected_runs_as_waiting(tmp_path, capsys):
    assert sweep.main(["--list", "--log-dir", str(tmp_path / "none")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("ready") for ln in lines) == 84
    assert sum(ln.startswith("waiting") for ln in lines) == 34
