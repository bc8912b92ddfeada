"""Saving, loading and exporting adapters (safetensors; PEFT folder format for export)."""
import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .layers import LoRAFAParametrization, LoRAParametrization
from .model import adapted_modules, attach, get_lora_state_dict, is_adapted, lora_config
from .targets import check_untied, is_adaptable_type, is_fan_in_fan_out, weight_oi

FORMAT = "lora-fa-adapter/2"
# files of format 1 (written before the per-layer settings took PEFT's names) read as format 2
LEGACY_KEYS = {"lora-fa-adapter/1": {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout"},
               FORMAT: {}}
TRAINED = "trained::"  # key prefix of the other trained parameters in a saved file


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path in `path`'s folder (created if missing) to write the file to; when the
    block ends without an error the file is flushed to disk and renamed onto `path` (os.replace:
    readers see the old file or the new one, never half of one), else it is deleted.

        with lora.atomic_write("adapter.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give it the mode open() would have
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_tensors(tensors, path, metadata):
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def save_lora(model, path, include_trainable=True):
    """Save the adapters (A, B, B0), their config and, by default, every other trainable parameter.

    The config (per layer: r, lora_alpha, init, freeze_a, residual, lora_dropout, use_rslora; `lora_config`)
    is stored as safetensors metadata. Other parameters with requires_grad (e.g. a classifier
    head trained with the adapters) are saved too, so `load_lora` on the untouched base
    model rebuilds the exact fine-tuned model.
    """
    if not adapted_modules(model):
        raise ValueError("save_lora: the model has no LoRA adapters (call lora.add_lora first)")
    tensors = dict(get_lora_state_dict(model))
    if include_trainable:
        lora_keys = {k.rsplit(".", 1)[0] + "." for k in tensors}  # "<module>.parametrizations.weight.0."
        for k, v in model.named_parameters():
            if v.requires_grad and not any(k.startswith(p) for p in lora_keys):
                tensors[TRAINED + k] = v
    meta = {"format": FORMAT, "layers": json.dumps(lora_config(model))}
    _save_tensors(tensors, path, meta)


def read_lora(path):
    """(layers, tensors) of a file written by `save_lora`: {layer name: its `lora_config` entry}
    and every tensor under the model's own names (the adapters' state-dict keys
    `<layer>.parametrizations.weight.0.lora_A` ..., and the other trained parameters' names).
    Files of the older format are read too."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") not in LEGACY_KEYS:
            raise ValueError(f"{path}: not a LoRA adapter file saved by lora.save_lora "
                             f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        tensors = {k.removeprefix(TRAINED): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    renamed = LEGACY_KEYS[meta["format"]]
    layers = {name: {renamed.get(k, k): v for k, v in cfg.items()} for name, cfg in json.loads(meta["layers"]).items()}
    return layers, tensors


def load_lora(model, path):
    """Rebuild the adapters saved by `save_lora` on a model without adapters; returns the layer names.

    The other trained parameters saved with them (e.g. a classifier head) are copied into
    the model's parameters of the same name.
    """
    layers, tensors = read_lora(path)
    built = []  # check and build every adapter before attaching any: a failed load leaves the model as it was
    for name, cfg in layers.items():
        module = model.get_submodule(name)
        if not is_adaptable_type(module):
            raise ValueError(f"load_lora: module {name!r} is a {type(module).__name__}, not an nn.Linear or Conv1D")
        check_untied(model, name)
        if is_adapted(module):
            raise ValueError(f"load_lora: module {name!r} already has an adapter; load into the base model")
        prefix = f"{name}.parametrizations.weight.0."
        A, B, B0 = (tensors.pop(prefix + k) for k in ("lora_A", "lora_B", "lora_B0"))
        out_f, in_f = weight_oi(module).shape
        if A.shape != (cfg["r"], in_f) or B.shape != (out_f, cfg["r"]):
            raise ValueError(f"{path}: adapter for {name!r} has A {tuple(A.shape)}, B {tuple(B.shape)}; "
                             f"the model's weight is {(out_f, in_f)} (rank {cfg['r']})")
        cls = LoRAFAParametrization if cfg["freeze_a"] else LoRAParametrization
        W = module.weight
        p = cls(A.to(W), B.to(W), lora_alpha=cfg["lora_alpha"], init=cfg["init"], lora_dropout=cfg["lora_dropout"],
                residual=cfg["residual"], use_rslora=cfg.get("use_rslora", False),
                fan_in_fan_out=is_fan_in_fan_out(module))
        with torch.no_grad():
            p.lora_B0.copy_(B0)
        built.append((module, p))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))  # what is left: the other trained parameters
    if missing:
        raise ValueError(f"{path}: saved parameters {missing} name no parameter of the model")
    for module, p in built:
        attach(module, p)
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)
    return list(layers)


def copy_state(model, tensors, source="tensors"):
    """Copy `tensors` ({state-dict name: tensor}, e.g. `read_lora(path)[1]`) into the parameters and
    buffers of the same names of `model` (already adapted); ValueError naming any name it lacks."""
    state = model.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        if name not in state:
            raise ValueError(f"{source}: {name!r} is no parameter or buffer of the model")
        with torch.no_grad():
            state[name].copy_(tensor)


def export_peft(model, out_dir, base_model_name_or_path, modules_to_save=None, task_type=None):
    """Write a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    `peft.PeftModel.from_pretrained(base, out_dir)` on the original base model then gives
    the same outputs. Each layer exports lora_A = A and lora_B = ΔB (B − B0 for residual
    inits), so PEFT's s·lora_B·lora_A equals our W_eff − W and stays rank r.
    modules_to_save: names of non-adapter modules trained in full (e.g. the classifier head),
    exported whole, as PEFT does for its `modules_to_save`.
    """
    layers = adapted_modules(model)
    if not layers:
        raise ValueError("export_peft: the model has no LoRA adapters")
    tensors = {}
    for name, _, p in layers:
        if not p.enabled:
            raise ValueError(f"export_peft: adapter {name!r} is disabled; call lora.enable_lora first")
        tensors[f"base_model.model.{name}.lora_A.weight"] = p.lora_A
        tensors[f"base_model.model.{name}.lora_B.weight"] = p.delta_B()
    for mod_name in modules_to_save or []:
        for k, v in model.get_submodule(mod_name).state_dict().items():
            tensors[f"base_model.model.{mod_name}.{k}"] = v
    ranks = {n: p.r for n, _, p in layers}
    alphas = {n: p.lora_alpha for n, _, p in layers}
    dropouts = {getattr(p.lora_dropout, "p", 0.0) for _, _, p in layers}
    if len(dropouts) > 1:
        raise ValueError("export_peft: PEFT has one lora_dropout per adapter; layers differ")
    rslora = {p.use_rslora for _, _, p in layers}
    if len(rslora) > 1:
        raise ValueError("export_peft: PEFT has one use_rslora per adapter; layers differ")
    r0, a0 = next(iter(ranks.values())), next(iter(alphas.values()))
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": r0,
        "lora_alpha": a0,
        # exact module names, anchored so that "…query" cannot match another layer's suffix
        "target_modules": sorted(ranks),
        "rank_pattern": {f"^{n}$": r for n, r in ranks.items() if r != r0},
        "alpha_pattern": {f"^{n}$": a for n, a in alphas.items() if a != a0},
        "lora_dropout": dropouts.pop(),
        "bias": "none",
        # PEFT sets each layer's own flag from its type (Conv1D: True, nn.Linear: False) whatever this says
        "fan_in_fan_out": any(p.fan_in_fan_out for _, _, p in layers),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "init_lora_weights": True,
        "use_rslora": rslora.pop(),
        "inference_mode": True,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tensors(tensors, out_dir / "adapter_model.safetensors", {"format": "pt"})
    with atomic_write(out_dir / "adapter_config.json") as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2))
    return out_dir
