"""The data a run trains on (utils.data: tokenising, its cache, per-batch padding, epoch order), its lr
schedule and its per-example losses, against transformers' and torch's own."""
import pytest
import torch
import torch.nn.functional as F

from utils.adapters import linear_schedule
from utils.data import EpochSampler, tokenize_glue, train_loader
from utils.evaluate import example_losses
from utils.glue import get_task, load_glue
from utils.models import load_model_and_tokenizer


def test_tokenised_data_is_cached_and_padded_per_batch(tmp_path, tiny_models, glue_dir, monkeypatch):
    monkeypatch.setenv("LORA_FA_CACHE", str(tmp_path))
    _, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    glue = load_glue("mrpc", glue_dir)
    first = tokenize_glue(glue, tok, 24)
    assert set(first) == {"train", "dev"} and len(first["dev"]) == 21
    assert set(first["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert max(len(x) for x in first["train"]["input_ids"]) <= 24
    monkeypatch.setattr(type(tok), "__call__", lambda *a, **k: pytest.fail("tokenised again"))
    second = tokenize_glue(glue, tok, 24)  # from the cache
    assert list(second["train"]["input_ids"]) == list(first["train"]["input_ids"])
    monkeypatch.undo()
    monkeypatch.setenv("LORA_FA_CACHE", str(tmp_path))
    assert len(list((tmp_path / "tokenized").iterdir())) == 1
    tokenize_glue(glue, tok, 16)  # another max_length: another entry
    assert len(list((tmp_path / "tokenized").iterdir())) == 2
    loader, sampler = train_loader(first["train"], tok, 4, seed=0)
    sampler.set_epoch(0)
    for batch in loader:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max()  # padded to the batch's longest row only


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(50, seed=1), EpochSampler(50, seed=1)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b) and list(a) != list(EpochSampler(50, seed=2))


def test_linear_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt, 7, 50)
        out = []
        for _ in range(55):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert lrs(linear_schedule) == lrs(get_linear_schedule_with_warmup)


def test_example_losses_match_torch_means():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    task = get_task("mnli")
    assert example_losses(logits, labels, task).mean() == pytest.approx(F.cross_entropy(logits, labels).item())
    reg = get_task("stsb")
    out, y = torch.randn(5, 1), torch.rand(5) * 5
    assert example_losses(out, y, reg).mean() == pytest.approx(F.mse_loss(out.squeeze(-1), y).item())
