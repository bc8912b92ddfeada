"""What a run trains and how: where adapters go, the adapters of a RunConfig, which parameters
train, AdamW and its lr schedule.

1. `default_targets` / `all_linear_targets` name the linear layers that adapters go into.
2. `adapt` adds a RunConfig's adapters with `lora.add_lora`; `build_model` is the seeded model
   (`utils.models.load_seeded`) with them.
3. `set_trainable` freezes everything except what a method (`utils.config.METHODS`) trains;
   `make_optimizer` is AdamW over what trains, `linear_schedule` its lr; `params_hash`
   fingerprints the trained weights.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

import lora
from utils.config import ADAPTER_METHODS, DATA_INITS, METHODS, RunConfig
from utils.models import head_modules, load_seeded

# --- 1. Which modules get adapters ---

# Module-name suffixes of the attention projections (Q, K, V, output), per `config.model_type`.
# Explicit on purpose; tests check each suffix matches one nn.Linear per layer (`lora.matches_suffix`).
ATTENTION_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o"],
}


def default_targets(model: nn.Module) -> list[str]:
    """Suffixes of the attention projections (Q, K, V, O) for `model`'s architecture.

    Raises ValueError for an unknown ``config.model_type`` (pass explicit
    targets then) or when a suffix matches no nn.Linear in `model`.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ATTENTION_TARGETS:
        raise ValueError(
            f"No default LoRA targets for model_type {model_type!r} (known: "
            f"{sorted(ATTENTION_TARGETS)}); pass the target module names explicitly."
        )
    targets = list(ATTENTION_TARGETS[model_type])
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for suffix in targets:
        if not any(lora.matches_suffix(n, suffix) for n in linear_names):
            raise ValueError(f"Target {suffix!r} matches no nn.Linear in this {model_type} model")
    return targets


def all_linear_targets(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear inside the encoder layers (attention + MLP).

    Excludes embeddings, the pooler and the classification head.  Full names
    are valid suffixes too, so the result can be used wherever
    `default_targets` is.
    """
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    if encoder is None:
        raise ValueError(f"{type(model).__name__} has no base_model.encoder; pass targets explicitly")
    prefix = {id(m): n for n, m in model.named_modules()}[id(encoder)]
    return [f"{prefix}.{name}" for name, module in encoder.named_modules() if isinstance(module, nn.Linear)]


# --- 2. The adapters of a run ---

def adapt(model, cfg: RunConfig, data=None, loss_fn=None) -> dict:
    """Add cfg's adapters (data-aware inits compute A from `data`, a list of batches, with
    `loss_fn(model, batch)`) and set what trains; returns info: targets_resolved,
    adapted_modules, trainable_params."""
    names, targets = [], []
    if cfg.method in ADAPTER_METHODS:
        targets = list(cfg.targets or default_targets(model))
        data_args = {"data": data, "loss_fn": loss_fn} if cfg.init in DATA_INITS else {}
        # RunConfig's names (the run ids') onto the library's (PEFT's): rank -> r, alpha -> lora_alpha
        names = lora.add_lora(model, r=cfg.rank, lora_alpha=cfg.alpha, init=cfg.init, targets=targets,
                              freeze_a=cfg.method == "lora-fa", lora_dropout=cfg.lora_dropout,
                              generator=torch.Generator().manual_seed(cfg.seed),
                              svd_method=cfg.svd_method,
                              **data_args)
    n = set_trainable(model, cfg.method, train_head=cfg.train_head, train_biases=cfg.train_biases)
    return {"targets_resolved": targets, "adapted_modules": len(names), "trainable_params": n}


def build_model(cfg: RunConfig, num_labels: int, data=None, loss_fn=None):
    """(model, tokenizer, info): `load_seeded` then `adapt`."""
    model, tokenizer = load_seeded(cfg, num_labels)
    return model, tokenizer, adapt(model, cfg, data, loss_fn)


# --- 3. What trains ---

def set_trainable(model: nn.Module, method: str, *, train_head: bool = True, train_biases: bool = False) -> int:
    """Set ``requires_grad`` for `method` (one of `utils.config.METHODS`) and return the number of
    trainable parameters.

    * ``"full"``: every parameter.
    * ``"head"``: only the `head_modules` (plus all ``*.bias`` if `train_biases`).
    * ``"lora-fa"`` / ``"lora"``: the adapters' B (``lora_B``, always), plus the head if
      `train_head`, plus all ``*.bias`` parameters if `train_biases` (BitFit-style: every bias,
      LayerNorm and head biases included, even with ``train_head=False``).

    The adapters are those of `lora.adapted_modules`. Their ``lora_A`` is never touched by any
    method: `lora.add_lora` decides it (frozen for LoRA-FA), and a trainable A stays trainable.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    adapters = [p for _, _, p in lora.adapted_modules(model)]
    if method in ADAPTER_METHODS and not adapters:
        raise ValueError(f"method={method!r} but the model has no lora_A/lora_B parameters; add adapters first "
                         f"(lora.add_lora)")
    factors_A = {id(p.lora_A) for p in adapters}
    factors_B = {id(p.lora_B) for p in adapters}
    head_ids = {id(p) for module in head_modules(model).values() for p in module.parameters()}
    for name, param in model.named_parameters():
        if id(param) in factors_A:
            continue
        if id(param) in factors_B or method == "full":
            param.requires_grad_(method != "head")
        else:
            in_head = id(param) in head_ids and (method == "head" or train_head)
            is_bias = train_biases and name.endswith(".bias")
            param.requires_grad_(in_head or is_bias)
    return count_parameters(model, trainable_only=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; tied tensors count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the peak lr, then linear decay to 0 at total_steps: the same
    factors as transformers.get_linear_schedule_with_warmup (tested), without its imports."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


def params_hash(model) -> str:
    """sha256 prefix of the trainable tensors, to check that all processes hold the same weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
