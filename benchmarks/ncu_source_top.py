"""The source lines a kernel's warps stall at most, from Nsight Compute's source page as CSV.

    ncu ... --section SourceCounters --import-source yes -o rep python benchmarks/ncu_cases.py
    ncu --import rep.ncu-rep --page source --csv --print-source cuda > source.csv
    python benchmarks/ncu_source_top.py source.csv [--top 25]

Prints the `--top` rows with the most warp stall samples (the column whose name starts with
"Warp Stall Sampling (All"), with their share of all samples and the source text. If the CSV has
no such column, it prints the file's first lines instead, so the format can be read off a run.
"""
from __future__ import annotations

import argparse
import csv
import sys


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def top_rows(rows: list, n: int):
    """(samples column, source column, [(samples, row)] sorted by samples, total samples) or None."""
    header = rows[0]
    samples = next((i for i, h in enumerate(header) if h.startswith("Warp Stall Sampling (All")), None)
    source = next((i for i, h in enumerate(header) if h.strip().lower() == "source"), None)
    if samples is None or source is None:
        return None
    body = [r for r in rows[1:] if len(r) == len(header)]
    total = sum(number(r[samples]) for r in body)
    ranked = sorted(((number(r[samples]), r) for r in body), key=lambda t: -t[0])[:n]
    return samples, source, ranked, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        lines = f.read().splitlines()
    # ncu may print its own lines (==PROF==, the kernel's name) before the table.
    start = next((i for i, l in enumerate(lines) if "Warp Stall Sampling" in l), None)
    found = top_rows(list(csv.reader(lines[start:])), args.top) if start is not None else None
    if found is None:
        print("no 'Warp Stall Sampling (All Samples)' and 'Source' columns; the file begins:")
        print("\n".join(l[:200] for l in lines[:20]))
        return 1
    samples, source, ranked, total = found
    print(f"{'samples':>9s} {'share':>6s}  source  (of {total:.0f} warp stall samples)")
    for n, row in ranked:
        print(f"{n:9.0f} {100 * n / max(total, 1):5.1f}%  {row[source].strip()[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
