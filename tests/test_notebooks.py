"""The four notebooks: committed clean, and executable end to end with papermill.

The task notebooks run a tiny grid (2 inits x 1 seed, 2 optimizer steps) of a tiny random BERT
on tiny GLUE-format files written here; plots_for_preso then draws those logs. Everything goes to
tmp_path; the repo's logs/ and imgs/ are never touched.
"""
import random
from pathlib import Path

import nbformat
import pytest

from tests.tiny import CORPUS, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
TASK_NOTEBOOKS = {"mrpc": "mrpc_experiment.ipynb", "rte": "rte_experiment.ipynb", "cola": "cola_experiment.ipynb"}
NOTEBOOKS = [*TASK_NOTEBOOKS.values(), "plots_for_preso.ipynb"]


def write_tiny_glue(root: Path, n_train: int = 16, n_dev: int = 8) -> Path:
    """MRPC, RTE and CoLA in the classic glue_data layout, random but fixed labels."""
    rng = random.Random(0)

    def write(folder, name, header, rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")

    for split, n in (("train", n_train), ("dev", n_dev)):
        pairs = [(rng.choice(CORPUS), rng.choice(CORPUS)) for _ in range(n)]
        write("MRPC", f"{split}.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n",
              [(str(i % 2), str(i), str(i + 1), a, b) for i, (a, b) in enumerate(pairs)])
        write("RTE", f"{split}.tsv", "index\tsentence1\tsentence2\tlabel\n",
              [(str(i), a, b, ("entailment", "not_entailment")[i % 2]) for i, (a, b) in enumerate(pairs)])
        write("CoLA", f"{split}.tsv", "", [("src", str(i % 2), "", a) for i, (a, _) in enumerate(pairs)])
    return root


# ------------------------------------------------------------------ committed notebooks are clean

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    nb = nbformat.read(REPO / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: clear outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{name}: need exactly one parameters cell"
    assert nb.cells[0].cell_type == "markdown"


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
    glue = write_tiny_glue(tmp / "glue")
    logs, imgs = tmp / "logs", tmp / "imgs"
    tiny = dict(model=str(model), inits=["random", "svd"], ranks=[2], lrs=[1e-2], seeds=[0], epochs=1,
                max_steps=2, batch_size=4, max_length=32, data_dir=str(glue), log_dir=str(logs),
                bf16=False, eval_every=1)
    out = {}
    for name in NOTEBOOKS:
        params = tiny if name in TASK_NOTEBOOKS.values() else dict(log_dir=str(logs), out_dir=str(imgs))
        out[name] = papermill.execute_notebook(
            str(REPO / name), str(tmp / f"out_{name}"), parameters=params, kernel_name="python3",
            cwd=str(REPO), progress_bar=False, execution_timeout=600)
    return out, logs, imgs


def _outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


def test_task_notebooks_run_and_plot(executed):
    nbs, logs, _ = executed
    for task, name in TASK_NOTEBOOKS.items():
        runs = sorted((logs / task).glob("*.json"))
        assert len(runs) == 2, f"{task}: 2 inits x 1 seed expected, got {[p.name for p in runs]}"
        nb = nbs[name]
        assert len(_outputs(nb, "image/png")) == 2, f"{name}: history + lr summary figures"
        tables = [o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown")]
        assert any("| svd |" in t and "| random |" in t for t in tables)


def test_plots_for_preso_writes_figures(executed):
    nbs, _, imgs = executed
    names = sorted(p.name for p in imgs.iterdir())
    for task in TASK_NOTEBOOKS:
        assert f"{task}_tiny-bert_r2_lr0.01_history.png" in names
    assert {"summary_final_metric.png", "summary_best_metric.png", "summary.md"} <= set(names)
    assert len(_outputs(nbs["plots_for_preso.ipynb"], "image/png")) == 5
