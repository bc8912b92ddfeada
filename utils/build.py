"""Building the pieces of a run: seeding, the model with adapters, optimizer, lr schedule, Accelerator."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

import lora
from utils.config import ADAPTER_METHODS, DATA_INITS, RUN_SVD_AUTO, RunConfig
from utils.models import default_targets, load_model_and_tokenizer, set_trainable


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA): what transformers.set_seed does, without
    importing transformers.trainer_utils (which pulls in peft: seconds of start-up)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the peak lr, then linear decay to 0 at total_steps: the same
    factors as transformers.get_linear_schedule_with_warmup (tested), without its imports."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


def load_seeded(cfg: RunConfig, num_labels: int):
    """(model, tokenizer) with the fresh classification head drawn after seeding with cfg.seed."""
    seed_everything(cfg.seed)  # the fresh head is drawn from torch's global RNG
    return load_model_and_tokenizer(cfg.model, num_labels)


def adapt(model, cfg: RunConfig, data=None, loss_fn=None) -> dict:
    """Add cfg's adapters (data-aware inits compute A from `data`, a list of batches, with
    `loss_fn(model, batch)`) and set what trains; returns info: targets_resolved,
    adapted_modules, trainable_params."""
    names, targets = [], []
    if cfg.method in ADAPTER_METHODS:
        targets = list(cfg.targets or default_targets(model))
        data_args = {"data": data, "loss_fn": loss_fn} if cfg.init in DATA_INITS else {}
        names = lora.add_lora(model, r=cfg.rank, lora_alpha=cfg.alpha, init=cfg.init, targets=targets,
                              freeze_a=cfg.method == "lora-fa", lora_dropout=cfg.lora_dropout,
                              generator=torch.Generator().manual_seed(cfg.seed),
                              svd_method=RUN_SVD_AUTO if cfg.svd_method == "auto" else cfg.svd_method,
                              **data_args)
    n = set_trainable(model, "lora" if names else cfg.method, train_head=cfg.train_head,
                      train_biases=cfg.train_biases)
    return {"targets_resolved": targets, "adapted_modules": len(names), "trainable_params": n}


def build_model(cfg: RunConfig, num_labels: int, data=None, loss_fn=None):
    """(model, tokenizer, info): `load_seeded` then `adapt`."""
    model, tokenizer = load_seeded(cfg, num_labels)
    return model, tokenizer, adapt(model, cfg, data, loss_fn)


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. No weight decay on biases, normalisation weights and
    adapter factors: AdamW's decay pulls a parameter toward 0, which for an adapter B with a nonzero
    init B0 (`pissa`, `milora`) is not "toward the pretrained model"; leaving the adapters
    undecayed treats every init alike (the decay would be < 1 % over a whole run anyway)."""
    undecayed = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) or "Norm" in type(m).__name__
            for p in m.parameters(recurse=False)}
    undecayed |= {id(p) for p in lora.get_lora_params(model)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or id(p) in undecayed else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def process_state() -> PartialState:
    """The processes of this job (rank, world size). Without CUDA, cpu=True: that makes
    Accelerate use gloo when launched by torchrun / accelerate launch with several processes."""
    return PartialState(cpu=not torch.cuda.is_available())


def new_accelerator(cfg: RunConfig) -> Accelerator:
    """A fresh Accelerator per run (its shared state is reset, so runs of a grid may differ in
    bf16); the process group (PartialState) is kept for every run under torchrun."""
    process_state()
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())


def params_hash(model) -> str:
    """sha256 prefix of the trainable tensors, to check that all processes hold the same weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
