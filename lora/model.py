"""Adding adapters to a model, and everything done to them afterwards.

Layers are chosen by module type (nn.Linear, transformers Conv1D) and an explicit list of
module-name suffixes (`lora.targets`). Each adapted layer gets one parametrization of its
`weight` (see `lora.layers`) and the fast-path forward (`adapted_linear_forward`, bound to the
module instance; removing the adapter deletes it again). As in PEFT, `add_lora` freezes every
other parameter except the `modules_to_save`, so that whatever trains what `requires_grad`
(an optimizer over `model.parameters()`, transformers' Trainer) trains the adapters and those.
"""
import copy
import types

import torch
from torch.nn.utils import parametrize

from .calibrate import calibration_stats
from .inits import DATA_INITS, INITS, SPECTRAL_INITS, top_r_svds
from .layers import MERGE_MODES, LoRAFAParametrization, LoRAParametrization, adapted_linear_forward
from .targets import find_modules_to_save, find_targets, is_fan_in_fan_out, weight_oi


def is_adapted(module):
    """True if `module.weight` carries one of our parametrizations."""
    return parametrize.is_parametrized(module, "weight") and isinstance(
        module.parametrizations.weight[0], LoRAParametrization)


def adapted_modules(model):
    """(name, module, parametrization) for every adapted layer, in module order."""
    return [(n, m, m.parametrizations.weight[0]) for n, m in model.named_modules() if is_adapted(m)]


def deepcopy_with_own_class(self, memo):
    """`copy.deepcopy` of an adapted module, whose replica gets a class of its own.

    parametrize puts the `weight` property on a class made for the module; a plain deepcopy shares
    that class, so removing the copy's adapter (which deletes the property from the class) would
    break the original. The replica's class is a new one with the same contents."""
    if id(self) in memo:
        return memo[id(self)]
    cls = type(self)
    own = type(cls.__name__, cls.__bases__, {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
    replica = own.__new__(own)
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)  # the bound fast-path forward is rebound to the replica
    return replica


def attach(module, parametrization):
    """Register `parametrization` on `module.weight`, freeze W, install the fast-path forward."""
    assert parametrization.fan_in_fan_out == is_fan_in_fan_out(module), "the adapter's weight layout"
    parametrize.register_parametrization(module, "weight", parametrization)
    type(module).__deepcopy__ = deepcopy_with_own_class  # the class parametrize made for this module only
    module.parametrizations.weight.original.requires_grad_(False)
    module.forward = types.MethodType(adapted_linear_forward, module)  # instance attribute


def detach(module, keep_weight=None):
    """Undo `attach`: remove the fast-path forward and the parametrization, restoring W (or `keep_weight`)."""
    module.__dict__.pop("forward", None)
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    if keep_weight is not None:
        with torch.no_grad():
            module.weight.copy_(keep_weight)


def add_lora(model, *, r=4, lora_alpha=None, init="random", targets=None, freeze_a=True,
             lora_dropout=0.0, generator=None, svd_method="auto", data=None, loss_fn=None,
             use_rslora=False, modules_to_save=None):
    """Add a rank-`r` adapter to each target layer of `model`; returns the adapted names.

    lora_alpha: the scaling is s = lora_alpha / r; lora_alpha defaults to r (s = 1), or to 1
                for init="seed" (the original project's setting).
    use_rslora: s = lora_alpha / √r instead (rsLoRA; PEFT's `use_rslora`).
    init: "random" | "svd" | "pissa" | "milora" | "seed" | "eva" | "grad" (see lora.inits).
    targets: None for every nn.Linear and transformers Conv1D except layers whose weight is tied
             to another parameter (an output head sharing the input embedding), else module-name
             suffixes, e.g. ["query", "key", "value", "attention.output.dense"] or GPT-2's
             ["c_attn", "c_proj"]; naming a tied layer or another module type is a ValueError.
    freeze_a: True is LoRA-FA (A frozen, only B trains); False is plain LoRA.
    lora_dropout: dropout probability on the adapter's input.
    generator: torch.Generator for init="random" (reproducible A).
    svd_method: how the SVD inits find the singular factors ("auto", "krylov", "lanczos", "full",
                "randomized"); same-shaped layers are solved together.
    data: calibration batches (an iterable of dicts, `model(**batch)`) for the data-aware
          inits "eva" and "grad", and only for them (see lora.calibrate).
    loss_fn: `loss_fn(model, batch)`, the loss "grad" differentiates (default
             `model(**batch).loss`), or the forward "eva" runs (default `model(**batch)`).
    modules_to_save: module-name suffixes of modules trained in full alongside the adapters
                     (e.g. ["classifier"]), as PEFT's; they stay trainable.
    Every other parameter of `model` is frozen (requires_grad=False), as PEFT does; the adapters'
    lora_B trains, and lora_A unless freeze_a. Every statistic and factor is computed before any
    adapter is attached or flag changed, so an error leaves the model untouched.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init in DATA_INITS and data is None:
        raise ValueError(f"init={init!r} computes A from calibration batches: pass data=<iterable of "
                         f"batches for model(**batch)>")
    if init not in DATA_INITS and (data is not None or loss_fn is not None):
        raise ValueError(f"init={init!r} does not use calibration data; data= and loss_fn= are for "
                         f"{' and '.join(DATA_INITS)} only")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"rank must be a positive integer, got r={r!r}")
    if lora_dropout < 0 or lora_dropout >= 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    names = find_targets(model, targets)
    save_names = find_modules_to_save(model, modules_to_save, names)
    modules = {n: model.get_submodule(n) for n in names}
    for n, m in modules.items():
        if is_adapted(m):
            raise ValueError(f"module {n!r} already has a LoRA adapter; call lora.remove_lora or "
                             f"lora.merge_lora first")
        if r > min(m.weight.shape):
            raise ValueError(f"rank {r} exceeds min(out, in) = {min(m.weight.shape)} of module {n!r} "
                             f"with weight shape {tuple(m.weight.shape)}")
    factors = dict.fromkeys(names)
    if init in SPECTRAL_INITS:  # the top-r SVDs of all layers at once: same-shaped ones in one batch
        stats = calibration_stats(init, model, names, data, loss_fn) if init in DATA_INITS else None
        sources = [stats[n] if stats else weight_oi(modules[n]).detach() for n in names]
        factors = dict(zip(names, top_r_svds(sources, r, method=svd_method)))
    cls = LoRAFAParametrization if freeze_a else LoRAParametrization
    # build every adapter before attaching any, so that an init error (e.g. init="seed" on a
    # non-square layer) leaves the model untouched instead of half adapted
    built = [(m, cls.from_linear(m, r=r, lora_alpha=lora_alpha, init=init, lora_dropout=lora_dropout,
                                 generator=generator, svd_method=svd_method, factors=factors[n],
                                 use_rslora=use_rslora))
             for n, m in modules.items()]
    for m, p in built:
        attach(m, p)
    freeze_base(model, save_names)
    return names


def freeze_base(model, modules_to_save=()):
    """requires_grad=False on every parameter except the adapters' factors (whose flags
    `add_lora` set) and those of the named `modules_to_save`, which train."""
    factors = {id(t) for _, _, p in adapted_modules(model) for t in (p.lora_A, p.lora_B)}
    save = {id(t) for n in modules_to_save for t in model.get_submodule(n).parameters()}
    for t in model.parameters():
        if id(t) not in factors:
            t.requires_grad_(id(t) in save)


def merge_lora(model):
    """Bake W_eff = W + s·ΔB·A (`lora.layers`) into plain weights and remove the adapters."""
    for _, m, p in adapted_modules(model):
        W = m.parametrizations.weight.original  # as stored: (out, in), or (in, out) for Conv1D
        acc = torch.promote_types(W.dtype, torch.float32)  # sum in float32 for bf16 models; float64 stays
        W_eff = (W.to(acc) + p.stored(p.delta_weight()).to(acc)).to(W.dtype)
        detach(m, keep_weight=W_eff)


def remove_lora(model):
    """Drop the adapters and restore the original pretrained W exactly (also after pissa/milora)."""
    for _, m, _ in adapted_modules(model):
        detach(m)


def enable_lora(model):
    """Switch every adapter's contribution back on."""
    for _, _, p in adapted_modules(model):
        p.enabled = True


def disable_lora(model):
    """Compute with the base weight: W for random/svd/seed, W − s·B0·A for pissa/milora."""
    for _, _, p in adapted_modules(model):
        p.enabled = False


def set_fast_path(model, enabled=True, *, merge="auto"):
    """Use the low-rank forward (default) or the plain materialised W_eff inside forward.

    merge (LoRA-FA's fast path): "auto" picks per call, from the shapes, between one GEMM with a
    transient W_eff and a separate rank-r term (`lora.layers.merge_is_cheaper`); "always" / "never"
    fix the route (the results agree to rounding; the speed differs)."""
    if merge not in MERGE_MODES:
        raise ValueError(f"set_fast_path: merge={merge!r}; choose one of {', '.join(MERGE_MODES)}")
    for _, _, p in adapted_modules(model):
        p.fast, p.merge = bool(enabled), merge


def get_lora_params(model):
    """The trainable adapter parameters: every lora_B, and lora_A unless it is frozen (LoRA-FA)."""
    return [t for _, _, p in adapted_modules(model) for t in (p.lora_A, p.lora_B) if t.requires_grad]


def mark_only_lora_trainable(model):
    """Freeze every parameter of `model` except the trainable adapter parameters."""
    keep = {id(t) for t in get_lora_params(model)}
    for t in model.parameters():
        t.requires_grad_(id(t) in keep)


def lora_config(model):
    """Per adapted layer: the settings needed to rebuild it (stored with saved adapters)."""
    return {n: {"r": p.r, "lora_alpha": p.lora_alpha, "init": p.init, "freeze_a": p.freeze_a,
                "residual": p.residual, "lora_dropout": getattr(p.lora_dropout, "p", 0.0),
                "use_rslora": p.use_rslora}
            for n, _, p in adapted_modules(model)}


def get_lora_state_dict(model):
    """Adapter tensors (lora_A, lora_B, lora_B0) under the model's own state-dict keys."""
    suffixes = (".lora_A", ".lora_B", ".lora_B0")
    return {k: v for k, v in model.state_dict().items() if k.endswith(suffixes)}
