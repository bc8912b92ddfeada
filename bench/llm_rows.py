"""What each row of `bench/llm_memory.py` trains on a random Llama-style decoder, and one measured step.

  full                every parameter, AdamW
  peft-lora           PEFT LoRA, A and B train, AdamW
  peft-lora-frozen-a  PEFT LoRA with every lora_A frozen: B trains, AdamW
  peft-lorafa-opt     PEFT LoRA + peft.optimizers.create_lorafa_optimizer (A frozen, projected B update)
  ours-lora-fa        lora.add_lora(freeze_a=True) (the fast path): B trains, AdamW
  ours-lora-fa+ckpt   the same with transformers' gradient checkpointing (non-reentrant, per decoder layer)
  floor               weights + the head alone: every weight frozen, nothing trains, no optimizer. Backward
                      still runs from the loss through the LM head and every decoder layer to the embeddings'
                      output, as in every row, so its saved activations are what the frozen network keeps
                      for that backward (norm inputs, attention, MLP activation, the head's log-softmax over
                      the vocabulary); no method that backpropagates through the decoder can keep less.

Adapters: rank r, alpha r (scaling 1), no dropout, B = 0 at init; the LM head and embeddings never train
(except in `full`). The model is random (`transformers.LlamaConfig`, nothing downloaded).
"""
from __future__ import annotations

import time

import torch

from bench import common
from bench.variants import peft_lora_fa
from utils import record

ROWS = {
    "full": "all parameters",
    "peft-lora": "PEFT A, B",
    "peft-lora-frozen-a": "PEFT B (A frozen)",
    "peft-lorafa-opt": "PEFT B, LoraFAOptimizer",
    "ours-lora-fa": "ours B",
    "ours-lora-fa+ckpt": "ours B, gradient checkpointing",
    "floor": "nothing (weights + head alone)",
}
ADAPTER_FREE = ("full", "floor")  # rows that do not depend on targets or rank
TARGETS = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
           "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
# (hidden, layers, heads, kv heads, intermediate); vocab 32000 (Llama 2's) except tiny
SIZES = {
    "tiny": (64, 2, 4, 4, 172),
    "125m": (768, 12, 12, 12, 2048),
    "350m": (1024, 24, 16, 16, 2816),
    "1b": (2048, 22, 32, 4, 5632),  # TinyLlama-1.1B's shape
    "7b": (4096, 32, 32, 32, 11008),  # Llama-2-7B's shape
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LR = 1e-4


def llama_config(size: str, max_tokens: int):
    from transformers import LlamaConfig  # noqa: PLC0415

    hidden, layers, heads, kv, inter = SIZES[size]
    return LlamaConfig(vocab_size=512 if size == "tiny" else 32000, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                       max_position_embeddings=max(2048, max_tokens), use_cache=False, attn_implementation="sdpa")


def build_model(size: str, max_tokens: int, seed: int, dtype: str, device: str):
    """A random LlamaForCausalLM of preset `size`, in train() mode, initialised on `device` itself (a 7B
    model's random init on the host would take minutes; CPU and CUDA generators differ, so do the weights)."""
    from transformers import LlamaForCausalLM  # noqa: PLC0415

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(size, max_tokens))
    return model.to(dtype=DTYPES[dtype]).train()


def build_row(name: str, model, targets: str, rank: int):
    """(model, optimizer or None) set up to train what row `name` trains (see ROWS)."""
    import lora  # noqa: PLC0415

    optimizer = None
    if name != "full":
        model.requires_grad_(False)
    model.enable_input_require_grads()  # backward reaches every layer even when no weight below trains
    if name.startswith("peft-"):
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[targets], lora_dropout=0.0)
        model = get_peft_model(model, config)
        optimizer = peft_lora_fa(name, model, rank, LR)
    elif name.startswith("ours-"):
        lora.add_lora(model, r=rank, lora_alpha=rank, init="random", targets=TARGETS[targets], freeze_a=True,
                      generator=torch.Generator().manual_seed(0))
        lora.mark_only_lora_trainable(model)  # base frozen whether or not add_lora freezes it itself
        if name == "ours-lora-fa+ckpt":
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif name not in ROWS:
        raise ValueError(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
    if optimizer is None and name != "floor":
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    return model, optimizer


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (Adam's moments, step counters)."""
    if optimizer is None:
        return 0
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values())


class PeakMemory:
    """Peak memory of one step above what the process held before the model was built:
    torch.cuda.max_memory_allocated on CUDA, the RSS high-water (VmHWM, `utils.record`) on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.start = torch.cuda.memory_allocated() if self.cuda else record.rss_now_mib() * 2**20

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            record.reset_peak_rss()

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.start
        return int(record.peak_rss_mib(since_reset=True) * 2**20 - self.start)


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measured_step(model, optimizer, batch: dict, peak: PeakMemory, device: str) -> dict:
    """One training step; the forward runs under saved_tensors_hooks (`common.saved_tensor_bytes`)."""
    peak.reset()
    sync(device)
    t0 = time.perf_counter()
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss, _, saved = common.saved_tensor_bytes(lambda: model(**batch).loss, exclude=common.model_storages(model))
    loss.backward()
    grads = tensor_bytes(p.grad for p in model.parameters())
    if optimizer is not None:
        optimizer.step()
    sync(device)
    return {"seconds": time.perf_counter() - t0, "saved": saved, "grads": grads,
            "optimizer": optimizer_bytes(optimizer), "peak": peak.peak()}


def timed_step(model, optimizer, batch: dict, device: str) -> float:
    """Wall seconds of one plain training step (no hooks, no peak reset): what a user's step costs."""
    sync(device)
    t0 = time.perf_counter()
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    if optimizer is not None:
        optimizer.step()
    sync(device)
    return time.perf_counter() - t0


def measure_row(spec: dict) -> dict:
    """Build spec's model and row, run a warm-up step (optimizer state exists after it), then one measured
    step per sequence length (shortest first), then spec["timed_steps"] plain steps at the longest length;
    returns the parameter counts, the list of measured steps and the plain steps' seconds ("timed")."""
    import peft  # noqa: F401, PLC0415
    from transformers import LlamaForCausalLM  # noqa: F401, PLC0415

    import lora  # noqa: F401, PLC0415 (imported before the baseline of the peak, as are these)

    device = spec["device"]
    peak = PeakMemory(device)
    seq_lens = sorted(spec["seq_lens"])
    model = build_model(spec["size"], spec["batch"] * seq_lens[-1], spec["seed"], spec["dtype"], device)
    model, optimizer = build_row(spec["row"], model, spec["targets"], spec["rank"])
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(spec["seed"])

    def batch(seq):
        ids = torch.randint(5, vocab, (spec["batch"], seq), generator=g).to(device)
        return {"input_ids": ids, "labels": ids}

    measured_step(model, optimizer, batch(min(32, seq_lens[0])), peak, device)  # warm-up
    steps = [{"tokens": spec["batch"] * s, **measured_step(model, optimizer, batch(s), peak, device)}
             for s in seq_lens]
    timed = [timed_step(model, optimizer, batch(seq_lens[-1]), device) for _ in range(spec.get("timed_steps", 0))]
    params = list(model.parameters())
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"  # CUDA: only in the child
    return {**spec, "device_name": name, "weights": tensor_bytes(params) + tensor_bytes(model.buffers()),
            "trainable": sum(p.numel() for p in params if p.requires_grad), "steps": steps, "timed": timed}
