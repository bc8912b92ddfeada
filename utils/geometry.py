"""Where each init's frozen A points, measured on a task's real inputs: a diagnostic for the Results.

With A frozen, LoRA-FA trains only B, and for an adapted layer with inputs X (N, in) and output
gradients G (N, out) (s = alpha / r):

    dL/dB = s · Gᵀ (X Aᵀ)  (out, r),        ΔY = s · (X Aᵀ) ΔBᵀ  (N, out)

so the input energy that A lets through, ‖X Aᵀ‖², sets both the size of B's gradient and how far a
step of B moves the layer's output. For A with orthonormal rows it is a share of ‖X‖²:

    captured(A) = tr(A C Aᵀ) / tr(C),     C = Xᵀ X  (in, in), over the non-padding tokens,

which is r / in in expectation for a uniformly random orthonormal A (the `random` init) and at most
the share of C's r largest eigenvalues (Ky Fan). If `svd`'s A = V_rᵀ (W's top right singular vectors)
captures k times what the random A does, one learning rate moves the output about k times as far per
SGD step (gradient and its effect both scale with ‖X Aᵀ‖) and about √k times as far per AdamW step
(Adam's step is about lr per entry whatever the gradient's size): the same lr is not the same step
size across inits.

`svd` also moves the starting point (W_eff = W + W_r): `start_shift` = ‖X W_rᵀ‖ / ‖X Wᵀ‖ is the
relative change of the layer's output at step 0 (`pissa` starts at W, with `svd`'s A).

    python run_glue.py geometry --task mrpc --model minilm --rank 4
"""
from __future__ import annotations

import pandas as pd
import torch

from lora.inits import init_factors


@torch.no_grad()
def input_grams(model, names: list[str], batches) -> dict[str, torch.Tensor]:
    """{name: C = Σ xᵀx (in, in), float64} of the inputs of each named nn.Linear, summed over the
    non-padding tokens (attention_mask) of `batches` fed through `model` in eval mode."""
    grams = {n: None for n in names}  # the order of `names`, the order add_lora draws random A in
    mask = {}

    def hook(name):
        def fn(module, args):
            x = args[0][mask["m"]].double()  # (tokens, in)
            grams[name] = x.T @ x if grams[name] is None else grams[name] + x.T @ x
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        model.eval()
        for batch in batches:
            mask["m"] = batch["attention_mask"].bool()  # (batch, seq)
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in grams.values()):
        raise ValueError("no batches: the input Gram matrices are empty")
    return grams


def init_geometry(model, grams: dict[str, torch.Tensor], rank: int, kinds: dict[str, str] | None = None,
                  seed: int = 0, svd_method: str = "auto") -> pd.DataFrame:
    """One row per adapted layer: `uniform` = r / in, `random` and `svd` = captured(A) of each init's A
    (random A drawn as add_lora draws it with generator seed `seed`, layer by layer in `grams` order),
    `best` = the top-r eigenvalue share of C, `svd_over_random` and `start_shift` (module docstring).
    `kinds`: {name: label} to group layers by (e.g. the target suffix)."""
    rows, generator = [], torch.Generator().manual_seed(seed)
    for name, C in grams.items():
        W = model.get_submodule(name).weight.detach().double()  # (out, in)
        out_f, in_f = W.shape
        assert C.shape == (in_f, in_f), (name, C.shape, W.shape)
        total = torch.trace(C)
        A_rand, _ = init_factors("random", W, rank, 1.0, generator=generator)  # (r, in)
        A_svd, B_svd = init_factors("svd", W, rank, 1.0, svd_method=svd_method)  # (r, in), (out, r)
        W_r = B_svd @ A_svd  # (out, in), s = 1
        random, svd = (float(torch.trace(A @ C @ A.T) / total) for A in (A_rand, A_svd))
        rows.append({"module": name, "kind": (kinds or {}).get(name, ""), "out": out_f, "in": in_f,
                     "uniform": rank / in_f, "random": random, "svd": svd,
                     "best": float(torch.linalg.eigvalsh(C)[-rank:].sum() / total),
                     "svd_over_random": svd / random,
                     "start_shift": float(torch.sqrt(torch.trace(W_r @ C @ W_r.T) / torch.trace(W @ C @ W.T)))})
    return pd.DataFrame(rows)


def summarize_geometry(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over layers per kind, and over all layers ("all")."""
    cols = ["uniform", "random", "svd", "best", "svd_over_random", "start_shift"]
    out = df.groupby("kind", sort=False)[cols].mean()
    out["layers"] = df.groupby("kind", sort=False).size()
    out.loc["all"] = [*df[cols].mean(), len(df)]
    return out.astype({"layers": int})


def measure(task: str, model_name: str, rank: int = 4, targets: list[str] | None = None,
            examples: int = 512, batch_size: int = 32, max_length: int = 128, seed: int = 0,
            data_dir=None) -> pd.DataFrame:
    """`init_geometry` of `model_name`'s target layers on the first `examples` training examples of
    `task` (file order), tokenized as a run tokenizes them."""
    from lora.model import find_targets
    from utils.data import eval_loader, tokenize_glue
    from utils.glue import get_task, load_glue
    from utils.models import default_targets, load_model_and_tokenizer, matches_suffix

    t = get_task(task)
    model, tokenizer = load_model_and_tokenizer(model_name, t.num_labels)
    targets = list(targets or default_targets(model))
    names = find_targets(model, targets)
    kinds = {n: next(s for s in targets if matches_suffix(n, s)) for n in names}
    train = tokenize_glue(load_glue(t, data_dir), tokenizer, max_length)["train"]
    train = train.select(range(min(examples, len(train))))
    grams = input_grams(model, names, eval_loader(train, tokenizer, batch_size))
    return init_geometry(model, grams, rank, kinds, seed=seed)
