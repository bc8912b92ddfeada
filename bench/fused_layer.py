"""LoRA-FA's fused layer, both routes: one GEMM with a transient W_eff, or a separate rank-r term.

    python bench/fused_layer.py                       # default shapes x row counts, 2 threads
    python bench/fused_layer.py --shapes 768x768 --rows 256 4096 --repeats 3

One nn.Linear (in -> out, float32) adapted with `lora.add_lora(freeze_a=True)`, B random, timed for
forward + backward of y.sum() with x requiring grad (as inside a network). `lora.set_fast_path(merge=
"always" | "never")` fixes the route; "auto" takes the one `lora.merge_is_cheaper` names (N >= N* =
2·in·out / (in + 2·out)). Per cell: the median of --repeats timings per route, routes interleaved.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lora  # noqa: E402
from bench import common  # noqa: E402

SHAPES = ["384x384", "768x768", "768x3072", "3072x768", "2048x2048", "2048x5632", "5632x2048"]
ROWS = [128, 256, 512, 1024, 2048, 4096]  # N = batch x tokens


def layer(d_in: int, d_out: int, r: int, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d_in, d_out, bias=False)
    lora.add_lora(lin, r=r, init="random", freeze_a=True, generator=gen)
    with torch.no_grad():
        for b in lora.get_lora_params(lin):
            b.normal_(generator=gen)
    return lin


def seconds(lin: nn.Linear, x: torch.Tensor, mode: str) -> float:
    lora.set_fast_path(lin, merge=mode)
    t = time.perf_counter()
    lin(x).sum().backward()
    return time.perf_counter() - t


def cell(d_in: int, d_out: int, n: int, args) -> list:
    lin = layer(d_in, d_out, args.rank, args.seed)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(args.seed), requires_grad=True)
    times = {"always": [], "never": []}
    for mode in times:  # warm-up
        seconds(lin, x, mode)
    for _ in range(args.repeats):
        for mode in times:
            times[mode].append(seconds(lin, x, mode))
    merged, split = common.median(times["always"]), common.median(times["never"])
    auto = "merged" if lora.merge_is_cheaper(n, d_in, d_out) else "split"
    best = min(merged, split)
    return [f"{d_in}->{d_out}", n, round(2 * d_in * d_out / (d_in + 2 * d_out)), merged * 1e3, split * 1e3,
            merged / split, auto, (merged if auto == "merged" else split) / best]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="in x out of the layer, e.g. 768x3072")
    p.add_argument("--rows", nargs="+", type=int, default=ROWS, help="N, the rows of x (batch x tokens)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    common.add_run_args(p, out_help="folder for fused_layer.md")
    args = p.parse_args(argv)
    try:
        args.dims = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
        assert all(len(d) == 2 and min(d) > 0 for d in args.dims)
    except (ValueError, AssertionError):
        p.error(f"--shapes takes IN x OUT pairs of positive ints such as 768x3072, got {' '.join(args.shapes)}")
    if min(args.rows) < 1 or args.repeats < 1 or args.rank < 1:
        p.error("--rows, --repeats and --rank must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args)
    start = common.load_average()
    header = common.machine_header("LoRA-FA's fused layer: merged W_eff GEMM or separate rank-r term")
    rows = [cell(d_in, d_out, n, args) for d_in, d_out in args.dims for n in args.rows]
    columns = ["layer in->out", "N rows", "N*", "merged ms", "split ms", "merged / split", "auto takes",
               "auto / best"]
    notes = [f"Rank {args.rank}, float32, forward + backward of one adapted nn.Linear, median of {args.repeats} "
             f"per route (interleaved, after a warm-up); torch threads {torch.get_num_threads()}. "
             "N* = 2·in·out / (in + 2·out): `auto` merges from N* rows on.",
             f"Load average (1, 5, 15 min) at start {start}, at end {common.load_average()}."]
    text = "\n".join([header, *notes, "", common.markdown_table(columns, rows), ""])
    path = common.write_results(Path(args.out) / "fused_layer.md", text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
