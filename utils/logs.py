"""Run logs: one JSON file per run in `logs/`, written atomically, read back as pandas tables.

Schema (version 1), documented in README.md:

    {"schema": 1, "run_id": str, "status": "running" | "finished" | "failed", "error": str | None,
     "config":  {every RunConfig field, plus data_source, num_rows, main_metric, ...},
     "env":     {git_commit, python, torch, transformers, project, device, threads, processes, host},
     "history": [{"step", "epoch", "train_loss", "lr", "dev_loss", "metrics": {name: value}, "time_s"}],
     "train_loss": [{"step", "loss", "lr"}],
     "summary": {"final": {name: value, "dev_loss": v}, "best": {name: {"value", "step"}},
                 "steps", "wall_time_s", "peak_rss_mb", "trainable_params"}}

Metric names are the task's own (`mcc`, `f1`, `accuracy`, `pearson`, ...); tasks with
several dev sets (MNLI) prefix the extra ones with the split name
(`accuracy` is matched, `dev_mismatched/accuracy` mismatched, `dev_mismatched/loss` its loss).

Extensions written by utils.train (readers must not rely on them being present):

    config:  data_files {split: path}, max_length_used, targets_resolved (suffixes), adapted_modules,
             trainable_params, processes, total_batch_size, steps_per_epoch, total_steps
    env:     accelerate, peft, datasets, mixed_precision, platform, argv; git_commit gets "+dirty"
             when tracked files differ from HEAD
    history: reg_loss (mean regularizer term since the last evaluation; train_loss includes it)
    train_loss entries: reg_loss
    summary: epochs, train_time_s, eval_time_s, setup_time_s (model/data loading), peak_gpu_mb,
             param_hashes (sha256 prefix of the trainable weights, one per process: all equal)
    resumed_from_step: present if the run was resumed from a checkpoint
    `<run_id>.preds.npz` next to the log: the last evaluation's dev predictions and labels
             (utils.runlog.load_predictions)
"""
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

SCHEMA = 1


def write_json_atomic(obj, path):
    """Write JSON to `path` through a temporary file and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_log(path):
    """One run log as a dict; a clear error for files that are not run logs."""
    path = Path(path)
    try:
        log = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(log, dict) or log.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a run log of schema {SCHEMA}")
    return log


def _log_paths(path):
    path = Path(path)
    return sorted(path.rglob("*.json")) if path.is_dir() else [path]


def load_runs(path="logs", status=("finished",)):
    """Every evaluation of every run under `path` as one DataFrame (one row per evaluation).

    Columns: run_id, status, the config fields (task, model, method, init, rank, lr, seed, ...),
    step, epoch, train_loss, lr_now (the scheduled lr at that step), dev_loss, time_s, and one
    column per dev metric. `status=None` keeps running and failed runs too.
    """
    rows = []
    for p in _log_paths(path):
        log = read_log(p)
        if status is not None and log["status"] not in status:
            continue
        cfg = {k: v for k, v in log["config"].items() if not isinstance(v, (dict, list))}
        for h in log["history"]:
            row = {"run_id": log["run_id"], "status": log["status"], **cfg,
                   "step": h["step"], "epoch": h["epoch"], "train_loss": h.get("train_loss"),
                   "lr_now": h.get("lr"), "dev_loss": h.get("dev_loss"), "time_s": h.get("time_s")}
            row.update(h["metrics"])
            rows.append(row)
    return pd.DataFrame(rows)


def summary_row(log):
    """One run as a flat dict: config fields plus final_<metric>, best_<metric>, best_step_<metric>."""
    row = {"run_id": log["run_id"], "status": log["status"],
           **{k: v for k, v in log["config"].items() if not isinstance(v, (dict, list))}}
    s = log.get("summary") or {}
    for k, v in (s.get("final") or {}).items():
        row[f"final_{k}"] = v
    for k, v in (s.get("best") or {}).items():
        row[f"best_{k}"], row[f"best_step_{k}"] = v["value"], v["step"]
    for k in ("steps", "wall_time_s", "peak_rss_mb", "trainable_params"):
        row[k] = s.get(k)
    return row


def load_summaries(path="logs", status=("finished",)):
    """One row per run: config fields plus final_<metric> and best_<metric> (and best_step_<metric>)."""
    rows = []
    for p in _log_paths(path):
        log = read_log(p)
        if status is not None and log["status"] not in status:
            continue
        rows.append(summary_row(log))
    return pd.DataFrame(rows)
