"""What each row of `bench/step.py` trains, and one timed training step of it.

  floor               nothing: all weights frozen, no optimizer step (the cost every method pays)
  head                the classification head (BERT: classifier + pooler), AdamW
  full                every parameter, AdamW
  peft-lora           PEFT LoRA A and B + head, AdamW
  peft-lora-frozen-a  PEFT LoRA with every lora_A frozen: B + head, AdamW
  peft-lorafa-opt     peft.optimizers.create_lorafa_optimizer (A frozen, projected B update) + head
  ours-lora           lora.add_lora(freeze_a=False): A and B + head, AdamW
  ours-lora-fa-plain  lora.add_lora(freeze_a=True) with set_fast_path(False): W_eff materialised
  ours-lora-fa        lora.add_lora(freeze_a=True), fast low-rank path (the default)
  ours-lora-fa-compiled  ours-lora-fa wrapped in torch.compile(fullgraph=True) (a graph break raises);
                      the optimizer step stays eager; compilation happens in the warm-up steps. The
                      word-embedding lookup runs eager and the model gets inputs_embeds that require grad
                      (the other rows' forward hook calls requires_grad_ inside the graph, which fullgraph refuses)

Adapters: rank 4, alpha 4 (scaling 1), no dropout, B = 0 at init (ours: init="random").
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import torch

from bench import common

VARIANTS = {
    "floor": "nothing (all frozen, no optimizer step)",
    "head": "head",
    "full": "all parameters",
    "peft-lora": "PEFT A, B + head",
    "peft-lora-frozen-a": "PEFT B (A frozen) + head",
    "peft-lorafa-opt": "PEFT B + head, LoraFAOptimizer",
    "ours-lora": "ours A, B + head",
    "ours-lora-fa-plain": "ours B + head, W_eff materialised",
    "ours-lora-fa": "ours B + head, fast path",
    "ours-lora-fa-compiled": "ours B + head, fast path, torch.compile(fullgraph=True)",
}
LR = 1e-4


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    times: list[float] = field(default_factory=list)  # wall seconds per timed step
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per timed step
    embed: object = None  # input_ids -> inputs_embeds that require grad (the compiled row), else None

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def lora_targets(model, kind: str) -> list[str]:
    from utils.adapters import all_linear_targets, default_targets  # noqa: PLC0415
    return default_targets(model) if kind == "attention" else all_linear_targets(model)


def build_variant(name: str, base, targets_kind: str, rank: int = 4, copy_model: bool = True,
                  compile_backend: str = "inductor") -> Variant:
    """A model (deep copy of `base`) and optimizer set up to train what `name` trains (see VARIANTS);
    `compile_backend`: torch.compile's backend for the -compiled row (tests use "aot_eager")."""
    import lora  # noqa: PLC0415
    from utils.adapters import set_trainable  # noqa: PLC0415
    from utils.models import head_modules  # noqa: PLC0415

    model = copy.deepcopy(base) if copy_model else base
    model.train()
    hook = common.make_embeddings_output_require_grad(model)
    targets = lora_targets(model, targets_kind)
    optimizer = None
    if name == "floor":
        model.requires_grad_(False)
    elif name in ("head", "full"):
        set_trainable(model, name)
    elif name.startswith("peft-"):
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
        peft_model = get_peft_model(model, config)  # wraps `model` in place; only its lora_A/B train
        for module in head_modules(model).values():  # + the head (and BERT pooler), as ours trains
            module.requires_grad_(True)
        optimizer = peft_lora_fa(name, peft_model, rank, LR)
        model = peft_model
    elif name.startswith("ours-"):  # ours-lora, ours-lora-fa(-plain, -compiled)
        lora.add_lora(model, r=rank, lora_alpha=rank, init="random", targets=targets,
                      freeze_a=name != "ours-lora", generator=torch.Generator().manual_seed(0))
        set_trainable(model, "lora")
        if name == "ours-lora-fa-plain":
            lora.set_fast_path(model, False)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if optimizer is None and name != "floor":
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    embed = None
    if name.endswith("-compiled"):  # the same parameters: the optimizer above steps them
        hook.remove()
        lookup = model.get_input_embeddings()
        embed = lambda ids: lookup(ids).detach().requires_grad_(True)  # noqa: E731
        model = torch.compile(model, fullgraph=True, backend=compile_backend)
    return Variant(name, model, optimizer, embed=embed)


def peft_lora_fa(name: str, peft_model, rank: int, lr: float):
    """PEFT's two ways to freeze A: for "peft-lorafa-opt" the optimizer of peft.optimizers.create_lorafa_optimizer
    (it freezes every lora_A itself); for "peft-lora-frozen-a" every lora_A frozen, and None (plain AdamW follows)."""
    if name == "peft-lorafa-opt":
        from peft.optimizers import create_lorafa_optimizer  # noqa: PLC0415
        return create_lorafa_optimizer(peft_model, r=rank, lora_alpha=rank, lr=lr)
    if name == "peft-lora-frozen-a":
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    return None


def make_batch(vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Random token ids (avoiding the first 5 ids, where special tokens live), full mask, labels."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, vocab_size, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g)}


def autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(v: Variant, batch: dict, dtype: str):
    if v.embed is not None:
        batch = {k: t for k, t in batch.items() if k != "input_ids"} | {"inputs_embeds": v.embed(batch["input_ids"])}
    with autocast(dtype):
        return v.model(**batch).loss


def train_step(v: Variant, batch: dict, dtype: str, seed: int) -> tuple[float, float]:
    """One step; returns (wall, process CPU) seconds. `seed` fixes dropout (same per step for all).

    CPU time barely moves when other processes compete for the cores (with one thread it is
    the work done), so it is the steadier measure on a shared machine; wall time is the target."""
    torch.manual_seed(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    if v.optimizer is not None:
        v.optimizer.zero_grad(set_to_none=True)
    loss = forward(v, batch, dtype)
    loss.backward()
    if v.optimizer is not None:
        v.optimizer.step()
    return time.perf_counter() - t0, time.process_time() - c0


def saved_bytes(v: Variant, batch: dict, dtype: str, seed: int):
    """(total MiB, activations-only MiB) that autograd saves during one forward of `v`."""
    torch.manual_seed(seed)
    loss, total, acts = common.saved_tensor_bytes(lambda: forward(v, batch, dtype),
                                                  exclude=common.model_storages(v.model))
    del loss
    return total / 2**20, acts / 2**20
