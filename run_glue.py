#!/usr/bin/env python
"""GLUE experiments: train a grid of runs, print their summary, or plot the logs.

    python run_glue.py --task mrpc --model minilm --init random svd --rank 4 --lr 1e-4 4e-4 --seeds 0 1 2
    python run_glue.py --task rte --init random svd --seeds 0 1 2 --shard 0/4 --resume   # shard 0 of 4
    python run_glue.py summary --log-dir logs            # mean ± std over seeds of finished runs
    python run_glue.py plot --log-dir logs --out imgs    # figures + summary tables (utils.plots); a round's own:
                                                         # python -m experiments.round1.figures (round2 likewise)
    python run_glue.py geometry --task mrpc --model minilm --rank 4   # what each init's frozen A passes (utils.geometry)
    torchrun --nproc_per_node 2 run_glue.py ...          # 2 processes (gloo on CPUs), or equally:
    accelerate launch --multi_gpu --num_processes 2 run_glue.py ...

Every RunConfig field is a flag (`max_steps` -> `--max-steps`). Flags that take several
values define the grid: every combination runs (finished runs are skipped). Write `none`
for an empty optional value (`--max-steps none`). Exit status: 0 if every run finished,
1 if any failed, 2 for bad arguments, 3 if none failed but some were skipped because another
worker holds their lock file (`<log_dir>/<task>/<run_id>.lock`: the run is running elsewhere;
the grid goes on with the other runs). `summary` and `plot` skip log files that are not readable run
logs with a warning naming each, and exit 0 if the rest could be read.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from lora import INITS
from utils.config import METHODS, RUN_SVD_METHODS, RunConfig, field_help

CHOICES = {"method": METHODS, "init": INITS + ("none",), "svd_method": RUN_SVD_METHODS}
SINGLE = ("data_dir", "log_dir", "ckpt_dir")  # paths: one value, not a grid axis


def _converter(tp):
    """str -> value for a field annotation like int, float | None, list[str] | None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    base = args[0] if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else tp

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names it in errors
    return convert


def train_parser() -> argparse.ArgumentParser:
    """One flag per RunConfig field (help: the field's comment), plus the grid flags."""
    p = argparse.ArgumentParser(prog="run_glue.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    helps, hints = field_help(), typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        if hints[f.name] is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        flags = [flag, "--seeds"] if f.name == "seed" else [flag]
        tp = hints[f.name]
        if typing.get_origin(tp) in (list,) or list in [typing.get_origin(a) for a in typing.get_args(tp)]:
            p.add_argument(*flags, dest=f.name, nargs="+", default=default, metavar="NAME", help=text)
        elif f.name in SINGLE:
            p.add_argument(*flags, dest=f.name, type=_converter(tp), default=default, metavar="DIR", help=text)
        else:  # a grid axis: one or more values
            p.add_argument(*flags, dest=f.name, nargs="+", type=_converter(tp), default=[default],
                           choices=CHOICES.get(f.name), metavar=f.name.upper(), help=text)
    g = p.add_argument_group("grid")
    g.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (0-based: 0/4 .. 3/4)")
    g.add_argument("--dry-run", action="store_true", help="list the runs of the grid (and shard) and exit")
    g.add_argument("--stop-on-error", action="store_true", help="stop the grid at the first failed run")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars and no per-run lines (the final table is printed)")
    return p


def split_args(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    """(base config, grid) from parsed flags: list values of length > 1 become grid axes."""
    base, grid = {}, {}
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name)
        if isinstance(value, list) and f.name != "targets":
            if len(value) > 1:
                grid[f.name] = list(dict.fromkeys(value))  # drop repeated values
            value = value[0]
        base[f.name] = value
    return RunConfig(**base), grid


def cmd_train(argv) -> int:

    from utils.grid import expand_grid, run_grid, select_shard
    from utils.processes import process_state
    from utils.report import format_summary
    from utils.stats import summarize

    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        base, grid = split_args(args)
        configs = select_shard(expand_grid(base, grid), args.shard)
        for cfg in configs:
            cfg.check_files()
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    main = process_state().is_main_process
    if args.dry_run:
        if main:
            print("\n".join(f"{c.log_path}" for c in configs) or "(no runs in this shard)")
        return 0
    logs = run_grid(base, grid, shard=args.shard, progress=args.progress, stop_on_error=args.stop_on_error)
    failed = [log for log in logs if log.get("status") not in ("finished", "locked")]
    locked = [log for log in logs if log.get("status") == "locked"]
    if main:
        print("\n" + format_summary(summarize(logs)))
        for log in failed + locked:  # each error was printed once where it happened (run_grid)
            word = "LOCKED" if log in locked else "FAILED"
            print(f"{word} {log['run_id']} (see above)", file=sys.stderr)
        print(f"{len(logs) - len(failed) - len(locked)} of {len(logs)} runs finished"
              + (f", {len(locked)} running elsewhere (locked)" if locked else "")
              + f"; logs in {', '.join(sorted({str(c.log_path.parent) for c in configs}))}")
    return 1 if failed else 3 if locked else 0


def cmd_summary(argv) -> int:
    from utils.logs import load_summaries, read_logs
    from utils.report import format_summary
    from utils.stats import summarize

    p = argparse.ArgumentParser(prog="run_glue.py summary", description="mean ± std over seeds of finished runs, "
                                "one row per setting (runs differing in any setting but the seed are kept apart)")
    p.add_argument("--log-dir", default="logs", help="folder of JSON run logs (default: logs)")
    p.add_argument("--task", nargs="+", default=None, help="only these tasks")
    args = p.parse_args(argv)
    logs = read_logs(args.log_dir, status=None)
    df = load_summaries(logs)
    if args.task and not df.empty:
        df = df[df["task"].isin(args.task)]
    print(format_summary(summarize(df)))
    others = {p: log for p, log in logs.items() if log["status"] != "finished"
              and (not args.task or log["config"].get("task") in args.task)}
    for path, log in others.items():  # failed or running: never counted, named so nobody takes them for results
        print(f"not counted: {path} ({log['status']}" + (f": {log['error']})" if log.get("error") else ")"))
    return 0


def cmd_plot(argv) -> int:
    try:
        from utils import plots
    except ImportError as e:  # matplotlib missing
        print(f"error: plotting needs matplotlib ({e})", file=sys.stderr)
        return 1
    return plots.cli(argv)


def cmd_geometry(argv) -> int:
    p = argparse.ArgumentParser(prog="run_glue.py geometry", description="how much of each adapted layer's "
                                "input and gradient energy the frozen A of random, svd, eva and grad captures "
                                "(utils.geometry)")
    p.add_argument("--task", required=True, help="GLUE task whose training inputs are measured")
    p.add_argument("--model", default="minilm", help="model name or folder (default: minilm)")
    p.add_argument("--rank", type=int, default=4, help="adapter rank r (default: 4)")
    p.add_argument("--targets", nargs="+", default=None, help="target module suffixes (default: the model's attention projections)")
    p.add_argument("--examples", type=int, default=512, help="first N training examples outside the "
                   "calibration batches, where the shares are measured (default: 512)")
    p.add_argument("--init-batches", type=int, default=8, help="calibration batches of eva/grad, drawn as a "
                   "run with --seed draws them (default: 8)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random A, the head and the calibration "
                   "batches, as a run's --seed (default: 0)")
    p.add_argument("--max-length", type=int, default=128, help="tokenizer max length (default: 128)")
    p.add_argument("--data-dir", default=None, help="glue_data folder (default: $GLUE_DIR)")
    p.add_argument("--csv", default=None, help="also write the per-layer table to this CSV file")
    args = p.parse_args(argv)
    from utils.geometry import measure, summarize_geometry
    from utils.report import to_markdown

    df = measure(args.task, args.model, args.rank, args.targets, args.examples, batch_size=args.batch_size,
                 max_length=args.max_length, seed=args.seed, data_dir=args.data_dir, init_batches=args.init_batches)
    if args.csv:
        df.to_csv(args.csv, index=False)
    summary = summarize_geometry(df).reset_index().round(4)
    print(f"{args.task}, {args.model}, rank {args.rank}; eva/grad from {args.init_batches} calibration batches of "
          f"{args.batch_size}, shares measured on the first {args.examples} other training examples; share of "
          "the layer's input energy (random ... best) and of its weight gradient's energy (g_random ... g_best) "
          "captured by A (mean over layers):\n")
    print(to_markdown(summary))
    return 0


COMMANDS = {"train": cmd_train, "summary": cmd_summary, "plot": cmd_plot, "geometry": cmd_geometry}


def main(argv=None) -> int:
    """Dispatch `[train|summary|plot|geometry] ...`; without a command word, train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS[argv.pop(0)] if argv and argv[0] in COMMANDS else cmd_train
    status = command(argv)
    if command is cmd_train:  # under torchrun: end the gloo group before exit (utils.processes.shutdown);
        from utils.processes import shutdown  # after an error the launcher ends the processes instead

        shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
