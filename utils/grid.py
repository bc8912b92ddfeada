"""Grids of runs (`run_grid`); their mean ± std over seeds is `utils.stats.summarize`.

    base = RunConfig(task="mrpc", model="minilm", data_dir="../shared/glue")
    logs = run_grid(base, {"init": ["random", "svd"], "lr": [1e-4, 4e-4], "seed": [0, 1, 2]})
    summarize(logs)          # or summarize("logs"): one row per cell and variant (utils.stats.add_variant)
"""
from __future__ import annotations

import dataclasses
import itertools
import sys

from utils.config import RunConfig
from utils.locks import RunLocked
from utils.processes import process_state
from utils.train import run_experiment


def expand_grid(base: RunConfig, grid: dict | None = None) -> list[RunConfig]:
    """Every combination of the grid's values (fields in RunConfig order), canonical and without
    duplicates (e.g. several inits of a head-only run are one run)."""
    grid = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in (grid or {}).items()}
    names = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(grid) - set(names))
    if unknown:
        raise ValueError(f"grid has unknown field(s) {unknown}; RunConfig fields: {', '.join(names)}")
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"grid field(s) {empty} have no values")
    keys = [n for n in names if n in grid]
    configs, seen = [], set()
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = dataclasses.replace(base, **dict(zip(keys, values))).canonical()
        if cfg.run_id not in seen:
            seen.add(cfg.run_id)
            configs.append(cfg)
    return configs


def parse_shard(shard) -> tuple[int, int]:
    """(i, n) from a tuple or "i/n"; 0 <= i < n (0-based, like process ranks)."""
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like i/n (e.g. 0/8), got {shard!r}") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard i/n needs n >= 1 and 0 <= i < n (0-based), got {i}/{n}")
    return i, n


def select_shard(configs: list, shard=None) -> list:
    """Shard i of n: every n-th run starting at i (the order does not depend on which runs finished)."""
    if shard is None:
        return list(configs)
    i, n = parse_shard(shard)
    return list(configs)[i::n]


def run_grid(base_config: RunConfig, grid: dict | None = None, *, shard=None, progress: bool = True,
             stop_on_error: bool = False) -> list[dict]:
    """Run every combination of `grid` (field -> list of values) on top of `base_config`.

    Finished runs are skipped (their logs returned) unless base_config.overwrite. A failing
    run is logged as failed and the grid goes on (its log is in the result), unless
    `stop_on_error`. A run another worker holds (its lock file, utils.locks.run_lock) is skipped:
    status "locked" in the result, never an error. `shard=(i, n)` or "i/n" runs only shard i of n
    (see select_shard).
    """
    configs = select_shard(expand_grid(base_config, grid), shard)
    for cfg in configs:
        cfg.check_files()
    main = process_state().is_main_process
    logs = []
    for k, cfg in enumerate(configs):
        if progress and main:
            print(f"[{k + 1}/{len(configs)}] {cfg.run_id} (log {cfg.log_path})")
        try:
            logs.append(run_experiment(cfg, progress=progress))
        except RunLocked as e:  # another worker runs it: not an error, the grid goes on
            if main:
                print(f"LOCKED {cfg.run_id}: {e}", file=sys.stderr)
            logs.append(_not_run(cfg, "locked", str(e)))
        except Exception as e:
            if stop_on_error:
                raise
            if main:
                print(f"FAILED {cfg.run_id}: {type(e).__name__}: {e}\n{failed_note(cfg)}", file=sys.stderr)
            logs.append(_not_run(cfg, "failed", f"{type(e).__name__}: {e}"))
    return logs


def failed_note(cfg: RunConfig) -> str:
    """What a failed run left behind, said once where its error is printed."""
    where = f"its log {cfg.log_path}" if cfg.log_path.is_file() else "no log"
    return (f"  {where} (status failed, with the error) is not a result: summary, plot and the reports skip it; "
            "the same command runs it again (--resume: from its last checkpoint, if any)")


def _not_run(cfg: RunConfig, status: str, error: str) -> dict:
    """run_grid's entry for a run that did not finish here (status "failed" or "locked")."""
    return {"run_id": cfg.run_id, "status": status, "error": error, "config": dataclasses.asdict(cfg), "summary": {}}
