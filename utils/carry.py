"""Carry running runs' checkpoints to a new machine through the checkout.

Checkpoints live outside the checkout (`--ckpt-dir`), so a session that ends on one machine and
resumes on another loses them. Small ones (a LoRA-FA run's is ~10 MB) can travel as untracked
files inside the checkout instead:

    python -m utils.carry mirror /work/round3-checkpoints round3-checkpoints &   # while the grid runs
    python -m utils.carry restore round3-checkpoints /work/round3-checkpoints    # next machine, first

`mirror` copies each run's latest *complete* checkpoint (`utils.checkpoint.latest_checkpoint`) into
the same `<task>/<run_id>/` layout: the step folder under a temporary name, renamed, and only then
`latest.json`, so the copy is whole at every moment. A run whose source folder disappears (it
finished, and the runner deleted its checkpoints) loses its copy too, but only if this process
mirrored it: a fresh `mirror` never deletes what an earlier machine carried.

`restore` copies a carried checkpoint where the destination has none or an older one, then removes
the carried folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from utils.checkpoint import delete_checkpoints, latest_checkpoint, make_latest


def _runs(root: Path) -> list[Path]:
    """Run folders `<task>/<run_id>/` of a checkpoint root, relative to it."""
    return sorted(p.parent.relative_to(root) for p in root.glob("*/*/latest.json"))


def _step(folder: Path | None) -> int:
    return -1 if folder is None else json.loads((folder / "state.json").read_text())["step"]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def copy_checkpoint(folder: Path, run_dst: Path) -> None:
    """Make `folder` (a complete step-N checkpoint) the latest checkpoint of `run_dst`."""
    run_dst.mkdir(parents=True, exist_ok=True)
    tmp, final = run_dst / ".tmp-step", run_dst / folder.name
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    make_latest(run_dst, final, _step(final))


def mirror(src, dst, *, max_mb: float = 100.0, mirrored: frozenset = frozenset()) -> set[Path]:
    """One pass of `src` -> `dst`; returns the runs (relative paths) whose copy is now current.

    Checkpoints over `max_mb` are skipped (a full fine-tuning one is 1.3 GB). A run the runner
    moves on (or finishes) while it is being read or copied is left for the next pass. Copies of
    runs in `mirrored` whose source folder has gone are deleted."""
    src, dst = Path(src), Path(dst)
    current = set()
    for rel in _runs(src):
        try:
            folder = latest_checkpoint(src / rel)
            if folder is None or folder_bytes(folder) > max_mb * 2**20:
                continue
            copied = latest_checkpoint(dst / rel)
            if copied is None or copied.name != folder.name:
                copy_checkpoint(folder, dst / rel)
            current.add(rel)
        except (FileNotFoundError, shutil.Error):
            shutil.rmtree(dst / rel / ".tmp-step", ignore_errors=True)
    for rel in mirrored:
        if not (src / rel).exists():
            delete_checkpoints(dst / rel)
    return current | {rel for rel in mirrored if (src / rel).exists() and (dst / rel).exists()}


def restore(src, dst) -> list[str]:
    """Copy each carried checkpoint of `src` into `dst` unless `dst` has it or a later one; remove `src`.

    Returns one line per run saying what was done."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"restore: no carried checkpoints at {src}")
    done = []
    for rel in _runs(src):
        carried, there = latest_checkpoint(src / rel), latest_checkpoint(dst / rel)
        if carried is None:
            done.append(f"{rel}: incomplete, skipped")
        elif _step(there) >= _step(carried):
            done.append(f"{rel}: kept step {_step(there)} already at {dst} (carried: {_step(carried)})")
        else:
            copy_checkpoint(carried, dst / rel)
            done.append(f"{rel}: restored step {_step(carried)}")
    shutil.rmtree(src)
    return done


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m utils.carry", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mirror", help="copy running checkpoints SRC -> DST, every --every seconds")
    m.add_argument("src"), m.add_argument("dst")
    m.add_argument("--every", type=float, default=60.0, help="seconds between passes (default 60)")
    m.add_argument("--max-mb", type=float, default=100.0, help="skip checkpoints larger than this (default 100)")
    m.add_argument("--once", action="store_true", help="one pass, then exit")
    r = sub.add_parser("restore", help="move carried checkpoints SRC into the checkpoint dir DST")
    r.add_argument("src"), r.add_argument("dst")
    args = p.parse_args(argv)
    if not Path(args.src).is_dir():
        raise SystemExit(f"{args.cmd}: no checkpoints at {args.src}")
    if args.cmd == "restore":
        print("\n".join(restore(args.src, args.dst)) or "nothing carried")
        return
    mirrored = set()
    while True:
        mirrored = mirror(args.src, args.dst, max_mb=args.max_mb, mirrored=frozenset(mirrored))
        if args.once:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
