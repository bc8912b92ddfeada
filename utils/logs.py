"""Run logs on disk: one JSON file per run in `logs/`, written whole, read back as a dict or as pandas
tables.

`utils.record` builds what a log holds; `write_json_atomic` writes it. Readers skip a file that is
not a readable run log with a warning line (`read_logs`) and fill the config fields an older log
lacks with their legacy values (`config_columns`). Next to `<log_dir>/<task>/<run_id>.json` lie `<run_id>.preds.npz`
(`predictions_path`) and, while the run runs, `<run_id>.lock` (`utils.locks`).

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

    config:  data_source ("local:$GLUE_DIR", "local:<--data-dir as given>" or "hub:nyu-mll/glue"),
             data_files {split: path relative to the data folder, or hub id},
             num_rows {split: rows; train after the holdout, holdout},
             init_time_s (adapter init), max_length_used, targets_resolved (suffixes), adapted_modules,
             trainable_params, processes, total_batch_size, steps_per_epoch, total_steps
    env:     accelerate, peft, datasets, mixed_precision, platform, argv; git_commit gets "+dirty"
             when tracked files differ from HEAD
    history: reg_loss (mean regularizer term since the last evaluation; train_loss includes it);
             holdout {name: value, "loss": v} (runs with holdout > 0: the held-out slice of train)
    train_loss entries: reg_loss
    summary: holdout {"final": ..., "best": ...} (as final/best, for the held-out slice),
             padding_efficiency (real / padded tokens of the training batches), tokens_per_second
             (real training tokens per second of train time),
             epochs, train_time_s, eval_time_s, setup_time_s (model/data loading), peak_gpu_mb,
             param_hashes (sha256 prefix of the trainable weights, one per process: all equal)
    resumed_from_step: present if the run was resumed from a checkpoint
    `<run_id>.preds.npz` next to the log: the last evaluation's dev predictions and labels
             (load_predictions)
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import lora
from utils.config import NAME_FIELDS, RunConfig, with_legacy_defaults

SCHEMA = 1
RUN_FIELDS = frozenset(RunConfig.__dataclass_fields__)


# ---------------------------------------------------------------- a run's files

def write_json_atomic(obj, path) -> None:
    """Write JSON to `path` through `lora.atomic_write`: readers never see half a file."""
    with lora.atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=True)


def predictions_path(log_path) -> Path:
    """`<run_id>.preds.npz` next to the log (not *.json, so log loaders never read it)."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name.removesuffix(".json") + ".preds.npz")


def load_predictions(path) -> dict:
    """{"step": int, split: {"pred": array, "label": array}} as written by `save_predictions`."""
    with np.load(path, allow_pickle=False) as f:
        out = {"step": int(f["step"])}
        for key in f.files:
            if key != "step":
                split, kind = key.split("/")
                out.setdefault(split, {})[kind] = f[key]
    return out


# ---------------------------------------------------------------- logs

def read_log(path):
    """One run log as a dict; ValueError naming the file and what is wrong for files that are not
    valid JSON, not run logs, or lack a key the readers need."""
    path = Path(path)
    try:
        log = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    problem = _log_problem(log)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return log


def _log_problem(log) -> str | None:
    """What keeps `log` from being read as a run log (None: nothing). Keys beyond these are optional,
    and unknown keys (a newer writer's) are ignored."""
    if not isinstance(log, dict) or log.get("schema") != SCHEMA:
        return f"not a run log of schema {SCHEMA}"
    missing = [k for k in ("run_id", "status", "config", "history") if k not in log]
    if isinstance(log.get("config"), dict):
        missing += [f"config.{k}" for k in NAME_FIELDS if k not in log["config"]]
    elif "config" in log:
        return "config is not a JSON object"
    if isinstance(log.get("history"), list):
        missing += [f"history[{i}].{k}" for i, h in enumerate(log["history"]) for k in ("step", "epoch", "metrics")
                    if not isinstance(h, dict) or k not in h]
    elif "history" in log:
        return "history is not a list"
    return f"missing keys: {', '.join(missing)}" if missing else None


def _log_paths(path):
    path = Path(path)
    return sorted(path.rglob("*.json")) if path.is_dir() else [path]


def read_logs(path="logs", status=("finished",)) -> dict[Path, dict]:
    """{file: log} of the run logs under `path` (a folder or one file) whose status is in `status`
    (None: any). A file that is not a readable run log (a truncated copy, a hand edit) is skipped
    with one warning line on stderr naming it and why; a last line says how many were skipped."""
    logs, paths, skipped = {}, _log_paths(path), 0
    for p in paths:
        try:
            log = read_log(p)
        except (OSError, ValueError) as e:
            print(f"warning: skipping {e}", file=sys.stderr)
            skipped += 1
            continue
        if status is None or log["status"] in status:
            logs[p] = log
    if skipped:
        print(f"warning: skipped {skipped} of {len(paths)} log files (not readable run logs)", file=sys.stderr)
    return logs


def select_logs(source, status=("finished",)) -> dict[Path, dict]:
    """{file: log} of `source` whose status is in `status` (None: any): `source` is a folder or
    file (read by read_logs) or a `read_logs` result (logs read once for several tables)."""
    if isinstance(source, dict):
        return {p: log for p, log in source.items() if status is None or log["status"] in status}
    return read_logs(source, status)


def config_columns(config: dict) -> dict:
    """A logged config as table columns: fields an older log lacks at the value it ran with
    (LEGACY_DEFAULTS), RunConfig lists (targets) as tuples, other lists and dicts left out."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in with_legacy_defaults(config).items()
            if not isinstance(v, dict) and (not isinstance(v, list) or k in RUN_FIELDS)}


def load_runs(path="logs", status=("finished",)):
    """Every evaluation of every run under `path` as one DataFrame (one row per evaluation).

    Columns: run_id, status, the config fields (task, model, method, init, rank, lr, seed, ...),
    step, epoch, train_loss, lr_now (the scheduled lr at that step), dev_loss, time_s, and one
    column per dev metric. `status=None` keeps running and failed runs too. `path`: a folder, one
    log file, or a `read_logs` result.
    """
    rows = []
    for log in select_logs(path, status).values():
        cfg = config_columns(log["config"])
        for h in log["history"]:
            row = {"run_id": log["run_id"], "status": log["status"], **cfg,
                   "step": h["step"], "epoch": h["epoch"], "train_loss": h.get("train_loss"),
                   "lr_now": h.get("lr"), "dev_loss": h.get("dev_loss"), "time_s": h.get("time_s")}
            row.update(h["metrics"])
            row.update({f"holdout_{k}": v for k, v in h.get("holdout", {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def summary_row(log):
    """One run as a flat dict: config fields plus final_<metric>, best_<metric>, best_step_<metric>."""
    row = {"run_id": log["run_id"], "status": log["status"], **config_columns(log["config"])}
    s = log.get("summary") or {}
    for k, v in (s.get("final") or {}).items():
        row[f"final_{k}"] = v
    for k, v in (s.get("best") or {}).items():
        row[f"best_{k}"], row[f"best_step_{k}"] = v["value"], v["step"]
    held = s.get("holdout") or {}
    for k, v in (held.get("final") or {}).items():
        row[f"final_holdout_{k}"] = v
    for k, v in (held.get("best") or {}).items():
        row[f"best_holdout_{k}"], row[f"best_step_holdout_{k}"] = v["value"], v["step"]
    for k in ("steps", "wall_time_s", "peak_rss_mb", "trainable_params", "padding_efficiency", "tokens_per_second"):
        row[k] = s.get(k)
    return row


def load_summaries(path="logs", status=("finished",)):
    """One row per run: config fields plus final_<metric> and best_<metric> (and best_step_<metric>).
    `path` as in `load_runs`."""
    return pd.DataFrame([summary_row(log) for log in select_logs(path, status).values()])
