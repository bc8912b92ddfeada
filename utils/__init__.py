"""Shared code for the GLUE experiments: data, models, training, logs, plots.

The public API, importable from `utils` directly (loaded lazily, so `import utils.glue`
stays light):

    from utils import RunConfig, run_experiment, run_grid, summarize, load_runs, load_summaries
    log = run_experiment(RunConfig(task="mrpc", model="minilm", init="svd", data_dir="../shared/glue"))

Submodules: `utils.config` (RunConfig, run ids), `utils.glue` (tasks, loading), `utils.metrics`
(their metrics), `utils.data` (tokenising, cache, loaders), `utils.models` (pretrained models:
files, loading, head), `utils.adapters` (what a run trains: adapters, trainable parameters, AdamW),
`utils.train` (the run loop), `utils.processes` (one or several processes), `utils.evaluate` (dev
evaluation), `utils.checkpoint` (resume), `utils.grid` (grids, shards), `utils.record` (what a run
records), `utils.logs` (JSON run logs on disk, read back as tables), `utils.locks` (one worker per
run), `utils.geometry` (init diagnostics), `utils.stats` (statistics: means, intervals, paired
tests), `utils.report` (markdown tables, round 1's report), `experiments.round2.protocol` (round 2's runs and lr
choice), `experiments.round2.report` (its report), `utils.figures` (figures), `experiments.round2.figures`
(round 2's), `utils.plots` (the `plot` command, notebook views), `utils.notebooks` (executing the
notebooks).
"""
import importlib

_EXPORTS = {
    "RunConfig": "utils.config",
    "run_experiment": "utils.train",
    "TrainingDiverged": "utils.train",
    "run_grid": "utils.grid",
    "expand_grid": "utils.grid",
    "summarize": "utils.stats",
    "format_summary": "utils.report",
    "load_runs": "utils.logs",
    "load_summaries": "utils.logs",
    "read_log": "utils.logs",
    "load_predictions": "utils.logs",
    "load_glue": "utils.glue",
    "compute_metrics": "utils.metrics",
    "load_model_and_tokenizer": "utils.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
