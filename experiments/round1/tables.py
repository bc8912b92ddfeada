"""Round 1's tables in its README, generated from logs/round1: ``python -m experiments.round1.tables``
rewrites the block between the two markers in experiments/round1/README.md with `report.report()`
(the same tables as imgs/results.md); ``--check`` only compares, exiting 1 if the README differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.round1.report import report

README = Path(__file__).with_name("README.md")
BEGIN = "<!-- tables: generated from logs/round1 by `python -m experiments.round1.tables`; do not edit by hand -->\n"
END = "<!-- end of generated tables -->\n"


def with_tables(text: str, tables: str) -> str:
    """`text` with the block between `BEGIN` and `END` replaced by `tables`."""
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + tables.rstrip("\n") + "\n\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.round1.tables", description=__doc__.split("\n")[0])
    p.add_argument("--log-dir", default="logs/round1")
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if the README's tables differ")
    args = p.parse_args(argv)
    text = README.read_text()
    new = with_tables(text, report(args.log_dir))
    if args.check:
        if new != text:
            print(f"{README}: its tables differ from what {args.log_dir} gives; run python -m experiments.round1.tables",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
