"""Model loading, LoRA target selection and trainable-parameter control.

1. `resolve_model` (in `utils.model_files`) turns a name into a folder or hub id:
   ``minilm`` and ``mpnet`` are offline aliases for pip-installed encoders.
2. `load_model_and_tokenizer` loads a sequence-classification model and its
   tokenizer: never remote code, only safetensors weights.
3. `default_targets` / `all_linear_targets` name the linear layers that
   adapters go into; `head_modules` names the classification head.
4. `set_trainable` freezes everything except what a method trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from utils.model_files import ALIASES, resolve_model

# --- 2. Loading ---

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_local_weights(folder: str) -> None:
    """Refuse folders whose weights are pickles (they can run code when loaded)."""
    files = os.listdir(folder)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise ValueError(
            f"{folder} only has pickled weights ({', '.join(pickled)}), which can run arbitrary "
            "code when loaded; this repo only loads *.safetensors. Convert them once in a trusted "
            "environment (model.save_pretrained(dir) writes safetensors) and use that folder.")
    raise FileNotFoundError(f"{folder} has no *.safetensors weights")


def load_model_and_tokenizer(name_or_path: str, num_labels: int, *, dtype: torch.dtype = torch.float32,
                             cache_dir: str | os.PathLike | None = None):
    """Load ``(model, tokenizer)`` for sequence classification.

    `num_labels` == 1 sets ``problem_type="regression"`` (STS-B); otherwise
    ``"single_label_classification"``.  Remote code is never trusted and only
    safetensors weights are loaded.

    Sentence-transformers checkpoints (``minilm``, ``mpnet``) carry no
    classification head, so the head is freshly initialised from torch's
    global RNG: seed (``transformers.set_seed``) *before* calling this to make
    the head reproducible.  BERT models also get the checkpoint's pooler.
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    path = resolve_model(name_or_path, cache_dir=cache_dir)
    is_local = os.path.isdir(path)
    if is_local:
        _check_local_weights(path)
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        with _without_load_report():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, problem_type=problem_type, dtype=dtype,
                use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except OSError as err:
        if is_local:
            raise OSError(f"Could not load the model folder {path}: {err}") from err
        raise OSError(
            f"Could not load {path!r} from the Hugging Face Hub: {err}\n"
            "The hub is probably unreachable from this machine. Pass a local folder "
            f"(config.json + *.safetensors + tokenizer files) or use one of the "
            f"offline aliases {ALIASES}."
        ) from err
    _report_loading(model, info, path)
    return model, tokenizer


class _DropLoadReport(logging.Filter):
    def filter(self, record):
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _without_load_report():
    """Hide transformers' per-load key table; `_report_loading` says what matters in its place."""
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    drop = _DropLoadReport()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _report_loading(model: nn.Module, info: dict, path: str) -> None:
    """One line when only the classification head is new (the usual case: it is then trained);
    a warning naming the keys when anything else is missing, unexpected or resized."""
    heads = tuple(f"{name}." for name in head_modules(model))
    missing = list(info.get("missing_keys") or [])
    others = [k for k in missing if not k.startswith(heads)]
    new_heads = sorted({k.split(".")[0] if k.startswith("classifier.") else k.rsplit(".", 1)[0]
                        for k in missing if k.startswith(heads)})
    if new_heads:
        print(f"{type(model).__name__} from {path}: new {', '.join(new_heads)} (not in the checkpoint, "
              f"initialised from the seeded RNG and trained)", file=sys.stderr)
    problems = {"missing": others, "unexpected": list(info.get("unexpected_keys") or []),
                "size-mismatched": [k for k, *_ in (info.get("mismatched_keys") or [])]}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        logging.getLogger(__name__).warning("loading %s: %s", path, "; ".join(
            f"{kind} keys {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
            for kind, keys in problems.items()))


# --- 3. Which modules get adapters, which form the head ---

# Module-name suffixes of the attention projections (Q, K, V, output), per
# `config.model_type`.  Explicit on purpose; tests check each suffix matches
# one nn.Linear per layer.  A name matches a suffix when it equals it or ends
# with "." + suffix.
ATTENTION_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o"],
}


def matches_suffix(name: str, suffix: str) -> bool:
    """True when module `name` is `suffix` or ends with ``"." + suffix``."""
    return name == suffix or name.endswith("." + suffix)


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
        if not any(matches_suffix(n, suffix) for n in linear_names):
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


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The classification head as ``{full_name: module}``.

    ``model.classifier`` for BERT, RoBERTa and MPNet (a Linear for BERT, a
    dense + out_proj ClassificationHead for the others), plus the encoder's
    pooler where the model uses one (BERT: ``bert.pooler``; RoBERTa and MPNet
    classifiers are built without a pooler).
    """
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `classifier` head")
    heads = {"classifier": classifier}
    prefix = getattr(model, "base_model_prefix", "")
    pooler = getattr(getattr(model, prefix, None), "pooler", None)
    if isinstance(pooler, nn.Module):
        heads[f"{prefix}.pooler"] = pooler
    return heads


# --- 4. Trainable parameters ---

METHODS = ("lora", "full", "head")


def _adapter_kind(name: str) -> str | None:
    """'A' or 'B' for LoRA factor parameters (``...lora_A`` or PEFT's ``lora_A.default.weight``)."""
    for part in reversed(name.split(".")):
        if part.endswith("lora_A"):
            return "A"
        if part.endswith("lora_B"):
            return "B"
    return None


def set_trainable(model: nn.Module, method: str, *, train_head: bool = True, train_biases: bool = False) -> int:
    """Set ``requires_grad`` for `method` and return the number of trainable parameters.

    * ``"full"``: every parameter.
    * ``"head"``: only the `head_modules` (plus all ``*.bias`` if `train_biases`).
    * ``"lora"``: the adapters (``lora_B`` always), plus the head if
      `train_head`, plus all ``*.bias`` parameters if `train_biases`
      (BitFit-style: every bias, LayerNorm and head biases included, even
      with ``train_head=False``).

    ``lora_A`` parameters are never touched by any method: LoRA-FA freezes A
    and the adapter code decides that; a trainable A stays trainable.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    head_ids = {id(p) for module in head_modules(model).values() for p in module.parameters()}
    found_adapter = False
    for name, param in model.named_parameters():
        kind = _adapter_kind(name)
        if kind == "A":
            found_adapter = True
            continue
        if kind == "B":
            found_adapter = True
            param.requires_grad_(method in ("lora", "full"))
            continue
        if method == "full":
            param.requires_grad_(True)
        else:
            in_head = id(param) in head_ids and (method == "head" or train_head)
            is_bias = train_biases and name.endswith(".bias")
            param.requires_grad_(in_head or is_bias)
    if method == "lora" and not found_adapter:
        raise ValueError("method='lora' but the model has no lora_A/lora_B parameters; inject adapters first")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; tied tensors count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
