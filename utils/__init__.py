"""Shared code for the GLUE experiments: data, models, training, logs, plots.

`import utils` keeps working as the package grows; the submodules are
`utils.glue` (tasks, data, metrics), `utils.models` (model loading, targets),
`utils.train` (the run loop), `utils.logs` (JSON run logs) and `utils.plots`.
"""
