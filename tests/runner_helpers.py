"""Helpers for the runner tests: tiny GLUE-format data folders and small RunConfigs."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.tiny import CORPUS

REAL_GLUE = Path(__file__).parents[1] / ".." / "shared" / "glue"
WORDS = sorted({w.strip(".,?").lower() for s in CORPUS for w in s.split()})


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " ."


def write_glue(root, n_train: int = 48, n_dev: int = 21, seed: int = 0) -> Path:
    """A GLUE folder with MRPC (pairs, header with BOM), CoLA (no header), STS-B (regression)
    and MNLI (two dev files) in the classic layout; labels are random but fixed by `seed`."""
    rng = random.Random(seed)
    root = Path(root)

    def write(folder, name, header, rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")

    for split, n in (("train", n_train), ("dev", n_dev)):
        write("MRPC", f"{split}.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n",
              [(str(rng.randint(0, 1)), str(i), str(i + 1), _sentence(rng), _sentence(rng)) for i in range(n)])
        write("CoLA", f"{split}.tsv", "",
              [("src", str(rng.randint(0, 1)), "", _sentence(rng)) for _ in range(n)])
        write("STS-B", f"{split}.tsv",
              "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
              [(str(i), "g", "f", "2012", "0", "n", "n", _sentence(rng), _sentence(rng), f"{rng.uniform(0, 5):.3f}")
               for i in range(n)])
    head = "index\tsentence1\tsentence2\tgold_label\n"
    labels = ("entailment", "neutral", "contradiction")
    for name, n in (("train.tsv", n_train), ("dev_matched.tsv", n_dev), ("dev_mismatched.tsv", n_dev - 4)):
        write("MNLI", name, head, [(str(i), _sentence(rng), _sentence(rng), rng.choice(labels)) for i in range(n)])
    return root


def tiny_config(tmp_path, model_dir, data_dir, **overrides):
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
