"""The whole fused kernel's SASS, split at its barriers: where a row's instructions go, without a GPU.

    CUDA_HOME=/usr/local/cuda python -m benchmarks.sass_regions [--phase forward] [--radix 32]
        [--dtype float] [--arch 90] [--min 40] [--spills]

Compiles the file with the given phase's fused kernels for one input dtype (csrc/cuda/
fused_<dtype>_backward.cu or fused_<dtype>_forward.cu, the extension's flags, -lineinfo; about 80 s
on 2 cores), disassembles the kernel of the given phase and largest radix with its line table
(nvdisasm -g) and splits it at every barrier (BAR.SYNC, BAR.RED): each region is the code between
two of a thread group's sync() calls, so a phase or an FFT pass. For each region of at least --min
instructions it prints its first address, its size and the fused.h functions (other files by name)
its instructions come from, then every loop inside it (a backward branch) with its instructions per
trip. The canonical path's regions times their trips give the kernel's warp instructions per row
(docs/benchmarks.md, "Where a row's warp instructions go"): static counts, both sides of every
branch included, so an upper bound for code with branches.

--spills prints instead where the kernel's local-memory loads and stores (LDL, STL: ptxas's spills)
are, by the chain of fused.h functions they were inlined through (nvdisasm -gi), outermost first:
whether a change that spills at the radix-8 backward's 64-register edge costs the canonical path
(backward_rows_maps with two maps) or only other shape classes.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

from benchmarks.ptxas_report import REPO, cuda_tool, nvcc_command

# fused_phases.h Phase
PHASES = {"vector": 0, "forward": 1, "backward": 2, "forward-prefetch": 3, "forward-one-map-prefetch": 4,
          "forward-pooled-prefetch": 5}
BARRIER = re.compile(r"\bBAR\.(SYNC|RED)")


def parse(listing: str, kernel: str):
    """([(address, instruction, (file, line))], {label: address}, {address: inline chain}) of the
    function whose section name contains `kernel`, from an `nvdisasm -g -c` listing (or -gi: each
    instruction's inline chain is then the run of `//## File` lines before it, innermost first, each
    naming its call site in the next; (file, line) is the innermost). NOPs are left out."""
    code, labels, chains, pending, on, chain, fresh = [], {}, {}, [], False, (), True
    for line in listing.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            on = kernel in m.group(1)
            continue
        if not on:
            continue
        m = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if m:
            entry = (os.path.basename(m.group(1)), int(m.group(2)))
            chain, fresh = ((entry,) if fresh else chain + (entry,)), False
            continue
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        fresh = fresh or m is not None
        if m and not m.group(2).startswith("NOP"):
            address = int(m.group(1), 16)
            for label in pending:
                labels[label] = address
            pending = []
            code.append((address, m.group(2), chain[0] if chain else None))
            chains[address] = chain
    return code, labels, chains


def functions_of_lines(source: str) -> dict:
    """{line: name of the function (or struct) it is in} for a header in fused.h's style."""
    out, current = {}, "?"
    for i, line in enumerate(source.splitlines(), 1):
        m = re.match(r"(?:CB_HD|CB_HD_PASS)\s+.*?(\w+)\(", line) or re.match(r"(?:struct|enum class)\s+(\w+)", line)
        if m:
            current = m.group(1)
        out[i] = current
    return out


def local_accesses(code: list, chains: dict, funcs: dict) -> collections.Counter:
    """{(fused.h functions outermost first, "LDL" | "STL"): count} over parse()'s code of an
    `nvdisasm -gi` listing, each local load and store named by its inline chain."""
    out = collections.Counter()
    for address, text, _ in code:
        m = re.match(r"(?:@!?U?P\w+\s+)?(LDL|STL)\b", text)
        if m:
            names = [funcs.get(n, "?") for f, n in reversed(chains[address]) if f == "fused.h"]
            out[(tuple(n for i, n in enumerate(names) if i == 0 or n != names[i - 1]), m.group(1))] += 1
    return out


def regions(code: list) -> list:
    """The code split after each barrier: [[(address, instruction, where)]]."""
    out, current = [], []
    for ins in code:
        current.append(ins)
        if BARRIER.search(ins[1]):
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def loops(code: list, labels: dict, lo: int, hi: int) -> list:
    """(first address, branch address, instructions per trip) of each backward branch in [lo, hi]."""
    out = []
    for address, text, _ in code:
        m = re.search(r"BRA `\((\.L_x_\d+)\)", text)
        if lo <= address <= hi and m and labels.get(m.group(1), address) < address:
            start = labels[m.group(1)]
            out.append((start, address, sum(1 for a, _, _ in code if start <= a <= address)))
    return out


def describe(code: list, labels: dict, funcs: dict, min_size: int, top: int = 5) -> list:
    """One line per region of at least min_size instructions, then one per loop inside it."""
    lines = []
    for region in regions(code):
        if len(region) < min_size:
            continue
        names = collections.Counter(
            (funcs.get(w[1], "?") if w[0] == "fused.h" else w[0]) if w else "?" for _, _, w in region)
        lines.append(f"{region[0][0]:#07x} {len(region):6d}  " + ", ".join(f"{k} {n}" for k, n in names.most_common(top)))
        for start, end, n in loops(code, labels, region[0][0], region[-1][0]):
            if start >= region[0][0]:  # loops that begin in this region (outer loops span many)
                lines.append(f"{'':8s}loop {start:#07x}..{end:#07x}: {n} instructions per trip")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sass_regions", description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=sorted(PHASES), default="forward")
    ap.add_argument("--radix", type=int, choices=(8, 32), default=32, help="the kernel's largest FFT radix")
    ap.add_argument("--dtype", choices=("f32", "f16", "bf16", "f64"), default="f32", help="input dtype's source file")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--min", type=int, default=40, help="smallest region shown (instructions)")
    ap.add_argument("--spills", action="store_true", help="where the kernel's local loads and stores are instead")
    args = ap.parse_args(argv)
    part = "backward" if args.phase == "backward" else "forward"  # the two files of a dtype's kernels
    source = REPO / "csrc" / "cuda" / f"fused_{args.dtype}_{part}.cu"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "fused.cubin")
        proc = subprocess.run(nvcc_command(args.arch, cubin, str(source), "-cubin"), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-4000:])
        listing = subprocess.run([cuda_tool("nvdisasm"), "-gi" if args.spills else "-g", "-c", cubin],
                                 capture_output=True, text=True, check=True).stdout
    bits = {8: 3, 32: 5}[args.radix]
    # Mangled: fused_kernel<T, In, Phase, MaxPassBits, GlobalSlots = false>; compute type float
    # unless the input is double.
    compute = "d" if args.dtype == "f64" else "f"
    kernel = f"fused_kernelI{compute}"
    tag = f"PhaseE{PHASES[args.phase]}ELi{bits}ELb0E"
    names = [n for n in re.findall(r"\.text\.(\S+):", listing) if kernel in n and tag in n]
    if not names:
        sys.exit(f"no {args.phase} kernel of radix {args.radix} in {source.name}")
    funcs = functions_of_lines((REPO / "csrc" / "common" / "fused.h").read_text())
    code, labels, chains = parse(listing, names[0])
    if args.spills:
        found = local_accesses(code, chains, funcs)
        print(f"{args.phase} kernel, radix {args.radix}, {source.name}, sm_{args.arch}: "
              f"{sum(found.values())} local loads and stores, by inline chain")
        for (chain, op), n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"{n:4d} {op}  {' > '.join(chain) or '(the kernel itself)'}")
        return 0
    print(f"{args.phase} kernel, radix {args.radix}, {source.name}, sm_{args.arch}: {len(code)} instructions; "
          f"regions between barriers of at least {args.min}, by source function")
    print("\n".join(describe(code, labels, funcs, args.min)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
