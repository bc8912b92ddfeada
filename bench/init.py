"""Adapter init time and accuracy: our inits against PEFT's PiSSA on the attention matrices.

    python bench/init.py                      # mpnet (48 x 768x768) and minilm (24 x 384x384)
    python bench/init.py --model tiny --repeats 1 --out /tmp/x   # smoke run

Each model is loaded once. For every repeat and every variant (interleaved: repeat 1 of
all variants, then repeat 2, ...) a deep copy of it is made (not timed) and only the call
that adds the adapters is timed: `lora.add_lora(copy, init=..., svd_method=...)` for ours,
`peft.get_peft_model(copy, LoraConfig(init_lora_weights=...))` for PEFT (which includes
wrapping the layers; the "PEFT default" row, no SVD, shows that overhead alone).
Rank 4, alpha 4 (scaling 1), targets = utils.models.default_targets (Q, K, V, O).

Accuracy: for each adapted layer the adapter's s·B·A is compared with W_r, the best
rank-4 approximation of the pretrained W from a float64 torch.linalg.svd (for milora:
the bottom-4 approximation); the column is the largest ‖s·B·A − W_r‖_F / ‖W_r‖_F over
layers. `random` has no target approximation (n/a).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common  # noqa: E402

RANK = 4
# name -> ("ours", add_lora kwargs) or ("peft", init_lora_weights)
VARIANTS = {
    "ours random": ("ours", dict(init="random")),
    "ours svd (lanczos)": ("ours", dict(init="svd", svd_method="lanczos")),
    "ours svd (full)": ("ours", dict(init="svd", svd_method="full")),
    "ours svd (randomized)": ("ours", dict(init="svd", svd_method="randomized")),
    "ours pissa (auto)": ("ours", dict(init="pissa", svd_method="auto")),
    "ours milora (full)": ("ours", dict(init="milora")),
    "PEFT default": ("peft", True),
    "PEFT pissa": ("peft", "pissa"),
    "PEFT pissa_niter_4": ("peft", "pissa_niter_4"),
}
REFERENCE = "PEFT pissa"
TARGET_ROW = "ours svd (lanczos)"  # what svd_method="auto" picks for rank 4 on these layers


def adapt(kind: str, spec, model, targets: list[str], seed: int):
    """Add rank-4 adapters to `model` (timed by the caller); returns the adapted model."""
    torch.manual_seed(seed)  # PEFT's kaiming A and randomized SVDs draw from the global RNG
    if kind == "ours":
        import lora  # noqa: PLC0415
        lora.add_lora(model, rank=RANK, alpha=RANK, targets=targets, freeze_a=True,
                      generator=torch.Generator().manual_seed(seed), **spec)
        return model
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, lora_dropout=0.0, init_lora_weights=spec)
    return get_peft_model(model, config)


def low_rank_products(kind: str, model, names: list[str]) -> dict[str, torch.Tensor]:
    """{layer name: s·B·A in float64} for the adapted layers (names relative to the base model)."""
    out = {}
    for n in names:
        if kind == "ours":
            p = model.get_submodule(n).parametrizations.weight[0]
            out[n] = p.scaling * (p.lora_B.double() @ p.lora_A.double())
        else:
            m = model.base_model.model.get_submodule(n)
            out[n] = m.scaling["default"] * (m.lora_B["default"].weight.double() @ m.lora_A["default"].weight.double())
    return out


def reference_approximations(model, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """{"top": {name: W_r}, "bottom": {name: bottom-r approximation}} from a float64 full SVD."""
    top, bottom = {}, {}
    for n in names:
        W = model.get_submodule(n).weight.detach().double()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        top[n] = (U[:, :RANK] * S[:RANK]) @ Vh[:RANK]
        bottom[n] = (U[:, -RANK:] * S[-RANK:]) @ Vh[-RANK:]
    return {"top": top, "bottom": bottom}


def max_relative_error(products: dict, refs: dict) -> float:
    return max(float(torch.linalg.norm(products[n] - refs[n]) / torch.linalg.norm(refs[n])) for n in products)


def bench_model(name: str, repeats: int, seed: int, variants: list[str]) -> tuple[list[list], list[str]]:
    """Rows of the table and the target lines for one model."""
    from lora.model import find_targets  # noqa: PLC0415
    from utils.models import default_targets  # noqa: PLC0415

    base = common.load_model(name, seed=seed).eval()
    targets = default_targets(base)
    layers = find_targets(base, targets)
    shape = "x".join(map(str, base.get_submodule(layers[0]).weight.shape))
    refs = reference_approximations(base, layers)
    times = {v: [] for v in variants}
    errors = {}
    for r in range(repeats):
        for v in variants:
            kind, spec = VARIANTS[v]
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            model = adapt(kind, spec, model, targets, seed)
            times[v].append(time.perf_counter() - t0)
            if r == 0 and not (kind == "ours" and spec["init"] == "random") and spec is not True:
                which = "bottom" if kind == "ours" and spec["init"] == "milora" else "top"
                errors[v] = max_relative_error(low_rank_products(kind, model, layers), refs[which])
            del model
        print(f"  [{name}] repeat {r + 1}/{repeats}", file=sys.stderr, flush=True)
    ref = times.get(REFERENCE)
    rows = [[name, v, f"{len(layers)} x {shape}", common.median(times[v]),
             common.paired_ratio(times[v], ref) if ref else None, errors.get(v)] for v in variants]
    lines = []
    if ref and TARGET_ROW in times:
        x, err = common.paired_ratio(times[TARGET_ROW], ref), errors[TARGET_ROW]
        ok = x <= 0.5 and err <= 1e-4
        lines.append(f"- {name}: {TARGET_ROW} takes {x:.3f} x {REFERENCE}'s time at max relative error "
                     f"{err:.1e} (target <= 0.5 x at <= 1e-4): {common.verdict(ok)}")
    return rows, lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mpnet,minilm", help="comma-separated: mpnet, minilm, tiny, folders")
    p.add_argument("--repeats", type=int, default=3)
    common.add_run_args(p, VARIANTS, "folder for init.md")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.model.split(",") if m.strip()]
    args.variants = common.split_variants(p, args.variants, VARIANTS)
    return args


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args)
    header = common.machine_header("Adapter init: time and accuracy")
    rows, lines = [], []
    for name in args.models:
        r, ln = bench_model(name, args.repeats, args.seed, args.variants)
        rows += r
        lines += ln
    columns = ["model", "init", "layers", "seconds (median)", f"x {REFERENCE}", "max rel. error"]
    notes = [
        f"Rank {RANK}, alpha {RANK}, attention targets (Q, K, V, O). Seconds: the add_lora / get_peft_model "
        f"call alone (median of {args.repeats}, interleaved); x {REFERENCE}: median of per-repeat ratios. "
        "Error: max over layers of ||s B A - W_r||_F / ||W_r||_F against a float64 torch.linalg.svd "
        "(milora: the bottom-r approximation); n/a for random inits. svd_method='auto' picks lanczos here.",
    ]
    text = "\n".join([header, *notes, "", common.markdown_table(columns, rows), "", *lines, ""])
    path = common.write_results(Path(args.out) / "init.md", text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
