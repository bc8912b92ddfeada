"""Per-layer statistics from calibration batches, for the data-aware inits (`eva`, `grad`).

Calibration data: an iterable of batches, each a dict that the model takes as `model(**batch)`
(tensors are moved to the device of the first named layer's weight). Both functions run the
model in eval mode (dropout off, so the statistics are deterministic) and give it back as it
came: every module's `training` flag, every parameter's `requires_grad` and `.grad`, and no
hook left behind, also when an exception is raised mid-way. Memory: one float64 accumulator
per layer, (in, in) or (out, in); activations are never kept.
"""
import contextlib
import weakref

import torch

from .targets import weight_oi


@contextlib.contextmanager
def calibrating(model):
    """Eval mode for the block; afterwards each module's mode, each parameter's requires_grad and
    .grad (the same tensor object, or None) are what they were before."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


def _on(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _forward(model, batch, loss_fn):
    return loss_fn(model, batch) if loss_fn is not None else model(**batch)


def _check_reached(counts, batches, what):
    """ValueError naming the layers that no batch reached (all of them when there were no batches)."""
    missing = [n for n, c in counts.items() if c == 0]
    if not batches:
        raise ValueError(f"calibration data is empty: no batches to compute the {what} of "
                         f"{', '.join(missing)} from")
    if missing:
        raise ValueError(f"calibration data never reaches the target layers {', '.join(missing)} "
                         f"(no {what} in {batches} batches); check the targets or the batches")


def input_grams(model, names, data, loss_fn=None):
    """{name: C = Xᵀ X (in, in), float64} for each named nn.Linear of `model`.

    X (N, in) stacks the layer's inputs over all calibration tokens. Where a batch has an
    `attention_mask` (batch, seq) and the layer's input is (batch, seq, in), padding positions
    (mask 0) are left out; other inputs (..., in) count every row. A forward pre-hook adds each
    call's xᵀx to the layer's accumulator, so no activation is kept. The forward is
    `loss_fn(model, batch)` if given, else `model(**batch)`, without autograd.
    """
    modules = {n: model.get_submodule(n) for n in names}
    device = next(iter(modules.values())).weight.device
    grams = {n: None for n in names}
    counts = dict.fromkeys(names, 0)
    state = {"seen": {}}  # this batch's mask, and {id(input): (weakref, xᵀx)} for inputs shared by layers

    def batch_gram(x):
        """xᵀx (in, in) float64 over the batch's non-padding rows; computed once per input tensor
        (query, key and value take the same one), held only while that tensor is alive."""
        hit = state["seen"].get(id(x))
        if hit is not None and hit[0]() is x:
            return hit[1]
        mask = state["mask"]
        rows = x[mask] if mask is not None and x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
        rows = rows.to(torch.float64)  # (tokens, in)
        gram = rows.T @ rows
        state["seen"][id(x)] = (weakref.ref(x), gram)
        return gram

    def hook(name):
        def add(module, args):
            gram = batch_gram(args[0])
            grams[name] = gram.clone() if grams[name] is None else grams[name].add_(gram)
            counts[name] += 1
        return add

    handles, batches = [], 0
    try:
        with calibrating(model), torch.no_grad():
            handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
            for batch in data:
                batches += 1
                batch = _on(batch, device)
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
                state["seen"].clear()
                _forward(model, batch, loss_fn)
            state["seen"].clear()
    finally:
        for h in handles:
            h.remove()
    _check_reached(counts, batches, "inputs")
    return grams


def weight_grads(model, names, data, loss_fn=None):
    """{name: G = Σ_batches ∂loss(batch)/∂W (out, in), float64} for each named layer's weight W
    (transposed from the stored (in, out) for a Conv1D).

    loss(batch) = `loss_fn(model, batch)` if given, else `model(**batch).loss` (a transformers
    model's batch mean when the batch has labels), taken at the model as it is (head
    included), in eval mode. One forward and one backward per batch; `torch.autograd.grad`
    returns the gradients without touching any parameter's .grad, and no other parameter's
    gradient is computed.
    """
    modules = {n: model.get_submodule(n) for n in names}
    weights = [m.weight for m in modules.values()]
    device = weights[0].device
    grads = {n: torch.zeros(weight_oi(m).shape, dtype=torch.float64, device=device) for n, m in modules.items()}
    counts, batches = dict.fromkeys(names, 0), 0
    with calibrating(model), torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        for batch in data:
            batches += 1
            batch = _on(batch, device)
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
            if loss is None:
                raise ValueError("init='grad': model(**batch).loss is None (the batches have no labels?); "
                                 "add labels or pass loss_fn(model, batch)")
            got = torch.autograd.grad(loss, weights, allow_unused=True)
            for n, g in zip(names, got):
                if g is not None:
                    grads[n].add_(weight_oi(modules[n], g).to(torch.float64))
                    counts[n] += 1
    _check_reached(counts, batches, "gradient")
    return grads


STATISTICS = {"eva": input_grams, "grad": weight_grads}


def calibration_stats(init, model, names, data, loss_fn=None):
    """The statistic that data-aware `init` decomposes, per named layer (see STATISTICS)."""
    return STATISTICS[init](model, names, data, loss_fn)
