"""One training step (forward + backward + optimizer step) of a real encoder, per method.

    python bench/step.py                          # minilm, attention targets, fp32
    python bench/step.py --targets all-linear --dtype bf16
    python bench/step.py --all                    # fp32/bf16 x attention/all-linear, one file
    python bench/step.py --dtype fp32 --targets attention all-linear   # any subset of those
    python bench/step.py --model tiny --steps 2 --warmup 1 --no-rss --out /tmp/x   # smoke run
    python bench/step.py --variants floor,peft-lora-frozen-a,ours-lora-fa,ours-lora-fa-compiled --threads 1
                                                  # the compiled row (compiles during the warm-up rounds)

Every variant starts from the same model (one load, deep copies), gets the same random
batch (batch x seq token ids, all attended, random labels), runs in train() mode with
dropout seeded identically per step, and has a forward hook that makes the embeddings'
output require grad: backward therefore runs through every encoder layer in EVERY
variant, so the rows differ only by what they train (`bench/variants.py`).

Timing is interleaved: all models are built first, then each round runs one step of every
variant in turn, so drift (other processes) hits all of them alike; the ratios are medians
of per-round ratios. Saved bytes: a separate forward under saved_tensors_hooks. Peak RSS:
this script re-run per variant in a subprocess (`--only VARIANT --rss`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench import common  # noqa: E402
from bench.variants import VARIANTS, build_variant, make_batch, saved_bytes, train_step  # noqa: E402
from utils import record  # noqa: E402

REFERENCE = "peft-lora-frozen-a"


def rss_child(args) -> dict:
    """`--only VARIANT --rss`: build that one variant, run 2 steps (optimizer state exists after the
    first), report ru_maxrss and the rise of VmHWM during the steps."""
    base = common.load_model(args.model, seq=args.seq, seed=args.seed)
    v = build_variant(args.only, base, args.targets[0], copy_model=False, compile_backend=args.compile_backend)
    batch = make_batch(base.config.vocab_size, args.batch, args.seq, args.seed)
    load_peak = record.peak_rss_mib(since_reset=True)  # VmHWM: loading's peak
    record.reset_peak_rss()
    before = record.rss_now_mib()
    for i in range(2):
        train_step(v, batch, args.dtype[0], args.seed + i)
    step_peak = record.peak_rss_mib(since_reset=True)
    return {"variant": args.only, "peak_rss_mib": max(load_peak, step_peak), "step_peak_above_start_mib":
            step_peak - before, "ru_maxrss_mib": record.peak_rss_mib()}


def measure_rss(args, dtype: str, targets: str) -> dict:
    """Peak RSS per variant, each in a fresh subprocess of this script."""
    out = {}
    for name in args.variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--rss", "--model", args.model,
               "--batch", str(args.batch), "--seq", str(args.seq), "--dtype", dtype, "--targets", targets,
               "--warmup", str(args.warmup), "--seed", str(args.seed), "--threads", str(args.threads),
               "--compile-backend", args.compile_backend]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"RSS subprocess for {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            out[name] = {}
            continue
        out[name] = json.loads(lines[-1])
    return out


def run_config(args, base, dtype: str, targets: str) -> str:
    """Build every variant, time them interleaved, measure memory; return the markdown section."""
    variants = [build_variant(n, base, targets, compile_backend=args.compile_backend) for n in args.variants]
    batch = make_batch(base.config.vocab_size, args.batch, args.seq, args.seed)
    first = {}  # wall seconds of each variant's first step (the compiled row: compilation included)
    for r in range(args.warmup):
        for v in variants:
            wall, _ = train_step(v, batch, dtype, args.seed + r)
            first.setdefault(v.name, wall)
        print(f"  [{dtype}/{targets}] warm-up {r + 1}/{args.warmup}, RSS of this process "
              f"{record.rss_now_mib():.0f} MiB", file=sys.stderr, flush=True)
    saved = {v.name: saved_bytes(v, batch, dtype, args.seed) for v in variants}
    for r in range(args.steps):
        for v in variants:
            wall, cpu = train_step(v, batch, dtype, args.seed + args.warmup + r)
            v.times.append(wall)
            v.cpu.append(cpu)
        print(f"  [{dtype}/{targets}] round {r + 1}/{args.steps}, RSS of this process {record.rss_now_mib():.0f} MiB",
              file=sys.stderr, flush=True)
    rss = {} if args.no_rss else measure_rss(args, dtype, targets)

    by = {v.name: v for v in variants}
    ref, floor = by.get(REFERENCE), by.get("floor")
    rows = []
    for v in variants:
        r = rss.get(v.name, {})
        rows.append([v.name, VARIANTS[v.name], v.trainable, common.median(v.times) * 1e3,
                     common.iqr(v.times) * 1e3,
                     common.paired_ratio(v.times, ref.times) if ref else None,
                     common.paired_ratio(v.times, floor.times) if floor else None,
                     common.median(v.cpu) * 1e3,
                     common.paired_ratio(v.cpu, ref.cpu) if ref else None,
                     common.paired_ratio(v.cpu, floor.cpu) if floor else None,
                     saved[v.name][0], saved[v.name][1],
                     r.get("peak_rss_mib"), r.get("step_peak_above_start_mib")])
    columns = ["variant", "trains", "trainable params", "step ms (median)", "IQR ms", f"x {REFERENCE}",
               "x floor", "CPU ms (median)", f"CPU x {REFERENCE}", "CPU x floor", "saved MiB (all)",
               "saved MiB (activations)", "peak RSS MiB", "RSS rise in steps MiB"]
    section = [f"## {args.model}, {dtype}, {targets} targets, batch {args.batch} x {args.seq} tokens, "
               f"rank 4, {args.steps} timed rounds after {args.warmup} warm-up", "",
               common.markdown_table(columns, rows), ""]
    import lora  # noqa: PLC0415
    adapted = len(lora.adapted_modules(by["ours-lora-fa"].model)) if "ours-lora-fa" in by else 0
    h_mib = adapted * args.batch * args.seq * 4 * (2 if dtype == "bf16" else 4) / 2**20  # rank 4
    section += targets_report(by, saved, targets, h_mib)
    section += compiled_report(by, first, args.compile_backend)
    return "\n".join(section)


def compiled_report(by: dict, first: dict, backend: str) -> list[str]:
    """The compiled row against the same model eager: step-time ratio, and what its first step cost."""
    comp, eager = by.get("ours-lora-fa-compiled"), by.get("ours-lora-fa")
    if not comp:
        return []
    line = (f"- ours-lora-fa-compiled (torch.compile fullgraph=True, backend {backend}, no graph break): first "
            f"step {first.get(comp.name, float('nan')):.1f} s (compilation; a warm-up step, not timed)")
    if eager:
        line += (f"; timed steps {common.paired_ratio(comp.times, eager.times):.3f} x ours-lora-fa wall, "
                 f"{common.paired_ratio(comp.cpu, eager.cpu):.3f} x CPU")
    return [line, ""]


def targets_report(by: dict, saved: dict, targets: str, predicted_h_mib: float = float("nan")) -> list[str]:
    """The met/not-met lines under a table (skipped where a needed row was not run).

    predicted_h_mib: what LoRA-FA must keep for backward, x A^T (tokens x rank) per adapted layer."""
    lines = []
    ours, ref, floor, lora_ = (by.get(n) for n in ("ours-lora-fa", REFERENCE, "floor", "peft-lora"))
    for other, limit in ((ref, 1.0), (floor, 1.1)):
        if ours and other:
            x, c = common.paired_ratio(ours.times, other.times), common.paired_ratio(ours.cpu, other.cpu)
            lines.append(f"- ours-lora-fa step time = {x:.3f} x {other.name} (target <= {limit}): "
                         f"{common.verdict(x <= limit)}; CPU time {c:.3f} x ({common.verdict(c <= limit)})")
    if ours and floor:
        x = saved["ours-lora-fa"][1] / saved["floor"][1]
        extra = saved["ours-lora-fa"][1] - saved["floor"][1]
        lines.append(f"- ours-lora-fa saved activations = {x:.4f} x floor, +{extra:.2f} MiB "
                     f"(target <= 1.001): {common.verdict(x <= 1.001)}")
        if "head" in saved:  # the head alone: its pooler keeps the last hidden state's storage
            lines.append(f"  - of which the trainable head: +{saved['head'][1] - saved['floor'][1]:.2f} MiB; "
                         f"the adapters: +{saved['ours-lora-fa'][1] - saved['head'][1]:.2f} MiB over head-only "
                         f"(x A^T, N x r per adapted layer: {predicted_h_mib:.2f} MiB)")
    if ours and lora_:
        acts = saved["ours-lora-fa"][1] / saved["peft-lora"][1]
        total = saved["ours-lora-fa"][0] / saved["peft-lora"][0]
        expect = "~0.92" if targets == "attention" else "~0.77"
        lines.append(f"- LoRA-FA / LoRA saved bytes (ours-lora-fa / peft-lora): {acts:.3f} activations only, "
                     f"{total:.3f} all (LoRA-FA paper memory claim, expected {expect})")
    return lines + [""]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm", help="minilm | mpnet | tiny | a model folder")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--targets", choices=["attention", "all-linear"], nargs="+", default=["attention"])
    p.add_argument("--dtype", choices=["fp32", "bf16"], nargs="+", default=["fp32"])
    p.add_argument("--all", action="store_true", help="fp32 and bf16 x attention and all-linear")
    p.add_argument("--steps", type=int, default=12, help="timed rounds (use >= 10 for real numbers)")
    p.add_argument("--warmup", type=int, default=3)
    common.add_run_args(p, VARIANTS, "folder for step_<model>_<dtypes>.md")
    p.set_defaults(variants=",".join(v for v in VARIANTS if not v.endswith("-compiled")))  # compiling: opt-in
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of ours-lora-fa-compiled")
    p.add_argument("--only", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = common.split_variants(p, args.variants, VARIANTS)
    return args


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args)
    if args.only:
        print(json.dumps(rss_child(args)))
        return
    if args.all:
        args.dtype, args.targets = ["fp32", "bf16"], ["attention", "all-linear"]
    configs = [(d, t) for d in args.dtype for t in args.targets]  # one table each, one file
    header = common.machine_header(f"Training step: {args.model}")
    base = common.load_model(args.model, seq=args.seq, seed=args.seed)
    sections = [run_config(args, base, d, t) for d, t in configs]
    text = header + "\nRows (what each variant trains):\n\n" + legend() + "\n\n" + "\n".join(sections)
    name = f"step_{Path(args.model).name}_{'_'.join(args.dtype)}.md"  # e.g. step_minilm_fp32.md
    path = common.write_results(Path(args.out) / name, text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


def legend() -> str:
    return "\n".join([
        "- every variant: same weights, batch and dropout seeds; the embeddings' output requires grad, so "
        "backward runs through all layers; adapters rank 4, alpha 4, no dropout, B = 0 at init",
        "- floor: all weights frozen, no optimizer step; head: classifier (+ BERT pooler), AdamW; "
        "full: everything, AdamW",
        "- peft-lora: PEFT LoRA (A, B) + head; peft-lora-frozen-a: the same with lora_A frozen; peft-lorafa-opt: "
        "peft.optimizers.create_lorafa_optimizer (A frozen, projected B gradient, its own AdamW) + head",
        "- ours-lora: lora.add_lora(freeze_a=False) + head; ours-lora-fa-plain: freeze_a=True with "
        "set_fast_path(False) (W_eff materialised); ours-lora-fa: freeze_a=True, fast path; ours-lora-fa-compiled: "
        "that model in torch.compile(fullgraph=True), optimizer step eager, compiled during the warm-up rounds "
        "(not timed); its dropout draws from the compiled RNG, not the eager seed stream",
        f"- step ms: wall-clock median over rounds; x {REFERENCE} / x floor: median of per-round ratios "
        "(interleaved); CPU ms and its ratios: the same for the process CPU time of each step",
        "- saved MiB: storages autograd saves during one forward, each counted once; activations: "
        "excluding storages of the model's parameters and buffers",
        "- peak RSS: of a fresh process (`--only VARIANT --rss`) that loads the model and runs "
        "2 steps (VmHWM of /proc/self/status: ru_maxrss would include the parent's peak, inherited "
        "through fork + exec); RSS rise: peak during those steps above the RSS before them",
    ])


if __name__ == "__main__":
    main()
