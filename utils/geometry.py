"""Where each init's frozen A points, measured on a task's real inputs: a diagnostic for the Results.

With A frozen, LoRA-FA trains only B, and for an adapted layer with inputs X (N, in) and output
gradients G (N, out) (s = alpha / r):

    dL/dB = s · Gᵀ (X Aᵀ)  (out, r),        δY = s · (X Aᵀ) δBᵀ  (N, out)

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

The gradient energy A captures is the other half of the picture: with G = Σ ∂loss/∂W (out, in) the
full-weight gradient, the best first step δB of B alone changes W by s·δB·A, which can follow G only
inside A's row space, a share

    grad_captured(A) = ‖G Aᵀ‖²_F / ‖G‖²_F     (`g_` columns; `g_best`: G's top-r singular values' share).

The data-aware inits maximise one each over r orthonormal rows, on the batches they were computed
from: `eva` the input energy (A = C's top eigenvectors), `grad` the gradient energy (A = G's top
right singular vectors). `measure` computes their A from the calibration batches a run with that
seed draws (`utils.data.calibration_batches`) and measures every share on other training rows.

    python run_glue.py geometry --task mrpc --model minilm --rank 4
"""
from __future__ import annotations

import pandas as pd
import torch

import lora

INPUT_COLUMNS = ("random", "svd", "eva", "grad")  # captured input energy of each init's A
GRAD_COLUMNS = tuple(f"g_{i}" for i in INPUT_COLUMNS)  # captured gradient energy


def frozen_As(model, names: list[str], rank: int, seed: int = 0, svd_method: str = "auto",
              cal_grams: dict | None = None, cal_grads: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{init: {name: A (r, in) float64}} as add_lora computes it: `random` drawn layer by layer in
    `names` order with generator seed `seed`, `svd` from W, `eva` / `grad` from the calibration
    statistics (`lora.input_grams` / `lora.weight_grads` of the calibration batches) when given."""
    generator, out = torch.Generator().manual_seed(seed), {i: {} for i in INPUT_COLUMNS}
    for n in names:
        W = model.get_submodule(n).weight.detach().double()  # (out, in)
        out["random"][n] = lora.init_random(W, rank, 1.0, generator=generator)[0]
        out["svd"][n] = lora.init_svd(W, rank, 1.0, svd_method=svd_method)[0]
        if cal_grams is not None:
            out["eva"][n] = lora.init_eva(W, rank, 1.0, stat=cal_grams[n], svd_method=svd_method)[0]
        if cal_grads is not None:
            out["grad"][n] = lora.init_grad(W, rank, 1.0, stat=cal_grads[n], svd_method=svd_method)[0]
    return {i: As for i, As in out.items() if As}


def init_geometry(model, grams: dict[str, torch.Tensor], rank: int, kinds: dict[str, str] | None = None,
                  seed: int = 0, svd_method: str = "auto", *, grads: dict | None = None,
                  cal_grams: dict | None = None, cal_grads: dict | None = None) -> pd.DataFrame:
    """One row per adapted layer (the keys of `grams`, C = XᵀX of the measured inputs): `uniform` = r / in,
    then per init (random, svd, and eva / grad where their calibration statistics are given) the input
    energy its A captures, tr(A C Aᵀ) / tr(C), `best` = the top-r eigenvalue share of C, and, where the
    measured gradients `grads` (G (out, in) per layer) are given, the gradient energy
    ‖G Aᵀ‖² / ‖G‖² (`g_<init>`) and `g_best`; plus `svd_over_random` and `start_shift` (module docstring).
    `kinds`: {name: label} to group layers by (e.g. the target suffix)."""
    names = list(grams)  # the order of `names`, the order add_lora draws random A in
    As = frozen_As(model, names, rank, seed=seed, svd_method=svd_method, cal_grams=cal_grams, cal_grads=cal_grads)
    rows = []
    for name, C in grams.items():
        W = model.get_submodule(name).weight.detach().double()  # (out, in)
        out_f, in_f = W.shape
        assert C.shape == (in_f, in_f), (name, C.shape, W.shape)
        total = torch.trace(C)
        row = {"module": name, "kind": (kinds or {}).get(name, ""), "out": out_f, "in": in_f, "uniform": rank / in_f}
        row.update({i: float(torch.trace(A[name] @ C @ A[name].T) / total) for i, A in As.items()})
        row["best"] = float(torch.linalg.eigvalsh(C)[-rank:].sum() / total)
        if grads is not None:
            G = grads[name].double()  # (out, in)
            g_total = G.square().sum()
            row.update({f"g_{i}": float((G @ A[name].T).square().sum() / g_total) for i, A in As.items()})
            row["g_best"] = float(torch.linalg.svdvals(G)[:rank].square().sum() / g_total)
        W_r = W @ As["svd"][name].T @ As["svd"][name]  # (out, in): U_r S_r V_rᵀ = W V_r V_rᵀ
        row["svd_over_random"] = row["svd"] / row["random"]
        row["start_shift"] = float(torch.sqrt(torch.trace(W_r @ C @ W_r.T) / torch.trace(W @ C @ W.T)))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_geometry(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over layers per kind, and over all layers ("all")."""
    order = ["uniform", *INPUT_COLUMNS, "best", *GRAD_COLUMNS, "g_best", "svd_over_random", "start_shift"]
    cols = [c for c in order if c in df.columns]
    out = df.groupby("kind", sort=False)[cols].mean()
    out["layers"] = df.groupby("kind", sort=False).size()
    out.loc["all"] = [*df[cols].mean(), len(df)]
    return out.astype({"layers": int})


def measure(task: str, model_name: str, rank: int = 4, targets: list[str] | None = None,
            examples: int = 512, batch_size: int = 32, max_length: int = 128, seed: int = 0,
            data_dir=None, init_batches: int = 8) -> pd.DataFrame:
    """`init_geometry` of `model_name`'s target layers (head drawn with `seed`, as a run draws it): eva
    and grad computed from the `init_batches` calibration batches a run with `seed` draws, every
    share measured on the first `examples` other training examples (file order), tokenized as a run
    tokenizes them."""
    from transformers import set_seed

    from utils.adapters import default_targets
    from utils.data import calibration_batches, eval_loader, tokenize_glue
    from utils.glue import get_task, load_glue
    from utils.models import load_model_and_tokenizer

    t = get_task(task)
    set_seed(seed)
    model, tokenizer = load_model_and_tokenizer(model_name, t.num_labels)
    targets = list(targets or default_targets(model))
    names = lora.find_targets(model, targets)
    kinds = {n: next(s for s in targets if lora.matches_suffix(n, s)) for n in names}
    train = tokenize_glue(load_glue(t, data_dir), tokenizer, max_length)["train"]
    calibration = calibration_batches(train, tokenizer, batch_size, seed=seed, n_batches=init_batches)
    used = {tuple(ids[m.bool()].tolist()) for b in calibration for ids, m in zip(b["input_ids"], b["attention_mask"])}
    held_out = [i for i, ids in enumerate(train["input_ids"]) if tuple(ids) not in used][:examples]
    if not held_out:
        raise ValueError(f"{task}: no training example is left outside the {init_batches} calibration batches "
                         f"of {batch_size}; use fewer or smaller batches")
    measured = list(eval_loader(train.select(held_out), tokenizer, batch_size))
    return init_geometry(model, lora.input_grams(model, names, measured), rank, kinds, seed=seed,
                         grads=lora.weight_grads(model, names, measured),
                         cal_grams=lora.input_grams(model, names, calibration),
                         cal_grads=lora.weight_grads(model, names, calibration))
