"""The source lines where a kernel's warps stall most and that issue the most instructions, from
Nsight Compute's source page as CSV.

    ncu ... --section SourceCounters --import-source yes -o rep python benchmarks/ncu_cases.py
    ncu --import rep.ncu-rep --page source --csv --print-source cuda > source.csv
    python benchmarks/ncu_source_top.py source.csv [--top 25]

Prints the `--top` rows with the most warp stall samples (the column whose name starts with
"Warp Stall Sampling (All"), then, where the page has an "Instructions Executed" column (warp
instructions), the `--top` rows with the most instructions: each with its share of the column's
total and the source text. The second table says where a row's warp instructions go (the SASS
count of benchmarks/sass_passes.py predicted 31k per row of the canonical forward, Nsight Compute
counted 42.2k). If the CSV has no stall column, it prints the file's first lines instead, so the
format can be read off a run.
"""
from __future__ import annotations

import argparse
import csv
import sys

STALLS = "Warp Stall Sampling (All"
INSTRUCTIONS = "Instructions Executed"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def top_rows(rows: list, column: str, n: int, exact: bool = False):
    """(source column, [(value, row)] sorted by `column`'s value, the column's total) or None when
    the header has no such column (the first whose name starts with it; equal to it if `exact`)."""
    header = rows[0]
    value = next((i for i, h in enumerate(header) if (h.strip() == column if exact else h.startswith(column))), None)
    source = next((i for i, h in enumerate(header) if h.strip().lower() == "source"), None)
    if value is None or source is None:
        return None
    body = [r for r in rows[1:] if len(r) == len(header)]
    total = sum(number(r[value]) for r in body)
    ranked = sorted(((number(r[value]), r) for r in body), key=lambda t: -t[0])[:n]
    return source, ranked, total


def print_table(found, what: str, unit: str) -> None:
    source, ranked, total = found
    print(f"{what:>9s} {'share':>6s}  source  (of {total:.0f} {unit})")
    for n, row in ranked:
        print(f"{n:9.0f} {100 * n / max(total, 1):5.1f}%  {row[source].strip()[:140]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        lines = f.read().splitlines()
    # ncu may print its own lines (==PROF==, the kernel's name) before the table.
    start = next((i for i, l in enumerate(lines) if "Warp Stall Sampling" in l), None)
    rows = list(csv.reader(lines[start:])) if start is not None else None
    stalls = top_rows(rows, STALLS, args.top) if rows else None
    if stalls is None:
        print("no 'Warp Stall Sampling (All Samples)' and 'Source' columns; the file begins:")
        print("\n".join(l[:200] for l in lines[:20]))
        return 1
    print_table(stalls, "samples", "warp stall samples")
    instructions = top_rows(rows, INSTRUCTIONS, args.top, exact=True)
    if instructions is not None:
        print()
        print_table(instructions, "inst", "warp instructions executed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
