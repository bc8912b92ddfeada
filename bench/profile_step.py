"""Where a training step's time goes: torch.profiler per variant, op by op, side by side.

    python bench/profile_step.py --variants floor,peft-lora-frozen-a,ours-lora-fa --threads 1
    python bench/profile_step.py --model tiny --batch 4 --seq 16 --steps 1

Builds the variants exactly as bench/step.py does (bench/variants.py), runs --warmup steps, then profiles
--steps steps of each (interleaved) and prints, for the ops with the largest self CPU
time, the milliseconds per step of every variant, plus the total per step and the number
of operator calls. Forward/backward/optimizer phases are marked with record_function.
Writes nothing unless --out is given (then profile_<model>.md there).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from bench import common  # noqa: E402
from bench.variants import build_variant, forward, make_batch, train_step  # noqa: E402


def profiled_step(v, batch, dtype: str, seed: int):
    """One training step with the three phases labelled."""
    torch.manual_seed(seed)
    if v.optimizer is not None:
        v.optimizer.zero_grad(set_to_none=True)
    with record_function("## forward"):
        loss = forward(v, batch, dtype)
    with record_function("## backward"):
        loss.backward()
    if v.optimizer is not None:
        with record_function("## optimizer"):
            v.optimizer.step()


def op_table(args) -> str:
    base = common.load_model(args.model, seq=args.seq, seed=args.seed)
    variants = [build_variant(n, base, args.targets) for n in args.variants]
    batch = make_batch(base.config.vocab_size, args.batch, args.seq, args.seed)
    for r in range(args.warmup):
        for v in variants:
            train_step(v, batch, args.dtype, args.seed + r)
    self_ms = {v.name: defaultdict(float) for v in variants}
    calls = {v.name: 0 for v in variants}
    phases = {v.name: {} for v in variants}
    for r in range(args.steps):
        for v in variants:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                profiled_step(v, batch, args.dtype, args.seed + args.warmup + r)
            for e in prof.key_averages():
                if e.key.startswith("## "):
                    phases[v.name][e.key[3:]] = phases[v.name].get(e.key[3:], 0) + e.cpu_time_total / 1e3
                else:
                    self_ms[v.name][e.key] += e.self_cpu_time_total / 1e3
                    calls[v.name] += e.count
    n = args.steps
    names = [v.name for v in variants]
    ops = sorted({k for d in self_ms.values() for k in d}, key=lambda k: -max(d.get(k, 0) for d in self_ms.values()))
    rows = [[op, *[self_ms[v].get(op, 0.0) / n for v in names]] for op in ops[:args.top]]
    rows += [["(all ops, self CPU total)", *[sum(self_ms[v].values()) / n for v in names]]]
    rows += [[f"phase: {ph}", *[phases[v].get(ph, 0.0) / n for v in names]] for ph in ("forward", "backward", "optimizer")]
    rows += [["operator calls", *[calls[v] // n for v in names]]]
    title = (f"## {args.model}, {args.dtype}, {args.targets}, batch {args.batch} x {args.seq}: self CPU ms per step "
             f"(mean of {n} profiled steps)")
    return "\n".join([title, "", common.markdown_table(["op", *names], rows), ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--targets", choices=["attention", "all-linear"], default="attention")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--variants", default="floor,peft-lora-frozen-a,ours-lora-fa")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=25, help="how many ops to list")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for profile_<model>.md (default: print only)")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = common.machine_header(f"Training-step profile: {args.model}") + "\n" + op_table(args)
    print(text)
    if args.out:
        common.write_results(Path(args.out) / f"profile_{Path(args.model).name}.md", text)


if __name__ == "__main__":
    main()
