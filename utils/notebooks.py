"""Execute the committed notebooks from the committed logs: ``python -m utils.notebooks [NAME ...]``.

Each notebook (default: every ``*.ipynb`` in the repository root) runs top to bottom in a fresh
kernel, in the repository root, and is written back in place with its outputs. Without the GLUE
data (`glue_folder`) it refuses (exit 1) and writes nothing. In that kernel
`utils.run_grid` is `finished_grid`: it returns the logs of a grid whose runs have all finished and
stops with the list of the others, so executing a notebook draws from `logs/` and never trains.

The written notebook keeps no volatile parts (execution counts, kernel versions, timing metadata,
stderr: warnings and progress bars, echoed to this process's stderr instead) and its PNGs no
software tag, so executing it twice gives the same bytes and a diff shows only what changed.
`tests/test_notebooks.py` re-executes them and checks that what they show is still what the code
computes from `logs/`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
# Run in the kernel before the notebook's own cells (and removed from the written notebook).
SETUP = """\
import utils
import utils.notebooks
utils.run_grid = utils.notebooks.finished_grid
%config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "metadata": {"Software": None}}
"""
VOLATILE_CELL_METADATA = ("execution", "papermill", "ExecuteTime")


class UnfinishedRuns(RuntimeError):
    """A notebook's grid has runs without a finished log: executing it would train."""


class NoData(RuntimeError):
    """The GLUE data the notebooks read is missing: executing them would show less than the committed ones."""


def glue_folder() -> Path:
    """The GLUE folder the notebooks read, found as the runner finds it (`utils.glue.local_data_dir`);
    NoData if there is none (without it the round-2 cells draw fewer figures, silently)."""
    from utils.glue import local_data_dir  # lazy: keeps `import utils.notebooks` light in the kernel

    found = local_data_dir()
    if found is None or not (found[0] / "MRPC").is_dir():
        where = "none found" if found is None else f"{found[1]} is {found[0]}, which holds no GLUE data"
        raise NoData(f"GLUE data needed to execute the notebooks ({where}): set GLUE_DIR to a glue_data "
                     "folder or put it at ../shared/glue next to the repository")
    return found[0]


def notebooks() -> list[Path]:
    """The repository's notebooks, sorted by name."""
    return sorted(REPO.glob("*.ipynb"))


def finished_grid(base_config, grid: dict | None = None, **run_grid_options) -> list[dict]:
    """`utils.run_grid`'s result for a grid whose runs have all finished, read from their logs.

    Raises UnfinishedRuns naming every run that has no finished log. `run_grid_options` (progress,
    shard, ...) are accepted and ignored: nothing runs.
    """
    from utils import expand_grid, read_log  # lazy: expand_grid pulls in the training stack

    configs = expand_grid(base_config, grid)
    logs = [read_log(c.log_path) if c.log_path.is_file() else None for c in configs]
    missing = [c.run_id for c, log in zip(configs, logs) if log is None or log["status"] != "finished"]
    if missing:
        raise UnfinishedRuns(f"{len(missing)} of {len(configs)} runs have no finished log in "
                             f"{base_config.log_dir}: {', '.join(missing)}")
    print(f"{len(configs)} runs, all finished in {base_config.log_dir}: shown from their logs, none trained")
    return logs


def execute(path, cwd=REPO, timeout: int = 1800) -> nbformat.NotebookNode:
    """The notebook at `path` executed in a fresh kernel started in `cwd` (with this repository
    importable, GLUE_DIR the absolute `glue_folder`, whatever `cwd` is), cleaned by `clean`; the file
    is not written. NoData without GLUE data."""
    from nbclient import NotebookClient  # lazy: the kernel imports this module for finished_grid

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "GLUE_DIR": str(glue_folder())}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                   record_timing=False).execute(env=env)
    setup = nb.cells.pop(0)
    echo_stderr(setup.outputs)
    return clean(nb)


def echo_stderr(outputs) -> list:
    """`outputs` without stderr streams, which are written to this process's stderr."""
    for o in outputs:
        if o.output_type == "stream" and o.name == "stderr":
            sys.stderr.write(o.text)
    return [o for o in outputs if not (o.output_type == "stream" and o.name == "stderr")]


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """`nb` without execution counts, volatile cell and notebook metadata, or stderr outputs."""
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        cell.outputs = echo_stderr(cell.outputs)
        for o in cell.outputs:
            if "execution_count" in o:
                o.execution_count = None
    nb.metadata = nbformat.from_dict({"kernelspec": nb.metadata["kernelspec"], "language_info": {"name": "python"}})
    return nb


def main(argv=None) -> int:
    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to execute (default: every *.ipynb in the repository root)")
    args = parser.parse_args(argv)
    try:
        glue_folder()
    except NoData as e:  # refuse before touching any notebook: never write a degraded copy
        print(f"error: {e}; no notebook was written", file=sys.stderr)
        return 1
    for path in [REPO / n for n in args.names] or notebooks():
        print(f"executing {path.name}", flush=True)
        try:
            nb = execute(path)
        except CellExecutionError as e:  # the notebook file is left as it was
            why = f"{e.ename}: {e.evalue}" if e.ename == UnfinishedRuns.__name__ else str(e)
            print(f"error: {path.name}: {why}", file=sys.stderr)
            return 1
        nbformat.write(nb, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
