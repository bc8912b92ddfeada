"""Tests for the run loop (utils.train): resume, checkpoints, failures, methods, configs and run ids.

Tiny random models on tiny GLUE-format folders (both tests/tiny.py),
plus one short real run: MiniLM on the real MRPC data in ../shared/glue.
"""
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from sklearn.metrics import accuracy_score, f1_score

import lora
from tests.runner_helpers import REAL_GLUE, Stop, needs_real_glue, stop_after_first_eval, tiny_run_config, without_times
from utils import checkpoint as ckpt
from utils.adapters import build_model, make_optimizer
from utils.config import RunConfig
from utils.glue import DataNotFoundError, get_task, load_glue
from utils.logs import load_predictions, load_runs, predictions_path, read_log
from utils.models import head_modules, load_model_and_tokenizer
from utils.train import TrainingDiverged, run_experiment


def _trainable(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---------------------------------------------------------------- the real run

@pytest.mark.slow
@needs_real_glue
def test_real_minilm_mrpc(tmp_path):
    torch.set_num_threads(2)  # a real model: both cores (the fixture restores the setting)
    cfg = RunConfig(task="mrpc", model="minilm", init="svd", rank=4, lr=5e-3, max_steps=20,
                    batch_size=16, max_length=64, eval_batch_size=64, data_dir=str(REAL_GLUE),
                    log_dir=str(tmp_path / "logs"), ckpt_dir=str(tmp_path / "ckpt"), log_every=4)
    log = run_experiment(cfg, progress=False)
    assert log["status"] == "finished" and log["error"] is None
    assert read_log(cfg.log_path) == json.loads(json.dumps(log))
    c, env, s = log["config"], log["env"], log["summary"]
    assert c["num_rows"] == {"train": 3668, "dev": 408} and c["data_source"].startswith("local:")
    assert c["main_metric"] == "f1" and c["targets_resolved"] == ["query", "key", "value", "attention.output.dense"]
    assert c["adapted_modules"] == 24 and c["processes"] == 1 and c["total_steps"] == 20
    assert {f.name for f in dataclasses.fields(RunConfig)} <= set(c)
    for key in ("git_commit", "python", "torch", "transformers", "accelerate", "peft", "project", "device",
                "threads", "processes", "host"):
        assert env[key] not in (None, "")
    assert env["project"] == lora.__version__
    assert [h["step"] for h in log["history"]] == [20]  # max_steps ends the run inside epoch 1: one eval
    assert [t["step"] for t in log["train_loss"]] == [4, 8, 12, 16, 20]
    # trainable: every B (out x r) of 24 layers, the classifier and BERT's pooler
    model, _, info = build_model(cfg.canonical(), 2)
    heads = sum(p.numel() for m in head_modules(model).values() for p in m.parameters())
    assert s["trainable_params"] == info["trainable_params"] == 24 * 384 * 4 + heads
    assert s["peak_rss_mb"] > 100 and s["wall_time_s"] > 0 and s["steps"] == 20
    assert s["param_hashes"] and not list(cfg.ckpt_path.parent.glob("*"))  # checkpoint deleted
    # dev metrics are scikit-learn's, computed on all 408 dev rows in file order
    preds = load_predictions(predictions_path(cfg.log_path))
    assert preds["step"] == 20
    pred, label = preds["dev"]["pred"], preds["dev"]["label"]
    assert len(pred) == 408 and np.array_equal(label, list(load_glue("mrpc", REAL_GLUE).dev["dev"]["label"]))
    assert s["final"]["accuracy"] == accuracy_score(label, pred)
    assert s["final"]["f1"] == f1_score(label, pred)
    assert s["best"]["f1"]["value"] == max(h["metrics"]["f1"] for h in log["history"])
    assert np.isfinite(s["final"]["dev_loss"])
    runs = load_runs(tmp_path / "logs")
    assert len(runs) == 1 and {"f1", "accuracy", "dev_loss", "lr_now"} <= set(runs.columns)


# ---------------------------------------------------------------- resume, skip, failures

@pytest.mark.parametrize("overrides", [
    dict(grad_accum=2, eval_every=3, lora_dropout=0.1),  # killed mid-epoch, between accumulation groups
    dict(arch="roberta", task="stsb", init="svd", reg_lambda=0.5),  # regression + regularizer
    dict(task="mnli", method="lora", bf16=True),  # two dev sets, A trained, bf16 autocast
])
def test_resume_gives_the_same_run(tmp_path, tiny_models, glue_dir, overrides):
    overrides = dict(overrides)
    model = tiny_models[overrides.pop("arch", "bert")]
    full = tiny_run_config(tmp_path / "a", model, glue_dir, keep_checkpoint=True, **overrides)
    ref = run_experiment(full, progress=False)
    cut = tiny_run_config(tmp_path / "b", model, glue_dir, keep_checkpoint=True, **overrides)
    with pytest.raises(Stop):
        run_experiment(cut, progress=False, on_eval=stop_after_first_eval)
    killed = read_log(cut.log_path)
    assert killed["status"] == "failed" and "killed after the first evaluation" in killed["error"]
    assert len(killed["history"]) == 1 and ckpt.latest_checkpoint(cut.ckpt_path) is not None
    resumed = run_experiment(dataclasses.replace(cut, resume=True), progress=False)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == killed["history"][0]["step"]
    assert resumed["summary"]["final"] == ref["summary"]["final"]
    assert without_times(resumed["history"]) == without_times(ref["history"]) and resumed["train_loss"] == ref["train_loss"]
    a = _trainable(ckpt.latest_checkpoint(full.ckpt_path) / "trainable.safetensors")
    b = _trainable(ckpt.latest_checkpoint(cut.ckpt_path) / "trainable.safetensors")
    assert a.keys() == b.keys() and any(k.endswith("lora_B") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_timed_checkpoints_resume_mid_epoch(tmp_path, tiny_models, glue_dir, monkeypatch):
    """checkpoint_minutes=0 saves after every optimizer step; a run killed right after a step that was no
    evaluation resumes from that step (not the last evaluation) to the uninterrupted run's numbers."""
    settings = dict(grad_accum=2, eval_every=5, max_steps=9, keep_checkpoint=True)
    ref = run_experiment(tiny_run_config(tmp_path / "a", tiny_models["bert"], glue_dir, **settings), progress=False)
    cut = tiny_run_config(tmp_path / "b", tiny_models["bert"], glue_dir, checkpoint_minutes=0, **settings)
    save, saved = ckpt.save_checkpoint, []

    def save_then_kill(run_dir, step, **kw):
        out = save(run_dir, step, **kw)
        saved.append(step)
        if step == 8:  # two steps into epoch 2 (evaluations at step 5 and at the epoch's end, step 6)
            raise Stop("killed after the step-8 checkpoint")
        return out

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_kill)
    with pytest.raises(Stop):
        run_experiment(cut, progress=False)
    assert saved == [1, 2, 3, 4, 5, 6, 7, 8] and [h["step"] for h in read_log(cut.log_path)["history"]] == [5, 6]
    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    resumed = run_experiment(dataclasses.replace(cut, resume=True), progress=False)
    assert resumed["resumed_from_step"] == 8 and resumed["summary"]["final"] == ref["summary"]["final"]
    assert without_times(resumed["history"]) == without_times(ref["history"]) and resumed["train_loss"] == ref["train_loss"]
    assert cut.run_id == ref["run_id"]  # how often a run checkpoints is not part of what it computes


def test_checkpoint_is_pickle_free_and_loads_with_lora(tmp_path, tiny_models, glue_dir):
    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, keep_checkpoint=True, max_steps=4)
    run_experiment(cfg, progress=False)
    folder = ckpt.latest_checkpoint(cfg.ckpt_path)
    assert sorted(p.suffix for p in folder.iterdir()) == [".json"] * 3 + [".safetensors"] * 3
    for p in folder.glob("*.json"):
        json.loads(p.read_text())
    state = json.loads((folder / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (4, 0, 4)
    # the trainable file is a lora.save_lora adapter: it rebuilds the trained model on the base model
    base, _ = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    lora.load_lora(base, folder / "trainable.safetensors")
    trained = lora.read_lora(folder / "trainable.safetensors")[1]  # tensors under the model's names
    for _, _, p in lora.adapted_modules(base):
        assert p.freeze_a and not p.lora_A.requires_grad
    assert torch.equal(base.classifier.weight, trained["classifier.weight"])


def test_finished_runs_are_skipped(tmp_path, tiny_models, glue_dir, monkeypatch):
    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, max_steps=2)
    first = run_experiment(cfg, progress=False)
    import utils.train

    monkeypatch.setattr(utils.train, "load_seeded", lambda *a, **k: pytest.fail("a finished run was rerun"))
    assert run_experiment(cfg, progress=False) == json.loads(json.dumps(first))
    monkeypatch.undo()
    again = run_experiment(dataclasses.replace(cfg, overwrite=True), progress=False)
    assert again["status"] == "finished" and again["summary"]["final"] == first["summary"]["final"]


@pytest.mark.parametrize("source", ["GLUE_DIR", "--data-dir"])
def test_logs_record_paths_as_given(tmp_path, tiny_models, glue_dir, monkeypatch, source):
    """No absolute path of this machine in a log: the data dir as given ($GLUE_DIR or the --data-dir string),
    its files relative to it, a log dir inside the working directory relative to it; argv likewise."""
    monkeypatch.chdir(tmp_path)
    typed = os.path.relpath(glue_dir, tmp_path)  # e.g. "../glue0", as a user would type it from here
    if source == "GLUE_DIR":
        monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    else:
        monkeypatch.delenv("GLUE_DIR", raising=False)
    given = "$GLUE_DIR" if source == "GLUE_DIR" else typed
    cfg = dataclasses.replace(tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, max_steps=2),
                              data_dir=None if source == "GLUE_DIR" else typed)
    monkeypatch.setattr(sys, "argv", ["run_glue.py", "--log-dir", str(tmp_path / "logs"), "--lr", "0.01",
                                      f"--extra={glue_dir}/MRPC", str(tiny_models["bert"])])
    log = run_experiment(cfg, progress=False)
    c = read_log(cfg.log_path)["config"]
    assert log["status"] == "finished" and c["num_rows"] == {"train": 48, "dev": 21}
    assert (c["data_source"], c["data_files"]) == (f"local:{given}", {"train": "MRPC/train.tsv", "dev": "MRPC/dev.tsv"})
    assert (c["data_dir"], c["log_dir"], c["ckpt_dir"]) == (None if source == "GLUE_DIR" else typed, "logs", "ckpt")
    assert log["env"]["argv"] == ["run_glue.py", "--log-dir", "logs", "--lr", "0.01", f"--extra={given}/MRPC",
                                  str(tiny_models["bert"])]  # outside the working directory and the repo: as is


def test_nan_loss_stops_the_run(tmp_path, tiny_models, glue_dir):
    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, lr=1e30, eval_every=1, clip_norm=None,
                      warmup_ratio=0.0, max_steps=10)
    with pytest.raises(TrainingDiverged, match="diverged at step .*lower learning rate"):
        run_experiment(cfg, progress=False)
    log = read_log(cfg.log_path)
    assert log["status"] == "failed" and log["error"].startswith("TrainingDiverged: training diverged")
    assert len(log["history"]) >= 1  # evaluations before the divergence are kept


def test_regularizer_is_in_the_training_loss_only(tmp_path, tiny_models, glue_dir):
    runs = {lam: run_experiment(tiny_run_config(tmp_path / str(lam), tiny_models["bert"], glue_dir, reg_lambda=lam,
                                            init="svd", keep_checkpoint=True, lr=0.05), progress=False)
            for lam in (0.0, 10.0)}
    h0, h1 = runs[0.0]["history"], runs[10.0]["history"]
    assert all(h["reg_loss"] == 0 for h in h0) and all(h["reg_loss"] > 0 for h in h1)
    assert [h["train_loss"] for h in h0] != [h["train_loss"] for h in h1]
    # the logged dev loss is the plain task loss of the final model, recomputed here without any regularizer
    cfg = tiny_run_config(tmp_path / "10.0", tiny_models["bert"], glue_dir, reg_lambda=10.0, init="svd", lr=0.05)
    model, tokenizer, _ = build_model(cfg.canonical(), 2)
    ckpt.load_trainable(model, ckpt.latest_checkpoint(cfg.ckpt_path) / "trainable.safetensors")
    dev = load_glue("mrpc", glue_dir).dev["dev"]
    model.eval()
    with torch.no_grad():
        enc = tokenizer(list(dev["sentence1"]), list(dev["sentence2"]), truncation=True, max_length=32, padding=True,
                        return_tensors="pt")
        loss = F.cross_entropy(model(**enc).logits, torch.tensor(list(dev["label"])))
    assert runs[10.0]["summary"]["final"]["dev_loss"] == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("method, arch, task", [("head", "mpnet", "cola"), ("full", "roberta", "mrpc"),
                                                ("lora", "bert", "stsb")])
def test_methods_and_tasks(tmp_path, tiny_models, glue_dir, method, arch, task):
    cfg = tiny_run_config(tmp_path, tiny_models[arch], glue_dir, method=method, task=task, max_steps=3, eval_every=None)
    log = run_experiment(cfg, progress=False)
    model, _, info = build_model(cfg.canonical(), get_task(task).num_labels)
    n_all = sum(p.numel() for p in model.parameters())
    heads = sum(p.numel() for m in head_modules(model).values() for p in m.parameters())
    expected = {"head": heads, "full": n_all, "lora": None}[method]
    if method == "lora":  # A and B of 8 adapted layers (32 x 32, rank 2) plus the head
        expected = 8 * 2 * (32 * 2) + heads
    assert log["summary"]["trainable_params"] == expected == info["trainable_params"]
    assert log["config"]["init"] == ("random" if method == "lora" else "none")
    assert set(log["summary"]["final"]) == set(get_task(task).metrics) | {"dev_loss"}


def test_weight_decay_spares_adapters_biases_and_norms(tmp_path, tiny_models, glue_dir):
    """With zero gradients one AdamW step only applies decoupled decay: p <- p (1 - lr wd).
    The pissa B (nonzero init) must not move; a head weight must shrink by exactly that factor."""
    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, method="lora-fa", init="pissa", weight_decay=0.5)
    model, _, _ = build_model(cfg.canonical(), 2)
    opt = make_optimizer(model, cfg)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in named.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {n for n in named if not torch.equal(named[n], before[n])}
    assert decayed == {n for n in named if n.endswith("weight") and "lora" not in n and "LayerNorm" not in n}
    assert decayed  # the classifier weights
    for n in decayed:
        torch.testing.assert_close(named[n], before[n] * (1 - cfg.lr * 0.5), rtol=0, atol=1e-7)
    assert any("lora_B" in n and before[n].abs().sum() > 0 for n in named)  # pissa B0 != 0 was kept


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize("overrides, error, match", [
    (dict(task="nope"), ValueError, "unknown GLUE task 'nope'"),
    (dict(init="gaussian"), ValueError, "unknown init 'gaussian'"),
    (dict(method="adapter"), ValueError, "unknown method 'adapter'"),
    (dict(rank=0), ValueError, "rank must be"),
    (dict(lr=-1.0), ValueError, "lr must be"),
    (dict(method="head", reg_lambda=0.1), ValueError, "reg_lambda needs adapters"),
    (dict(svd_method="qr"), ValueError, "unknown svd_method"),
    (dict(data_dir="/no/such/glue"), DataNotFoundError, "does not exist"),
])
def test_bad_input_is_reported(tmp_path, overrides, error, match):
    cfg = dataclasses.replace(RunConfig(log_dir=str(tmp_path)), **overrides)
    with pytest.raises(error, match=match):
        run_experiment(cfg, progress=False)
    assert not list(tmp_path.rglob("*.json"))  # nothing starts


def test_run_id():
    a = RunConfig(task="MRPC", model="/some/where/my-model/", init="svd", lr=4e-4, seed=3)
    assert a.run_id.startswith("mrpc_my-model_lora-fa_svd_r4_lr0.0004_s3_") and a.run_id == a.run_id
    assert dataclasses.replace(a, log_dir="x", data_dir="y", resume=True, eval_batch_size=7).run_id == a.run_id
    assert dataclasses.replace(a, alpha=8, reg_lambda=0).run_id == dataclasses.replace(a, alpha=8.0).run_id
    for change in (dict(batch_size=8), dict(reg_lambda=0.1), dict(model="/elsewhere/my-model"), dict(bf16=True)):
        assert dataclasses.replace(a, **change).run_id != a.run_id
    head = RunConfig(method="head")
    assert dataclasses.replace(head, init="svd", rank=8).run_id == head.run_id
    assert a.log_path.as_posix().endswith(f"logs/mrpc/{a.run_id}.json")
