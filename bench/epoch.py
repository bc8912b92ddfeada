"""MRPC epochs + dev evaluation: our runner (LoRA-FA) against transformers' Trainer + PEFT.

    python bench/epoch.py                                   # minilm, fp32 and bf16, PEFT LoRA and LoRA-FA
    python bench/epoch.py --max-steps 5 --dtypes fp32       # smoke run
    python bench/epoch.py --dtypes fp32 --epochs 3 --seeds 0 1 2 --grouping on,off --peft-methods lora-fa
                                                            # length grouping: wall time and paired dev F1
    python bench/epoch.py --model path/to/folder --data-dir path/to/glue --max-steps 2

Both sides get the same model (seeded, so the new head is identical), the same token ids
(utils.glue.load_glue + utils.data.tokenize_glue: pairs truncated longest-first to
--max-length, no padding), dynamic padding (DataCollatorWithPadding), batch --batch,
dev batch 2 x --batch, AdamW (torch) at --lr with weight decay 0.01 except biases and
LayerNorm weights, gradient clipping at 1.0, a linear schedule with 6% warm-up, rank-4
adapters (alpha 4, no dropout) on Q, K, V, O, the classification head (and BERT's pooler)
trained, the same seed (the data order differs: each side has its own sampler) and the same
length grouping (`--grouping`: ours `group_by_length`, Trainer `train_sampling_strategy="group_by_length"`; off: plain
shuffled batches). Both evaluate on dev at every epoch end.

* ours:    utils.run_experiment(RunConfig(method="lora-fa", init="random", ...)); --ours-methods
           lora-fa,lora adds our LoRA (A trained), the like-for-like row for PEFT LoRA
* trainer: peft.get_peft_model(LoraConfig(...)) + transformers.Trainer(use_cpu=True, bf16=...),
           save_strategy "no", then trainer.evaluate(); --peft-methods runs each of
             lora        PEFT LoRA, A and B trained, torch AdamW
             lora-fa     PEFT LoRA with every lora_A frozen ("PEFT LoRA, A frozen"), torch AdamW
             lorafa-opt  PEFT's own LoRA-FA: the Trainer given peft.optimizers.create_lorafa_optimizer
                         (it freezes lora_A and projects B's gradient) through optimizers=(opt, None),
                         so the Trainer builds the same linear warm-up schedule on it

Every run is a fresh subprocess of this script (`--worker ours|trainer --dtype ...`), so its
peak RSS (VmHWM) is its own; each round (per seed, per grouping) runs ours (each --ours-methods) then the Trainer (each
--peft-methods), --repeats rounds. Time = training + dev
evaluation (the timers of our runner, the calls to train() and evaluate() for the Trainer);
the process wall time (imports, model load, our checkpoint writes) is listed too.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy import stats  # noqa: E402

from bench import common  # noqa: E402
from bench.epoch_workers import RANK, WARMUP, run_worker, warm_token_cache  # noqa: E402
from utils.config import ADAPTER_METHODS  # noqa: E402

LABELS = {"lora-fa": "LoRA-FA", "lora": "LoRA"}  # ADAPTER_METHODS: A frozen or trained, for ours
# PEFT's rows: its LoRA with lora_A frozen is not PEFT's own LoRA-FA (peft.optimizers.create_lorafa_optimizer)
PEFT_LABELS = {"lora-fa": "PEFT LoRA, A frozen", "lora": "PEFT LoRA", "lorafa-opt": "PEFT create_lorafa_optimizer"}
PEFT_METHODS = tuple(PEFT_LABELS)


def default_data_dir() -> str | None:
    """None when $GLUE_DIR is set (load_glue reads it, and it is recorded as "$GLUE_DIR"), else the
    shared folder next to the repository, relative to the working directory (as one would type it)."""
    return None if os.environ.get("GLUE_DIR") else os.path.relpath(common.ROOT.parent / "shared" / "glue")


def spawn(args, worker: str, dtype: str, method: str, seed: int, group: bool) -> dict:
    """Run one worker subprocess; its JSON report (or {"error": ...}), labelled with its runner name."""
    name = f"{worker}-{method}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--dtype", dtype, "--model", args.model,
           *(["--data-dir", args.data_dir] if args.data_dir else []),  # none: the worker reads $GLUE_DIR too
           "--batch", str(args.batch), "--max-length", str(args.max_length), "--lr", str(args.lr), "--seed", str(seed),
           "--method", method, "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--group" if group else "--no-group"]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"{name}/{dtype} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"runner": name, "dtype": dtype, "seed": seed, "grouped": group,
                "error": proc.stderr.strip().splitlines()[-1:]}
    report = json.loads(lines[-1]) | {"runner": name}
    report["process_s"] = time.time() - t0  # includes interpreter start and imports
    return report


def _like_for_like(reports, r):
    """The Trainer + PEFT run that `r` is timed against: same dtype, seed and grouping; for ours the same
    method (else the other), for the Trainer rows PEFT LoRA with A frozen (else LoRA)."""
    same = r["runner"].split("-", 1)[1] if r["runner"].startswith("ours") else "lora-fa"
    for method in (same, *(m for m in ADAPTER_METHODS if m != same)):
        for ref in reports:
            if (ref["runner"], ref["dtype"], ref["seed"], ref["grouped"]) == (
                    f"trainer-{method}", r["dtype"], r["seed"], r["grouped"]) and "error" not in ref:
                return ref
    return None


def _grouping_line(name, dtype, pairs) -> str:
    """Grouped against plain batches over paired seeds: time ratio and F1 difference (target <= 0.6 x)."""
    ratios = [on["train_eval_s"] / off["train_eval_s"] for on, off in pairs]
    diffs = [on["metrics"]["f1"] - off["metrics"]["f1"] for on, off in pairs]
    mean = sum(diffs) / len(diffs)
    p = float(stats.ttest_rel([on["metrics"]["f1"] for on, _ in pairs],
                              [off["metrics"]["f1"] for _, off in pairs]).pvalue) if len(pairs) > 1 else float("nan")
    lower = mean < 0 and p < 0.05  # lower beyond seed noise: a paired t-test says so
    ok = common.median(ratios) <= 0.6 and not lower
    return (f"- {dtype}: {name}, grouped / plain batches: {common.median(ratios):.3f} x the train+eval time "
            f"(per seed {', '.join(f'{x:.3f}' for x in ratios)}), dev F1 grouped − plain {mean:+.4f} "
            f"(per seed {', '.join(f'{d:+.4f}' for d in diffs)}; paired t-test p {p:.2f}, n {len(pairs)}) "
            f"(target <= 0.6 x at an F1 not lower beyond seed noise): {common.verdict(ok)}")


def table(args, reports: list[dict]) -> str:
    """One row per run; `x Trainer` is against the Trainer + PEFT LoRA run with A frozen (LoRA if that was not run)
    of the same dtype, seed and grouping; then the target lines: ours vs Trainer per grouping (median
    of the per-seed ratios), and grouped vs plain batches per runner (paired over seeds)."""
    names = ({f"ours-{m}": f"ours (run_experiment, {LABELS[m]})" for m in ADAPTER_METHODS}
             | {f"trainer-{m}": f"Trainer + {label}" for m, label in PEFT_LABELS.items()})
    ok_runs = sorted((r for r in reports if "error" not in r),
                     key=lambda r: (list(names).index(r["runner"]), r["dtype"], not r["grouped"], r["seed"]))
    rows, lines = [], []
    for r in ok_runs:
        ref, m = _like_for_like(ok_runs, r), r["metrics"]
        rows.append([names[r["runner"]], r["dtype"], "yes" if r["grouped"] else "no", r["seed"], r["steps"],
                     r["trainable"], r["train_eval_s"], r["train_eval_s"] / ref["train_eval_s"] if ref else None,
                     r["process_s"], r["peak_rss_mib"], r.get("padding"), m.get("accuracy"), m.get("f1"),
                     r.get("dev_loss"), r.get("optimizer")])
    for dtype, group in itertools.product(args.dtypes, args.grouping):
        for r_name in [k for k in names if k.startswith("ours")]:
            runs = [r for r in ok_runs if (r["runner"], r["dtype"], r["grouped"]) == (r_name, dtype, group)]
            pairs = [(r, _like_for_like(ok_runs, r)) for r in runs if _like_for_like(ok_runs, r)]
            if not pairs:
                continue
            ratio = common.paired_ratio([r["train_eval_s"] for r, _ in pairs], [t["train_eval_s"] for _, t in pairs])
            f1, f1_ref = (common.median([x["metrics"]["f1"] for x in side]) for side in zip(*pairs))
            ok = ratio <= 1.0 and f1 >= f1_ref
            lines.append(f"- {dtype}, grouped {'yes' if group else 'no'}: {names[r_name]} takes {ratio:.3f} x the time "
                         f"of {names[pairs[0][1]['runner']]} (median over {len(pairs)} seeds), median dev F1 "
                         f"{f1:.4f} vs {f1_ref:.4f} (target <= 1.0 x at equal or better F1): {common.verdict(ok)}")
    for dtype, r_name in itertools.product(args.dtypes, names):
        by = {(r["seed"], r["grouped"]): r for r in ok_runs if (r["runner"], r["dtype"]) == (r_name, dtype)}
        pairs = [(by[s, True], by[s, False]) for s in args.seeds if (s, True) in by and (s, False) in by]
        if pairs:
            lines.append(_grouping_line(names[r_name], dtype, pairs))
    lines += [f"- {r['runner']}/{r['dtype']} seed {r['seed']} failed: {r['error']}" for r in reports if "error" in r]
    columns = ["runner", "dtype", "grouped", "seed", "steps", "trainable params", "train+eval s", "x Trainer",
               "process s", "peak RSS MiB", "padding eff.", "dev accuracy", "dev F1", "dev loss", "optimizer"]
    return "\n".join([common.markdown_table(columns, rows), "", *lines, ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--data-dir", default=default_data_dir(), help="GLUE folder (default $GLUE_DIR or ../shared/glue)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="paired seeds: every run is done per seed")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--grouping", default="on", help="comma-separated: on (length-grouped batches), off (plain)")
    p.add_argument("--peft-grouping", default=None, help="the Trainer's groupings (default: as --grouping)")
    p.add_argument("--peft-seeds", type=int, nargs="+", default=None, help="the Trainer's seeds (default: as --seeds)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--repeats", type=int, default=1, help="runs per (runner, dtype), alternating")
    p.add_argument("--peft-methods", default="lora,lora-fa", help="comma-separated PEFT references: lora, lora-fa "
                   "(PEFT LoRA with A frozen), lorafa-opt (PEFT's create_lorafa_optimizer)")
    p.add_argument("--ours-methods", default="lora-fa", help="comma-separated runs of ours: lora-fa, lora")
    p.add_argument("--method", choices=PEFT_METHODS, default="lora-fa", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the workers (0: default)")
    p.add_argument("--out", default=str(common.RESULTS), help="folder for epoch_<dtypes>.md")
    p.add_argument("--worker", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--group", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.peft_grouping = args.peft_grouping or args.grouping
    args.peft_seeds = args.seeds if args.peft_seeds is None else args.peft_seeds
    for flag in ("grouping", "peft_grouping"):
        grouping = [g.strip() for g in getattr(args, flag).split(",") if g.strip()]
        if not grouping or set(grouping) - {"on", "off"}:
            p.error(f"--{flag.replace('_', '-')} takes on and/or off, got {grouping}")
        setattr(args, flag, [g == "on" for g in grouping])
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if set(args.dtypes) - {"fp32", "bf16"}:
        p.error(f"--dtypes takes fp32 and/or bf16, got {args.dtypes}")
    for flag, allowed in (("peft_methods", PEFT_METHODS), ("ours_methods", ADAPTER_METHODS)):
        methods = [m.strip() for m in getattr(args, flag).split(",") if m.strip()]
        if not methods or set(methods) - set(allowed):
            p.error(f"--{flag.replace('_', '-')} takes {', '.join(allowed)}, got {methods}")
        setattr(args, flag, methods)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        import torch  # noqa: PLC0415
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_worker(args)))
        return
    header = common.machine_header(f"MRPC, {args.epochs} epoch(s): our runner vs Trainer + PEFT")
    warm_token_cache(args)
    reports = []
    for _, seed, dtype, group in itertools.product(range(args.repeats), args.seeds, args.dtypes,
                                                   sorted(set(args.grouping) | set(args.peft_grouping), reverse=True)):
        runners = ([("ours", m) for m in args.ours_methods] * (group in args.grouping)
                   + [("trainer", m) for m in args.peft_methods] * (group in args.peft_grouping
                                                                     and seed in args.peft_seeds))
        for worker, method in runners:  # interleaved: drift hits every runner of a round alike
            reports.append(spawn(args, worker, dtype, method, seed, group))
            print(f"  {reports[-1]['runner']}/{dtype} seed {seed} grouped {group} done", file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    settings = (f"MRPC, model {args.model}, rank {RANK}, batch {args.batch}, max length {args.max_length}, "
                f"lr {args.lr:g}, linear schedule with {WARMUP:.0%} warm-up, seeds {' '.join(map(str, args.seeds))}, "
                + (f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epoch(s)")
                + f", workers' torch threads {args.threads or 'default'}, data {common.data_dir_as_given(args.data_dir)}; "
                f"load average at the end: {load}")
    text = "\n".join([header, settings, "", table(args, reports)])
    stem = f"epoch_{'_'.join(args.dtypes)}" + (f"_{args.epochs}ep" if args.epochs != 1 else "")
    path = common.write_results(Path(args.out) / f"{stem}.md", text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
