"""Building one run's log dict (schema in utils.logs): environment, summary, predictions file."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import lora
from utils.logs import SCHEMA

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD of the repository this file lives in, "+dirty" if tracked files changed; "unknown" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)  # without importing it (peft takes seconds)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment(accelerator) -> dict:
    """Where and with what the run ran (the log's "env" block)."""
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(accelerator.device)})"
    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": _version("transformers"), "accelerate": _version("accelerate"),
            "peft": _version("peft"), "datasets": _version("datasets"), "project": lora.__version__,
            "device": device, "mixed_precision": accelerator.mixed_precision,
            "threads": torch.get_num_threads(), "processes": accelerator.num_processes,
            "host": socket.gethostname(), "platform": platform.platform(), "argv": sys.argv}


def new_log(cfg, extra_config: dict, env: dict) -> dict:
    """A fresh log with status "running" and empty history."""
    return {"schema": SCHEMA, "run_id": cfg.run_id, "status": "running", "error": None,
            "config": {**dataclasses.asdict(cfg), **extra_config}, "env": env,
            "history": [], "train_loss": [], "summary": {}}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB). In a grid run in
    one process this is the maximum over the runs so far, not the current run's own peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _best(history: list[dict], key: str) -> dict:
    """{metric: {"value": max over the history of h[key][metric], "step": where}} (losses left out)."""
    best = {}
    for h in history:
        for k, v in h.get(key, {}).items():
            if k != "loss" and (k not in best or v > best[k]["value"]):
                best[k] = {"value": v, "step": h["step"]}
    return best


def summary(history: list[dict], **extra) -> dict:
    """final (last evaluation's metrics + dev_loss) and best (max of each metric, with its step);
    with a holdout slice also "holdout": {"final": its metrics + loss, "best": ...}."""
    if not history:
        return {"final": {}, "best": {}, **extra}
    last = history[-1]
    held = {"holdout": {"final": last["holdout"], "best": _best(history, "holdout")}} if "holdout" in last else {}
    return {"final": {**last["metrics"], "dev_loss": last["dev_loss"]}, "best": _best(history, "metrics"),
            **held, **extra}


def predictions_path(log_path) -> Path:
    """`<run_id>.preds.npz` next to the log (not *.json, so log loaders never read it)."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name.removesuffix(".json") + ".preds.npz")


def save_predictions(path, step: int, preds: dict) -> None:
    """Write {split: (predictions, labels)} of one evaluation as `<split>/pred`, `<split>/label`."""
    arrays = {"step": np.asarray(step)}
    for split, (pred, label) in preds.items():
        arrays[f"{split}/pred"], arrays[f"{split}/label"] = np.asarray(pred), np.asarray(label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_predictions(path) -> dict:
    """{"step": int, split: {"pred": array, "label": array}} as written by `save_predictions`."""
    with np.load(path, allow_pickle=False) as f:
        out = {"step": int(f["step"])}
        for key in f.files:
            if key != "step":
                split, kind = key.split("/")
                out.setdefault(split, {})[kind] = f[key]
    return out
