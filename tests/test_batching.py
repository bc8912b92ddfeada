"""Tests for length-grouped batches, length-sorted evaluation, the holdout slice and --threads."""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runner_helpers import tiny_run_config
from utils.config import RunConfig
from utils.data import (
    LengthGroupedBatches,
    calibration_batches,
    eval_loader,
    holdout_split,
    token_lengths,
    tokenize_glue,
    train_loader,
)
from utils.evaluate import evaluate
from utils.glue import get_task, load_glue
from utils.models import load_model_and_tokenizer
from utils.processes import new_accelerator
from utils.train import run_experiment


def _padding(batches, lengths):
    """real / padded tokens of a list of index batches."""
    real = sum(lengths[i] for b in batches for i in b)
    return real / sum(len(b) * max(lengths[i] for i in b) for b in batches)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 700), batch=st.integers(1, 40), seed=st.integers(0, 5), epoch=st.integers(0, 3),
       mega=st.integers(1, 6))
def test_grouped_batches_see_every_row_once(n, batch, seed, epoch, mega):
    lengths = np.random.default_rng(n).integers(3, 128, n).tolist()
    s = LengthGroupedBatches(lengths, batch, seed, mega=mega)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s) == -(-n // batch)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert sum(len(b) < batch for b in batches) <= 1 + (n - 1) // (mega * batch)  # short: a mega-batch's tail
    again = LengthGroupedBatches(lengths, batch, seed, mega=mega)
    again.set_epoch(epoch)
    assert list(again) == batches  # (seed, epoch) alone fix the order: the same for every init


def test_grouped_batches_are_random_and_pad_little():
    lengths = np.random.default_rng(0).integers(10, 128, 3668).tolist()
    s = LengthGroupedBatches(lengths, 32, seed=0)
    orders = []
    for seed, epoch in ((0, 0), (0, 1), (1, 0)):
        s.seed = seed
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] != orders[1] and orders[0] != orders[2]
    # within a mega-batch rows are sorted by length, but the batch order is shuffled: the first
    # batch is not always the longest, and consecutive batches are not sorted
    firsts = [max(lengths[i] for i in o[0]) for o in orders]
    assert len(set(firsts)) > 1
    means = [np.mean([lengths[i] for i in b]) for b in orders[0]]
    assert not (np.all(np.diff(means) <= 0) or np.all(np.diff(means) >= 0))
    plain = [list(range(k, min(k + 32, 3668))) for k in range(0, 3668, 32)]
    assert _padding(orders[0], lengths) > 0.97 and _padding(plain, lengths) < 0.75


def test_train_loader_batches_follow_the_sampler(tiny_models, glue_dir):
    _, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    train = tokenize_glue(load_glue("mrpc", glue_dir), tok, 32)["train"]
    loader, sampler = train_loader(train, tok, 5, seed=3)
    sampler.set_epoch(2)
    lengths = token_lengths(train)
    for rows, batch in zip(sampler, loader):
        assert batch["input_ids"].shape == (len(rows), max(lengths[i] for i in rows))
        assert batch["labels"].tolist() == [train[i]["labels"] for i in rows]
    plain, _ = train_loader(train, tok, 5, seed=3, group_by_length=False)
    assert len(plain) == len(loader) == -(-len(train) // 5)


@pytest.mark.parametrize("task", ["mrpc", "stsb", "mnli"])
def test_sorted_evaluation_gives_the_same_metrics_and_file_order(tiny_models, glue_dir, task):
    t = get_task(task)
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(str(tiny_models["bert"]), t.num_labels)
    tokens = tokenize_glue(load_glue(t, glue_dir), tok, 32)
    acc = new_accelerator(RunConfig())
    out = {}
    for sort in (False, True):
        loaders = {s: eval_loader(tokens[s], tok, 4, sort=sort) for s in t.dev_splits}
        assert (loaders[t.dev_splits[0]].order != list(range(len(tokens[t.dev_splits[0]])))) == sort
        orders = {s: dl.order for s, dl in loaders.items()}
        out[sort] = evaluate(model, loaders, t, acc, orders)
    (m0, loss0, p0), (m1, loss1, p1) = out[False], out[True]
    assert m1.keys() == m0.keys() and loss1 == pytest.approx(loss0, rel=1e-5)
    # A correlation of the tiny model's near-constant STS-B outputs moves by up to ~1e-4 when padding
    # moves a prediction by 1e-6; the predictions themselves are compared tightly below.
    tol = 1e-3 if t.is_regression else 1e-7
    for k in m0:
        assert m1[k] == pytest.approx(m0[k], rel=1e-5, abs=tol)
    for split in t.dev_splits:  # back in file order, labels as in the file
        assert np.array_equal(p1[split][1], np.asarray(tokens[split]["labels"], dtype=p1[split][1].dtype))
        np.testing.assert_allclose(p1[split][0], p0[split][0], rtol=1e-5, atol=1e-6)


def test_holdout_is_stratified_and_the_same_for_every_run():
    labels = [0] * 70 + [1] * 30
    keep, held = holdout_split(labels, 0.1)
    assert len(held) == 10 and sorted(keep + held) == list(range(100)) and not set(keep) & set(held)
    assert sum(labels[i] for i in held) == 3  # the class ratio of train
    assert holdout_split(labels, 0.1) == (keep, held)
    assert holdout_split(labels, 0.0) == (list(range(100)), [])
    assert len(holdout_split(np.linspace(0, 5, 50), 0.2, regression=True)[1]) == 10
    with pytest.raises(ValueError, match="stratified by label"):
        holdout_split([0] * 9 + [1], 0.5)


def test_calibration_batches_are_seeded_and_unused_by_epoch_orders(tiny_models, glue_dir):
    _, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    train = tokenize_glue(load_glue("mrpc", glue_dir), tok, 32)["train"]
    a, b = (calibration_batches(train, tok, 4, seed=1, n_batches=3) for _ in range(2))
    assert len(a) == 3 and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    c = calibration_batches(train, tok, 4, seed=2, n_batches=3)
    assert not torch.equal(a[0]["input_ids"][:, :3], c[0]["input_ids"][:, :3])
    assert {"input_ids", "attention_mask", "labels"} <= set(a[0])


def test_run_with_holdout_logs_both_splits(tmp_path, tiny_models, glue_dir):
    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, holdout=0.25, threads=1)
    log = run_experiment(cfg, progress=False)
    c, s = log["config"], log["summary"]
    assert c["holdout"] == 0.25 and c["group_by_length"] is True and c["threads"] == 1
    assert c["num_rows"] == {"train": 36, "holdout": 12, "dev": 21}
    assert all(set(h["holdout"]) == {"accuracy", "f1", "loss"} for h in log["history"])
    assert s["holdout"]["final"] == log["history"][-1]["holdout"]
    assert s["holdout"]["best"]["f1"]["value"] == max(h["holdout"]["f1"] for h in log["history"])
    assert 0 < s["padding_efficiency"] <= 1 and s["tokens_per_second"] > 0
    plain = run_experiment(dataclasses.replace(cfg, holdout=0.0, group_by_length=False), progress=False)
    assert "holdout" not in plain["history"][0] and "holdout" not in plain["summary"]
    assert s["padding_efficiency"] > plain["summary"]["padding_efficiency"]
    # the run id spells out every setting that changes results; threads do not
    ids = {dataclasses.replace(cfg, **o).run_id for o in ({}, {"holdout": 0.1}, {"group_by_length": False})}
    assert len(ids) == 3 and dataclasses.replace(cfg, threads=2).run_id == cfg.run_id


def test_threads_are_set_and_logged(tmp_path, tiny_models, glue_dir):
    log = run_experiment(tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, threads=2, max_steps=2),
                         progress=False)
    assert log["env"]["threads"] == 2 and log["config"]["threads"] == 2


@pytest.mark.parametrize("init", ["eva", "grad"])
def test_data_aware_inits_in_the_runner(tmp_path, tiny_models, glue_dir, init):
    from utils.adapters import adapt
    from utils.evaluate import example_losses
    from utils.models import load_seeded

    cfg = tiny_run_config(tmp_path, tiny_models["bert"], glue_dir, init=init, init_batches=2, holdout=0.25,
                      max_steps=1, keep_checkpoint=True)
    log = run_experiment(cfg, progress=False)
    assert log["config"]["init_batches"] == 2 and log["config"]["init_time_s"] > 0
    # the same A from the library, given the run's calibration batches (training part, run seed)
    c = cfg.canonical()
    model, tok = load_seeded(c, 2)
    task = get_task("mrpc")
    tokens = tokenize_glue(load_glue(task, glue_dir), tok, 32)["train"]
    keep, _ = holdout_split(load_glue(task, glue_dir).train["label"], 0.25)
    data = calibration_batches(tokens.select(keep), tok, 4, 0, 2)
    adapt(model, c, data, loss_fn=lambda m, b: example_losses(
        m(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"], task).mean())
    from safetensors import safe_open
    ckpt = next(c.ckpt_path.glob("step-*/trainable.safetensors"))
    with safe_open(str(ckpt), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys() if k.endswith("lora_A")}
    ours = {k: v for k, v in model.state_dict().items() if k.endswith("lora_A")}
    assert saved and set(saved) == set(ours)
    assert all(torch.equal(saved[k], ours[k]) for k in ours)  # A is frozen: the checkpoint holds the init
    # the setting is part of the run id for data-aware inits only
    assert dataclasses.replace(cfg, init_batches=3).run_id != cfg.run_id
    rnd = dataclasses.replace(cfg, init="random")
    assert dataclasses.replace(rnd, init_batches=3).run_id == rnd.run_id
