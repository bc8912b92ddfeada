"""Recording a run while it runs: what its log holds (environment, summary, paths), the predictions
file and the process's memory. `utils.logs` writes and reads the log files (the schema is in its
docstring) and holds the lock that lets one worker at a time run a run.

Paths are recorded as the user gave them, never as this machine's absolute ones: the data folder as
"$GLUE_DIR" or the --data-dir string, its files relative to it, an absolute path inside the working
directory or the repository relative to it. ``python -m utils.record relpaths LOGS...`` rewrites the
path fields of logs written before (and nothing else).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import lora
from utils.config import PATH_FIELDS
from utils.glue import local_data_dir
from utils.locks import lock_held
from utils.logs import SCHEMA, read_logs, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the log

def git_commit() -> str:
    """HEAD of the repository this file lives in, "+dirty" if any tracked file differs from it (in the
    working tree or the index; untracked files do not count); "unknown" without git."""
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


def environment(accelerator, data_dir=None) -> dict:
    """Where and with what the run ran (the log's "env" block); `data_dir`: the run's, for argv's paths."""
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(accelerator.device)})"
    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": _version("transformers"), "accelerate": _version("accelerate"),
            "peft": _version("peft"), "datasets": _version("datasets"), "project": lora.__version__,
            "device": device, "mixed_precision": accelerator.mixed_precision,
            "threads": torch.get_num_threads(), "processes": accelerator.num_processes,
            "host": socket.gethostname(), "platform": platform.platform(),
            "argv": portable_argv(sys.argv, local_data_dir(data_dir))}


def new_log(cfg, extra_config: dict, env: dict) -> dict:
    """A fresh log with status "running" and empty history (path fields as `portable_path` gives them)."""
    paths = {k: portable_path(getattr(cfg, k)) for k in PATH_FIELDS}
    return {"schema": SCHEMA, "run_id": cfg.run_id, "status": "running", "error": None,
            "config": {**dataclasses.asdict(cfg), **paths, **extra_config}, "env": env,
            "history": [], "train_loss": [], "summary": {}}


def data_fields(glue) -> dict:
    """data_source and data_files of a run's log for its `utils.glue.GlueData`."""
    return portable_data(glue.source, glue.files, glue.given_dir)


# ---------------------------------------------------------------- paths as the user gave them

def _inside(path, root) -> str | None:
    """`path` relative to the folder `root` ("." for root itself) if `path` is absolute and inside it."""
    if path is None or not os.path.isabs(path):
        return None
    try:
        return Path(os.path.normpath(path)).relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def portable_path(path, roots=None) -> str | None:
    """`path` as a log records it: an absolute path inside one of `roots` (default: the working
    directory, then this repository) relative to the first of them, any other path as given."""
    for root in (Path.cwd(), REPO) if roots is None else roots:
        rel = _inside(path, root)
        if rel is not None:
            return rel
    return None if path is None else str(path)


def portable_data(source: str, files: dict, given_dir: str | None, roots=None) -> dict:
    """data_source and data_files as a log records them: a local folder as the user gave it
    ("local:$GLUE_DIR", "local:../shared/glue"; `portable_path`) and its files relative to it
    ("MRPC/train.tsv"); hub data (and fields recorded this way already) unchanged."""
    folder = source.removeprefix("local:")
    if folder == source or not os.path.isabs(folder):
        return {"data_source": source, "data_files": files}
    return {"data_source": f"local:{portable_path(given_dir, roots)}",
            "data_files": {split: _inside(f, folder) or f for split, f in files.items()}}


def portable_argv(argv, data=None, roots=None) -> list[str]:
    """`argv` as a log records it: an argument (or the value of `--flag=value`) inside the local data
    folder `data` ((absolute, as given), `utils.glue.local_data_dir`) starts with the folder as given
    ("$GLUE_DIR/MRPC"), other absolute paths inside `roots` become relative (`portable_path`)."""
    def one(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("-") and "=" in arg else ("", "", arg)
        rel = None if data is None else _inside(value, data[0])
        if rel is not None:
            return flag + eq + (data[1] if rel == "." else f"{data[1]}/{rel}")
        return flag + eq + portable_path(value, roots)
    return [one(str(a)) for a in argv]


def portable_log(log: dict, repo_root) -> dict:
    """`log` (a run log written by an older version) with its path fields (config data_source,
    data_files and PATH_FIELDS, env argv) as a run records them now, paths inside `repo_root` relative
    to it; every other value the same. A local folder of a log without data_dir was $GLUE_DIR's."""
    roots = (Path(repo_root).resolve(),)
    config, env = dict(log["config"]), dict(log.get("env") or {})
    folder = str(config.get("data_source", "")).removeprefix("local:")
    data = (folder, "$GLUE_DIR" if config.get("data_dir") is None else portable_path(config["data_dir"], roots))
    if "data_source" in config:
        config.update(portable_data(config["data_source"], config.get("data_files", {}), data[1], roots))
    config.update({k: portable_path(config[k], roots) for k in PATH_FIELDS if k in config})
    if "argv" in env:
        env["argv"] = portable_argv(env["argv"], data if os.path.isabs(folder) else None, roots)
    return {**log, "config": config, **({"env": env} if "env" in log else {})}


def masked_paths(log: dict) -> dict:
    """`log` with every path field `portable_log` may change replaced by None (to compare the rest)."""
    config = {**log["config"], **{k: None for k in (*PATH_FIELDS, "data_source", "data_files") if k in log["config"]}}
    env = log.get("env")
    return {**log, "config": config, **({"env": {**env, "argv": None}} if isinstance(env, dict) else {})}


def rewrite_paths(paths, repo_root) -> dict[str, list]:
    """Rewrite the logs under `paths` (folders or files) in place, atomically, as `portable_log`
    gives them; running logs (status "running" or a lock file: a worker writes them) are left alone, as
    are logs already so. Returns {"rewritten": [...], "unchanged": [...], "running": [...]} (file paths)."""
    done = {"rewritten": [], "unchanged": [], "running": []}
    for path in paths:
        for file, log in read_logs(path, status=None).items():
            if log["status"] == "running" or lock_held(file):
                done["running"].append(file)
                continue
            new = portable_log(log, repo_root)
            if masked_paths(new) != masked_paths(log):  # never happens: portable_log changes paths only
                raise AssertionError(f"{file}: the rewrite would change more than path fields")
            if new == log:
                done["unchanged"].append(file)
            else:
                write_json_atomic(new, file)
                done["rewritten"].append(file)
    return done


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


def save_predictions(path, step: int, preds: dict) -> None:
    """Write {split: (predictions, labels)} of one evaluation as `<split>/pred`, `<split>/label`."""
    arrays = {"step": np.asarray(step)}
    for split, (pred, label) in preds.items():
        arrays[f"{split}/pred"], arrays[f"{split}/label"] = np.asarray(pred), np.asarray(label)
    with lora.atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------- memory of this process

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_now_mib() -> float | None:
    """Resident memory of this process now, in MiB (None where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(since_reset: bool = False) -> float:
    """Peak resident memory of this process in MiB: ru_maxrss over its whole life (in a grid run in
    one process, the maximum over the runs so far), or VmHWM since `reset_peak_rss`."""
    if since_reset:
        kib = _status_kib("VmHWM")
        if kib is not None:
            return kib / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- command line

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.record", description="rewrite the path fields of run "
                                "logs written before paths were recorded as given (nothing else changes)")
    sub = p.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("relpaths", help="data dir as $GLUE_DIR or as given, data files relative to it, paths "
                         "inside the repository relative to it; running logs are skipped")
    rel.add_argument("paths", nargs="+", help="log folders or files")
    rel.add_argument("--repo-root", default=str(REPO), help="paths inside it become relative (default: this repo)")
    args = p.parse_args(argv)
    done = rewrite_paths(args.paths, args.repo_root)
    for f in done["running"]:
        print(f"skipped (running): {f}", file=sys.stderr)
    print(", ".join(f"{len(v)} {k}" for k, v in done.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
