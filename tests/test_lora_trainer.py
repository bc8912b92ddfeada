"""transformers.Trainer on an adapted model: what trains (add_lora's frozen base + modules_to_save)
and what a checkpoint holds (`lora.trainer.LoRATrainer`: the adapter file, not the model)."""
import os

import pytest
import torch
from safetensors import safe_open
from transformers import Trainer, TrainingArguments

import lora
from lora.trainer import LoRATrainer
from tests.test_lora_common import ATTN, tiny_model, token_ids

pytestmark = pytest.mark.usefixtures("single_thread")
STEPS = 3


def dataset(n=8):
    ids = token_ids(batch=n, seq=9, seed=4)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(9, dtype=torch.long), "labels": i % 3}
            for i in range(n)]


def arguments(out):
    return TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=5e-2,
                             save_strategy="steps", save_steps=STEPS, logging_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, seed=0)


def adapted():
    model = tiny_model()
    lora.add_lora(model, r=2, targets=ATTN, modules_to_save=["classifier"], generator=torch.Generator().manual_seed(0))
    return model


def test_trainer_moves_only_the_adapters_and_the_head_and_saves_only_them(tmp_path):
    model = adapted()
    trained = {n for n, t in model.named_parameters() if t.requires_grad}
    assert trained == {n for n in trained if n.endswith(".lora_B") or n.startswith("classifier.")}
    assert len(trained) == len(ATTN) * 2 + 2
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    LoRATrainer(model=model, args=arguments(tmp_path), train_dataset=dataset()).train()
    moved = {n for n, t in model.named_parameters() if not torch.equal(t, before[n])}
    assert moved == trained

    ckpt = tmp_path / f"checkpoint-{STEPS}"
    files = {f: os.path.getsize(ckpt / f) for f in os.listdir(ckpt)}
    assert "adapter.safetensors" in files and not any(f.startswith(("model.", "pytorch_model")) for f in files)
    with safe_open(str(ckpt / "adapter.safetensors"), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert set(saved) == set(lora.get_lora_state_dict(model)) | {f"trained::{n}" for n in trained if "lora_" not in n}
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(trained)  # AdamW moments for the trained tensors only
    # the file is those tensors (A, B, B0, head) plus a header with the config, far below the model
    tensor_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    full = sum(t.numel() * t.element_size() for t in tiny_model().state_dict().values())
    assert tensor_bytes < files["adapter.safetensors"] < tensor_bytes + 8192 and tensor_bytes < full / 8

    # resuming reads the adapter file back: a fresh adapted model ends where the trained one did
    again = adapted()
    LoRATrainer(model=again, args=arguments(tmp_path), train_dataset=dataset()).train(resume_from_checkpoint=str(ckpt))
    for n, t in again.named_parameters():
        assert torch.equal(t, dict(model.named_parameters())[n]), n


def test_the_plain_trainer_trains_the_same_set_but_saves_the_whole_model(tmp_path):
    model = adapted()
    trained = {n for n, t in model.named_parameters() if t.requires_grad}
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    Trainer(model=model, args=arguments(tmp_path), train_dataset=dataset()).train()
    assert {n for n, t in model.named_parameters() if not torch.equal(t, before[n])} == trained
    assert "model.safetensors" in os.listdir(tmp_path / f"checkpoint-{STEPS}")  # why LoRATrainer exists
