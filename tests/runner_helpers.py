"""Helpers for the runner tests: small RunConfigs and the fixtures they run with."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import write_glue


def _real_glue() -> Path | None:
    """The real GLUE folder, found as the runner finds it (`utils.glue.local_data_dir`: $GLUE_DIR,
    absolute or relative, else ../shared/glue next to the repo); None if there is none."""
    from utils.glue import local_data_dir

    found = local_data_dir()
    return found[0] if found and (found[0] / "MRPC").is_dir() else None


REAL_GLUE = _real_glue()
NO_REAL_GLUE = "no real GLUE data: set GLUE_DIR to a glue_data folder (or put it at ../shared/glue next to the repo)"
needs_real_glue = pytest.mark.skipif(REAL_GLUE is None, reason=NO_REAL_GLUE)


def dead_pid() -> int:
    """The pid of a process that has exited (for stale lock files)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


class Stop(Exception):
    """Injected 'kill' of a run."""


def stop_after_first_eval(log):
    """`on_eval` hook of run_experiment: kill the run after its first evaluation (its checkpoint is saved)."""
    if len(log["history"]) == 1:
        raise Stop("killed after the first evaluation")


def without_times(history: list[dict]) -> list[dict]:
    """A log's history without its wall-clock times, for comparing two runs of the same config."""
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def tiny_run_config(tmp_path, model_dir, data_dir, **overrides):
    """A RunConfig for a few fast steps of a tiny model, all files under tmp_path."""
    from utils.config import RunConfig

    settings = dict(task="mrpc", model=str(model_dir), data_dir=str(data_dir), log_dir=str(tmp_path / "logs"),
                    ckpt_dir=str(tmp_path / "ckpt"), batch_size=4, max_length=32, lr=1e-2, max_steps=12,
                    eval_every=4, log_every=2, rank=2, init="random", seed=0)
    settings.update(overrides)
    return RunConfig(**settings)


@pytest.fixture(autouse=True)
def runner_env(tmp_path_factory, monkeypatch):
    """Tokenised data cached in a per-session folder; one thread (tiny models run faster so).
    Autouse in every test module that imports it."""
    monkeypatch.setenv("LORA_FA_CACHE", str(tmp_path_factory.getbasetemp() / "lora_fa_cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """Tiny GLUE-format files for every task (write_glue)."""
    return write_glue(tmp_path_factory.mktemp("glue"))
