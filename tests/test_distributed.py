"""Two CPU processes (torchrun, gloo): same weights on both ranks, every dev row scored exactly once.

`python -m torch.distributed.run` is torchrun; `accelerate launch --multi_gpu --num_processes 2` works
too, also without GPUs (utils.processes.process_state makes Accelerate use gloo on CPUs).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import write_glue
from utils.glue import load_glue
from utils.logs import load_predictions, load_summaries, predictions_path, read_log
from utils.metrics import compute_metrics

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_two_processes_agree_and_score_each_dev_row_once(tmp_path, tiny_models):
    glue = write_glue(tmp_path / "glue", n_train=40, n_dev=21)  # 21 rows: uneven across 2 processes
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "run_glue.py"), "--task", "mrpc", "mnli", "--model", str(tiny_models["bert"]),
           "--data-dir", str(glue), "--log-dir", str(logs), "--ckpt-dir", str(tmp_path / "ckpt"),
           "--batch-size", "4", "--eval-batch-size", "4", "--max-length", "32", "--rank", "2", "--lr", "0.01",
           "--max-steps", "6", "--eval-every", "3", "--lora-dropout", "0.1", "--no-progress"]
    env = {**os.environ, "LORA_FA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("2 of 2 runs finished") == 1  # printed by the main process only
    assert not list(logs.rglob("*.lock"))  # each run's lock, taken by the main process, released
    df = load_summaries(logs)
    assert sorted(df["task"]) == ["mnli", "mrpc"]
    for run_id, task in zip(df["run_id"], df["task"]):
        log = read_log(logs / task / f"{run_id}.json")
        s, c = log["summary"], log["config"]
        assert c["processes"] == 2 and log["env"]["processes"] == 2 and c["total_batch_size"] == 8
        assert c["steps_per_epoch"] == 5  # 40 rows / (4 x 2 processes)
        hashes = s["param_hashes"]
        assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks hold the same trained weights
        preds = load_predictions(predictions_path(logs / task / f"{run_id}.json"))
        data = load_glue(task, glue)
        metrics = {}
        for i, split in enumerate(data.task.dev_splits):
            pred, label = preds[split]["pred"], preds[split]["label"]
            assert len(pred) == c["num_rows"][split] == len(data.dev[split])  # each row once, no padding rows
            assert np.array_equal(label, list(data.dev[split]["label"]))  # in file order
            prefix = "" if i == 0 else f"{split}/"
            metrics.update({prefix + k: v for k, v in compute_metrics(task, pred, label).items()})
        assert {k: v for k, v in s["final"].items() if "loss" not in k} == metrics


def test_shutdown_ends_the_process_group_and_the_runner_calls_it(tmp_path, monkeypatch, tiny_models):
    """A torchrun job's processes end their gloo group before exit (utils.processes.shutdown): a group
    left to interpreter finalization aborted a run now and then (SIGABRT)."""
    import torch.distributed as dist

    import run_glue
    from utils import processes

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    processes.shutdown()
    assert not dist.is_initialized()
    processes.shutdown()  # no group: nothing to do
    calls = []
    monkeypatch.setattr(processes, "shutdown", lambda: calls.append(1))
    glue = write_glue(tmp_path / "glue", n_train=8, n_dev=4)
    argv = ["--task", "mrpc", "--model", str(tiny_models["bert"]), "--data-dir", str(glue), "--log-dir", str(tmp_path)]
    assert run_glue.main(argv + ["--dry-run"]) == 0 and calls == [1]
    assert run_glue.main(["summary", "--log-dir", str(tmp_path)]) == 0 and calls == [1]  # no group to end
