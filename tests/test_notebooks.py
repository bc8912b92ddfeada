"""The notebooks: committed executed and clean, showing what the code computes from logs/, and
executable end to end with papermill.

The committed notebooks are re-executed from the committed logs (`utils.notebooks.execute`, which
never trains) in a temporary folder holding a copy of the repo's git-tracked logs (so a sweep's
newly finished, uncommitted logs do not count), and every output but the PNG bytes must equal the
committed one. The end-to-end test runs a tiny grid (2 inits x 1 seed, 2
optimizer steps) of a tiny random BERT on tiny GLUE-format files; plots_for_preso then draws those
logs. Everything is written under tmp_path; the repo's logs/ and imgs/ are never touched.
"""
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.tiny import tiny_model_dir, write_glue
from utils import RunConfig, notebooks
from utils.config import with_legacy_defaults

pytestmark = pytest.mark.slow  # each executes notebooks or regenerates their outputs

REPO = Path(__file__).resolve().parents[1]
TASK_NOTEBOOKS = {"mrpc": "mrpc_experiment.ipynb", "rte": "rte_experiment.ipynb", "cola": "cola_experiment.ipynb"}
NOTEBOOKS = [*TASK_NOTEBOOKS.values(), "plots_for_preso.ipynb"]


# ------------------------------------------------------------------ committed notebooks: executed, clean, current

COMMITTED = [p.name for p in notebooks.notebooks()]


def _outputs(nb, kind=None):
    """The outputs of `nb`'s code cells (only those with data of MIME type `kind`, if given)."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind is None or kind in o.get("data", {})]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_notebook_is_executed_and_clean(name):
    nb = nbformat.read(REPO / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert set(nb.metadata) == {"kernelspec", "language_info"}, f"{name}: volatile notebook metadata"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is None for c in code), f"{name}: execution counts"
    assert not [k for c in nb.cells for k in c.metadata if k in notebooks.VOLATILE_CELL_METADATA]
    outputs = _outputs(nb)
    assert all(o.get("execution_count") is None for o in outputs)
    assert not [o for o in outputs if o.output_type in ("stream", "error") and o.get("name") != "stdout"]
    text = (REPO / name).read_text(encoding="utf-8")
    for local in (str(REPO), str(Path.home()), "site-packages"):  # paths of the machine that executed it
        assert local not in text, f"{name}: outputs name {local!r}"
    assert _outputs(nb, "image/png"), f"{name}: no figure; python -m utils.notebooks {name}"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{name}: need exactly one parameters cell"
    assert nb.cells[0].cell_type == "markdown"


def _shown(nb):
    """Per code cell: its source and its outputs, PNG bytes replaced by their MIME type."""
    def output(o):
        data = o.get("data") or {o.get("name", o.output_type): o.get("text", o.get("evalue"))}
        return {k: k if k.startswith("image/") else v for k, v in data.items()}
    return [(c.source, [output(o) for o in c.outputs]) for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def from_logs(tmp_path_factory):
    """Every committed notebook executed again from the repo's logs/ (in a folder of its own, so
    plots_for_preso's files go there, not to imgs/)."""
    try:
        notebooks.glue_folder()
    except notebooks.NoData as e:
        pytest.skip(f"{e}")
    cwd = tmp_path_factory.mktemp("from_logs")
    tracked = subprocess.run(["git", "ls-files", "logs"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():  # the committed logs, not a running sweep's new ones
        for rel in tracked.stdout.splitlines():
            (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, cwd / rel)
    else:  # not a git checkout: the logs as they are
        (cwd / "logs").symlink_to(REPO / "logs", target_is_directory=True)
    return {name: notebooks.execute(REPO / name, cwd=cwd) for name in COMMITTED}


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_outputs_are_what_the_logs_give(name, from_logs):
    committed = _shown(nbformat.read(REPO / name, as_version=4))
    fresh = _shown(from_logs[name])
    assert len(committed) == len(fresh)
    for (source, shown), (_, now) in zip(committed, fresh):
        assert shown == now, (f"{name}: the outputs of\n{source}\nare stale (they differ from what the committed "
                              f"logs give; regenerate with GLUE data: python -m utils.notebooks {name})")


def test_regeneration_without_data_refuses_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr("utils.glue.SHARED_GLUE", tmp_path / "no_shared_glue")
    before = {p: p.read_bytes() for p in notebooks.notebooks()}
    assert notebooks.main([]) == 1
    err = capsys.readouterr().err
    assert "GLUE_DIR" in err and "no notebook was written" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in notebooks.notebooks()} == before
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))  # set, but no GLUE files there
    with pytest.raises(notebooks.NoData, match="holds no GLUE data"):
        notebooks.execute(REPO / COMMITTED[0], cwd=tmp_path)


def test_finished_grid_reads_finished_runs_and_refuses_the_others(tmp_path):
    """What `utils.run_grid` is while the notebooks are executed: logs of finished runs, never a run."""
    committed = next((REPO / "logs" / "round1" / "mrpc").glob("mrpc_minilm_lora-fa_svd_r4_lr0.005_s0_*.json"))
    logged = with_legacy_defaults(json.loads(committed.read_text())["config"])
    base = RunConfig(**{f.name: logged[f.name] for f in dataclasses.fields(RunConfig) if f.name in logged})
    base = dataclasses.replace(base, log_dir=str(tmp_path))
    base.log_path.parent.mkdir(parents=True)
    shutil.copy(committed, base.log_path)
    assert [log["run_id"] for log in notebooks.finished_grid(base, {"seed": [0]}, progress=True)] == [base.run_id]
    with pytest.raises(notebooks.UnfinishedRuns, match=r"1 of 2 runs .*_s1_"):
        notebooks.finished_grid(base, {"seed": [0, 1]})
    running = {**json.loads(committed.read_text()), "status": "running"}
    base.log_path.write_text(json.dumps(running))
    with pytest.raises(notebooks.UnfinishedRuns, match=base.run_id):
        notebooks.finished_grid(base, {"seed": [0]})


def test_task_notebooks_differ_only_in_intro_and_parameters():
    nbs = [nbformat.read(REPO / n, as_version=4) for n in TASK_NOTEBOOKS.values()]
    shapes = {tuple(c.cell_type for c in nb.cells) for nb in nbs}
    assert len(shapes) == 1
    for i, cells in enumerate(zip(*(nb.cells for nb in nbs))):
        if i == 0 or "parameters" in cells[0].metadata.get("tags", []):
            continue  # the intro and the parameters name the task
        assert len({c.source for c in cells}) == 1, cells[0].source
    for task, nb in zip(TASK_NOTEBOOKS, nbs):
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert f'task = "{task}"' in params.source


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run the three task notebooks on a tiny grid, then plots_for_preso on their logs."""
    papermill = pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("notebooks")
    model = tiny_model_dir(tmp / "tiny_bert", "bert")
    glue = write_glue(tmp / "glue", n_train=16, n_dev=8)
    logs, imgs = tmp / "logs", tmp / "imgs"
    tiny = dict(model=str(model), inits=["random", "svd"], ranks=[2], lrs=[1e-2], seeds=[0], epochs=1,
                max_steps=2, batch_size=4, max_length=32, data_dir=str(glue), log_dir=str(logs),
                bf16=False, eval_every=1, round2_log_dir=str(tmp / "round2"), round3_log_dir=str(tmp / "round3"))
    out = {}
    for name in NOTEBOOKS:
        params = tiny if name in TASK_NOTEBOOKS.values() else dict(log_dir=str(logs), out_dir=str(imgs), round2_log_dir="",
                                                                         round3_log_dir="")
        out[name] = papermill.execute_notebook(
            str(REPO / name), str(tmp / f"out_{name}"), parameters=params, kernel_name="python3",
            cwd=str(REPO), progress_bar=False, execution_timeout=600)
    return out, logs, imgs


def test_task_notebooks_run_and_plot(executed):
    nbs, logs, _ = executed
    for task, name in TASK_NOTEBOOKS.items():
        runs = sorted((logs / task).glob("*.json"))
        assert len(runs) == 2, f"{task}: 2 inits x 1 seed expected, got {[p.name for p in runs]}"
        nb = nbs[name]
        assert len(_outputs(nb, "image/png")) == 2, f"{name}: history + lr summary figures"
        tables = [o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown")]
        assert any("| svd |" in t and "| random |" in t for t in tables)
        printed = "".join(o.get("text", "") for o in _outputs(nb, None))
        assert f"round 2, {task}: 0 of " in printed  # an empty round-2 folder: progress, no figures
        assert any(t.startswith("No finished round-3 run yet. Progress: 0 of 102") for t in tables)  # round 3 too


def test_plots_for_preso_writes_figures(executed):
    nbs, _, imgs = executed
    names = sorted(p.name for p in imgs.iterdir())
    for task in TASK_NOTEBOOKS:
        assert f"{task}_tiny-bert_r2_lr0.01_history.png" in names
    assert {"summary_final_metric.png", "summary_best_metric.png", "summary.md"} <= set(names)
    assert len(_outputs(nbs["plots_for_preso.ipynb"], "image/png")) == 5
