"""Adapter init time and accuracy: our inits against PEFT's PiSSA, at several thread counts.

    python bench/init.py                      # mpnet + minilm, 1 and 2 threads, eva/grad on MRPC
    python bench/init.py --model tiny --data-model none --repeats 1 --out /tmp/x   # smoke run

Each model is loaded once. For every repeat, every thread count and every variant (interleaved:
repeat 1 of all of them, then repeat 2, ...) a deep copy of it is made (not timed) and only the
call that adds the adapters is timed: `lora.add_lora(copy, init=..., svd_method=...)` for ours,
`peft.get_peft_model(copy, LoraConfig(init_lora_weights=...))` for PEFT (which includes wrapping
the layers; the "PEFT default" row, no SVD, shows that overhead alone). Rank 4, alpha 4
(scaling 1), targets = utils.models.default_targets (Q, K, V, O).

Accuracy: for each adapted layer the adapter's s·B·A is compared with W_r, the best rank-4
approximation of the pretrained W from a float64 torch.linalg.svd (for milora: the bottom-4
approximation); the column is the largest ‖s·B·A − W_r‖_F / ‖W_r‖_F over layers. `random` has
no target approximation (n/a).

Data-aware inits (second table): `eva` and `grad` on `--data-model` with `--init-batches`
training batches of `--data-task` (drawn and tokenised as the runner does,
utils.data.calibration_batches), each beside the same number of plain passes over those
batches (eval mode): forwards for `eva`, forward + loss.backward() for `grad`, so the
difference is the init's own overhead (hooks, accumulators, the SVDs).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import lora  # noqa: E402
from bench import common  # noqa: E402

RANK = 4
# name -> ("ours", add_lora kwargs) or ("peft", init_lora_weights)
VARIANTS = {
    "ours random": ("ours", {"init": "random"}),
    "ours svd (auto)": ("ours", {"init": "svd", "svd_method": "auto"}),
    "ours svd (krylov)": ("ours", {"init": "svd", "svd_method": "krylov"}),
    "ours svd (lanczos)": ("ours", {"init": "svd", "svd_method": "lanczos"}),
    "ours svd (full)": ("ours", {"init": "svd", "svd_method": "full"}),
    "ours svd (randomized)": ("ours", {"init": "svd", "svd_method": "randomized"}),
    "ours pissa (auto)": ("ours", {"init": "pissa", "svd_method": "auto"}),
    "ours milora (full)": ("ours", {"init": "milora"}),
    "PEFT default": ("peft", True),
    "PEFT pissa": ("peft", "pissa"),
    "PEFT pissa_niter_4": ("peft", "pissa_niter_4"),
}
REFERENCE = "PEFT pissa"
TARGET_ROW, TARGET_RATIO, TARGET_ERROR = "ours svd (auto)", 0.3, 1e-6
# data-aware init -> the plain passes it is shown beside
DATA_ROWS = {"eva": "forward", "grad": "forward+backward"}


def adapt(kind: str, spec, model, targets: list[str], seed: int):
    """Add rank-4 adapters to `model` (timed by the caller); returns the adapted model."""
    torch.manual_seed(seed)  # PEFT's kaiming A and randomized SVDs draw from the global RNG
    if kind == "ours":
        lora.add_lora(model, r=RANK, lora_alpha=RANK, targets=targets, freeze_a=True,
                      generator=torch.Generator().manual_seed(seed), **spec)
        return model
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, lora_dropout=0.0, init_lora_weights=spec)
    return get_peft_model(model, config)


def low_rank_products(kind: str, model, names: list[str]) -> dict[str, torch.Tensor]:
    """{layer name: s·B·A in float64} for the adapted layers (names relative to the base model)."""
    if kind == "ours":
        return {n: p.scaling * (p.lora_B.double() @ p.lora_A.double()) for n, _, p in lora.adapted_modules(model)}
    out = {}
    for n in names:
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


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(name: str, args) -> dict[int, list[list]]:
    """{threads: table rows} for one model, every variant timed at every thread count."""
    from utils.adapters import default_targets  # noqa: PLC0415

    base = common.load_model(name, seed=args.seed).eval()
    targets = default_targets(base)
    layers = lora.find_targets(base, targets)
    shape = "x".join(map(str, base.get_submodule(layers[0]).weight.shape))
    refs = reference_approximations(base, layers)
    times = {(t, v): [] for t in args.thread_counts for v in args.variants}
    errors = {}
    for r in range(args.repeats):
        for t in args.thread_counts:
            torch.set_num_threads(t)
            for v in args.variants:
                kind, spec = VARIANTS[v]
                model = copy.deepcopy(base)
                t0 = time.perf_counter()
                model = adapt(kind, spec, model, targets, args.seed)
                times[t, v].append(time.perf_counter() - t0)
                if v not in errors and spec is not True and not (kind == "ours" and spec["init"] == "random"):
                    which = "bottom" if kind == "ours" and spec["init"] == "milora" else "top"
                    errors[v] = max_relative_error(low_rank_products(kind, model, layers), refs[which])
                del model
        print(f"  [{name}] repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
    rows = {}
    for t in args.thread_counts:
        ref = times.get((t, REFERENCE))
        rows[t] = [[name, v, f"{len(layers)} x {shape}", common.median(times[t, v]),
                    common.paired_ratio(times[t, v], ref) if ref else None, errors.get(v)] for v in args.variants]
    return rows


def calibration_data(args):
    """(model, target names, batches) for the data-aware rows: `--init-batches` training batches."""
    from transformers import set_seed  # noqa: PLC0415

    from utils.adapters import default_targets  # noqa: PLC0415
    from utils.data import calibration_batches, tokenize_glue  # noqa: PLC0415
    from utils.glue import get_task, load_glue  # noqa: PLC0415
    from utils.models import load_model_and_tokenizer  # noqa: PLC0415

    task = get_task(args.data_task)
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.data_model, task.num_labels)
    train = tokenize_glue(load_glue(task, args.data_dir), tokenizer, args.max_length)["train"]
    batches = calibration_batches(train, tokenizer, args.batch, seed=args.seed, n_batches=args.init_batches)
    return model.eval(), default_targets(model), batches


def plain_passes(model, batches, backward: bool) -> None:
    """One forward (and loss.backward()) per batch in eval mode: the cost the init itself adds to."""
    for b in batches:
        if backward:
            model(**b).loss.backward()
        else:
            with torch.no_grad():
                model(**b)
    model.zero_grad(set_to_none=True)


def bench_data_inits(args) -> dict[int, list[list]]:
    """{threads: rows}: eva / grad beside the same number of plain passes, interleaved."""
    base, targets, batches = calibration_data(args)
    times = {(t, k): [] for t in args.thread_counts for k in (*DATA_ROWS, *DATA_ROWS.values())}
    for r in range(args.repeats):
        for t in args.thread_counts:
            torch.set_num_threads(t)
            for init, passes in DATA_ROWS.items():
                model = copy.deepcopy(base)
                times[t, init].append(timed(lambda m=model, i=init: lora.add_lora(
                    m, r=RANK, lora_alpha=RANK, targets=targets, init=i, data=batches)))
                model = copy.deepcopy(base)
                times[t, passes].append(timed(lambda m=model, p=passes: plain_passes(m, batches, p != "forward")))
                del model
        print(f"  [{args.data_model} eva/grad] repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
    size = f"{len(batches)} x {batches[0]['input_ids'].shape[0]}"
    return {t: [[args.data_model, init, size, common.median(times[t, init]), f"{len(batches)} {passes}",
                 common.median(times[t, passes]), common.paired_ratio(times[t, init], times[t, passes])]
                for init, passes in DATA_ROWS.items()] for t in args.thread_counts}


def target_lines(rows: dict[int, list[list]]) -> list[str]:
    """One verdict per model and thread count: TARGET_ROW against REFERENCE."""
    lines = []
    for t, table in rows.items():
        for row in table:
            model, variant, _, _, ratio, err = row
            if variant == TARGET_ROW and ratio is not None and err is not None:
                ok = ratio <= TARGET_RATIO and err <= TARGET_ERROR
                lines.append(f"- {model}, {t} thread{'s' * (t > 1)}: {TARGET_ROW} takes {ratio:.3f} x {REFERENCE}'s "
                             f"time at max relative error {err:.1e} (target <= {TARGET_RATIO} x at <= "
                             f"{TARGET_ERROR:.0e}): {common.verdict(ok)}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mpnet,minilm", help="comma-separated: mpnet, minilm, tiny, folders")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-model", default="minilm", help="model of the eva/grad rows ('none': skip them)")
    p.add_argument("--data-task", default="mrpc", help="GLUE task whose training batches calibrate eva/grad")
    p.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"), help="glue_data folder (default: $GLUE_DIR)")
    p.add_argument("--init-batches", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    common.add_run_args(p, VARIANTS, "folder for init.md", thread_list="1,2")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.model.split(",") if m.strip()]
    args.variants = common.split_variants(p, args.variants, VARIANTS)
    args.thread_counts = common.thread_counts(p, args.threads)
    return args


def main(argv=None):
    args = parse_args(argv)
    start_load = common.load_average()
    header = common.machine_header("Adapter init: time and accuracy")
    rows = {t: [] for t in args.thread_counts}
    for name in args.models:
        for t, r in bench_model(name, args).items():
            rows[t] += r
    data_rows = bench_data_inits(args) if args.data_model != "none" else {}
    columns = ["model", "init", "layers", "seconds (median)", f"x {REFERENCE}", "max rel. error"]
    data_columns = ["model", "init", "batches", "seconds (median)", "plain passes", "seconds (median)",
                    "x plain passes"]
    notes = [
        f"Rank {RANK}, alpha {RANK}, attention targets (Q, K, V, O). Seconds: the add_lora / get_peft_model "
        f"call alone (median of {args.repeats}; repeats, thread counts and variants interleaved); x {REFERENCE}: "
        "median of per-repeat ratios at the same thread count. Error: max over layers of "
        "||s B A - W_r||_F / ||W_r||_F against a float64 torch.linalg.svd (milora: the bottom-r "
        "approximation); n/a for random inits. svd_method='auto' picks krylov here (batched block Krylov).",
        f"Load average (1, 5, 15 min) at start {start_load}, at end {common.load_average()}; thread counts "
        f"{', '.join(map(str, args.thread_counts))} (torch.set_num_threads).",
    ]
    sections = []
    for t in args.thread_counts:
        title = f"## {t} thread{'s' * (t > 1)} (torch.set_num_threads({t}); load average at start {start_load})"
        sections += [title, "", common.markdown_table(columns, rows[t]), ""]
        if data_rows:
            sections += [f"eva / grad: {args.init_batches} {args.data_task} training batches of {args.batch}, "
                         f"max length {args.max_length}, {t} thread{'s' * (t > 1)}:", "",
                         common.markdown_table(data_columns, data_rows[t]), ""]
    text = "\n".join([header, *notes, "", *sections, *target_lines(rows), ""])
    path = common.write_results(Path(args.out) / "init.md", text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
