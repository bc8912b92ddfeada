"""Memory of one training step of a random Llama-style decoder, per method, split into weights,
optimizer state, gradients and saved activations, at several sequence lengths.

    python bench/llm_memory.py                      # 125m full matrix + 350m (all-linear, r 8)
    python bench/llm_memory.py --size 1b --device cuda --large-sizes none
    python bench/llm_memory.py --size tiny --seq-lens 16 32 48 64 --out /tmp/x   # smoke run

Rows and the floor's definition: `bench/llm_rows.py`. Every row of a size starts from the same random
weights (same seed) and the same random token batches (labels = inputs). Each row runs in a fresh
forked child of this process, so its peak memory is its own: after a warm-up step (so the
optimizer state exists) it runs one measured step per sequence length, shortest first. Per step:
saved activations (what autograd packs during the forward, each storage once, parameters and buffers
excluded: `bench.common.saved_tensor_bytes`), gradient bytes after backward, optimizer-state bytes
after the step, the peak (CPU: RSS high-water above the process's RSS before the model was built;
CUDA: torch.cuda.max_memory_allocated). Then --timed-steps plain steps at the longest length (no hooks,
no peak reset): the step time is their median (the measured step's own time when --timed-steps is 0).
Bytes per token: least-squares slope of saved activations (and of the peak) against batch x seq tokens.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.llm_rows import ADAPTER_FREE, ROWS, SIZES, TARGETS, measure_row  # noqa: E402

MIB = 2**20
PAPER_RATIO = 1.4  # LoRA-FA paper: up to 1.4x lower memory than LoRA
FIGURE = common.ROOT / "imgs" / "bench" / "llm_memory.png"


def _child(conn, spec: dict):
    try:
        conn.send(measure_row(spec))
    except BaseException:  # noqa: BLE001 (the parent reports it)
        conn.send({"error": traceback.format_exc()})
    conn.close()


def run_child(spec: dict) -> dict:
    """measure_row(spec) in a forked child: its peak memory is its own, and it starts with this process's
    imports done (a fresh interpreter would import torch, transformers and peft again for every row). This
    process runs no torch op before forking, so no thread pool is copied half-alive."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, spec))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"row {spec['row']} failed:\n{result['error']}")
    return result


def slope(steps: list[dict], key: str) -> float:
    """Least-squares bytes per token of steps[*][key] against steps[*]['tokens']."""
    return float(np.polyfit([s["tokens"] for s in steps], [s[key] for s in steps], 1)[0])


def step_seconds(result: dict) -> float:
    """A row's step time at the longest length: the median of its plain timed steps, else its measured step's."""
    return common.median(result["timed"]) if result.get("timed") else result["steps"][-1]["seconds"]


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")  # nan, not an error, where an in-process peak rounds to 0


def cells(args) -> list[tuple[str, str, int]]:
    """(size, targets, rank) sections: the full matrix for --size, the --large-* cells for --large-sizes."""
    full = [(s, t, r) for s in args.size for t in args.targets for r in args.ranks]
    return full + [(s, t, r) for s in args.large_sizes for t in args.large_targets for r in args.large_ranks]


def measure_all(args) -> dict:
    """{(size, targets, rank): {row: result}}; rows without adapters are measured once per size."""
    results, shared = {}, {}
    for size, targets, rank in cells(args):
        section = results.setdefault((size, targets, rank), {})
        for row in args.rows:
            key = (size, row) if row in ADAPTER_FREE else (size, row, targets, rank)
            if key not in shared:
                spec = {"size": size, "row": row, "targets": targets, "rank": rank, "batch": args.batch,
                        "seq_lens": args.seq_lens, "seed": args.seed, "dtype": args.dtype, "device": args.device,
                        "timed_steps": args.timed_steps}
                shared[key] = run_child(spec)
                peak = shared[key]["steps"][-1]["peak"] / MIB
                print(f"  [{size} {targets} r{rank}] {row}: peak {peak:.0f} MiB, load {common.load_average()}",
                      file=sys.stderr, flush=True)
            section[row] = shared[key]
    return results


def section_text(size: str, targets: str, rank: int, by: dict, args) -> str:
    tokens = [s["tokens"] for s in next(iter(by.values()))["steps"]]
    ours = by.get("ours-lora-fa")
    summary, per_len = [], []
    for row, r in by.items():
        last = r["steps"][-1]
        summary.append([row, ROWS[row], r["trainable"], r["weights"] / MIB, last["optimizer"] / MIB,
                        last["grads"] / MIB, last["saved"] / MIB, last["peak"] / MIB, slope(r["steps"], "saved"),
                        slope(r["steps"], "peak"), step_seconds(r),
                        ratio(step_seconds(r), step_seconds(ours)) if ours else None])
        per_len.append([row, *[s["saved"] / MIB for s in r["steps"]], *[s["peak"] / MIB for s in r["steps"]]])
    t = tokens[-1]
    columns = ["row", "trains", "trainable params", "weights MiB", "optimizer MiB", "grads MiB",
               f"saved act. MiB @{t}", f"peak MiB @{t}", "saved B/token", "peak B/token", f"step s @{t}",
               "step x ours-lora-fa"]
    shape = "x".join(str(v) for v in SIZES[size])
    device = next(iter(by.values()))["device_name"]
    lines = [f"## {size} ({shape}), {targets} targets, r {rank}, batch {args.batch}, {args.dtype}, {device}",
             "", common.markdown_table(columns, summary), "",
             common.markdown_table(["row", *[f"saved MiB @{n}" for n in tokens], *[f"peak MiB @{n}" for n in tokens]],
                                   per_len), ""]
    return "\n".join(lines + ratio_lines(by))


def ratio_lines(by: dict) -> list[str]:
    """LoRA / LoRA-FA against the paper's 1.4x, and what the other rows cost next to ours."""
    ours = by.get("ours-lora-fa")
    if not ours:
        return [""]
    lines = []
    for other in ("peft-lora", "peft-lora-frozen-a", "peft-lorafa-opt", "ours-lora-fa+ckpt", "full", "floor"):
        if other not in by:
            continue
        a, b = by[other]["steps"][-1], ours["steps"][-1]
        paper = f" (LoRA-FA paper: up to {PAPER_RATIO}x)" if other == "peft-lora" else ""
        lines.append(f"- {other} / ours-lora-fa at {b['tokens']} tokens: peak {ratio(a['peak'], b['peak']):.3f}x"
                     f"{paper}, saved activations {ratio(a['saved'], b['saved']):.3f}x, activation slope "
                     f"{ratio(slope(by[other]['steps'], 'saved'), slope(ours['steps'], 'saved')):.3f}x, "
                     f"step time {ratio(step_seconds(by[other]), step_seconds(ours)):.2f}x")
    return lines + [""]


def figure(results: dict, path: Path) -> Path:
    """Peak memory vs tokens, one panel per section, one line per row."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(results)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, ((size, targets, rank), by) in zip(axes.flat, results.items()):
        for row, r in by.items():
            ax.plot([s["tokens"] for s in r["steps"]], [s["peak"] / MIB for s in r["steps"]], marker="o", ms=3,
                    label=row, ls="--" if row in ADAPTER_FREE else "-")
        ax.set(title=f"{size}, {targets}, r {rank}", xlabel="tokens (batch x seq)", ylabel="peak MiB")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def legend(args) -> str:
    peak = ("torch.cuda.max_memory_allocated during the step" if args.device.startswith("cuda") else
            "process RSS high-water (VmHWM) during the step, above the RSS before the model was built")
    return "\n".join([
        "- rows: full = every parameter + AdamW; peft-lora = PEFT LoRA (A, B); peft-lora-frozen-a = the same with "
        "lora_A frozen; peft-lorafa-opt = peft.optimizers.create_lorafa_optimizer; ours-lora-fa = lora.add_lora"
        "(freeze_a=True); +ckpt = with transformers' gradient checkpointing; floor = weights + the head alone "
        "(nothing trains; backward still runs to the embeddings, see bench/llm_rows.py)",
        f"- targets: attention = {', '.join(TARGETS['attention'])}; all-linear = {', '.join(TARGETS['all-linear'])}"
        "; alpha = r, B = 0 at init; the LM head and embeddings train only in `full`",
        "- weights: parameter + buffer bytes; optimizer: bytes in optimizer.state after the step; grads: .grad "
        "bytes after backward; saved act.: what autograd packs in the forward (saved_tensors_hooks), each "
        f"storage once, parameters excluded; peak: {peak}",
        "- B/token: least-squares slope over the sequence lengths; step s: " + (
            f"median wall time of {args.timed_steps} plain steps (no hooks) at the longest length, after the "
            "measured ones" if args.timed_steps else "the measured step's wall time (one step, with the hooks)"),
    ])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", nargs="+", choices=list(SIZES), default=["125m"], help="full matrix at these sizes")
    p.add_argument("--large-sizes", nargs="+", default=["350m"], help="sizes run only at --large-targets x "
                   "--large-ranks ('none': skip)")
    p.add_argument("--large-targets", nargs="+", choices=list(TARGETS), default=["all-linear"])
    p.add_argument("--large-ranks", nargs="+", type=int, default=[8])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[64, 128, 192, 256])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=["attention", "all-linear"])
    p.add_argument("--ranks", nargs="+", type=int, default=[8, 64])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--timed-steps", type=int, default=3, help="plain steps at the longest length whose median "
                   "is the step time (0: the measured step's own time)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--figure", default=str(FIGURE), help="PNG path ('none': no figure)")
    common.add_run_args(p, out_help="folder for llm_memory.md")
    args = p.parse_args(argv)
    args.large_sizes = [s for s in args.large_sizes if s != "none"]
    unknown = set(args.large_sizes) - set(SIZES)
    if unknown or len(args.seq_lens) < 2 or args.timed_steps < 0:
        p.error(f"unknown sizes {sorted(unknown)}" if unknown else "--timed-steps must be >= 0"
                if args.timed_steps < 0 else "--seq-lens needs >= 2 lengths for a slope")
    return args


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args)
    header = common.machine_header("Memory at LLM scale: a Llama-style decoder, per method")
    results = measure_all(args)
    gpu = "" if args.device.startswith("cuda") else "- GPU numbers pending (no accelerator was lent for this run)\n"
    sections = [section_text(*cell, by, args) for cell, by in results.items()]
    text = (header + f"- load average at end (1, 5, 15 min): {common.load_average()}\n" + gpu + "\n" + legend(args)
            + "\n\n" + "\n".join(sections))
    path = common.write_results(Path(args.out) / "llm_memory.md", text)
    if args.figure != "none":
        print(f"figure: {figure(results, Path(args.figure))}", file=sys.stderr)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
