"""Instructions of the fused kernel's FFT passes and of two of its other phases, counted in their
SASS: a measurement that needs nvcc but no GPU.

    CUDA_HOME=/usr/local/cuda python -m benchmarks.sass_passes [--arch 90] [--d 8192] [--channels 1024]

Compiles one small kernel per pass that some transform of the fused kernels uses (fft_pass of
common/fused.h: radix, span kind, forward or inverse, under the register cap of its thread
group), counts each kernel's SASS instructions (cuobjdump; NOPs left out) and prints them with
the registers ptxas gave it. A kernel is the pass's body plus about 20 instructions of set-up, run
once per virtual thread. Then, for a transform of d points, the warp instructions of its passes:
sum over passes of (d / radix / 32 warps) x the pass's instructions. The fused forward does 1.5
transforms per row (one forward per row, one inverse per row pair), the backward a d/2-point
transform of the gradient row and two d-point ones; instruction issue is what bounds the kernel
(docs/benchmarks.md), so these are the numbers to lower. Last, one trip round the loops of
zeroing Z, the gather of a row's two sketches and the backward's scatter of gradients (inner
loops left out), and their warp instructions per row.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.ptxas_report import cuda_tool, demangle, nvcc_command
from benchmarks.smem_model import schedule

SPANS = ("Unit", "Wide", "Narrow")  # fused.h's Span, in order
HARNESS = r"""
#include "common/fused.h"
using namespace compact_bilinear::fused;
template <int MB>
struct Group {
  static constexpr int kMaxPassBits = MB;
  template <class F>
  __device__ __forceinline__ void for_each(int64_t n, F&& f) const {
    for (int i = threadIdx.x; i < static_cast<int>(n); i += blockDim.x) f(i);
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};
// The fused kernels' launch bounds: 512 threads, two blocks per SM with radix-8 passes.
template <int MB, int R, bool Inv, int Sp>
__global__ void __launch_bounds__(512, MB >= 5 ? 1 : 2) pass_kernel(const cplx<float>* tw, int n, int lh) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* z = reinterpret_cast<cplx<float>*>(smem_raw);
  fft_pass<R, Inv, static_cast<Span>(Sp)>(Group<MB>{}, n, lh, tw, ZLoad<float>{z}, ZStore<float>{z});
}
// Three of a row's other phases: zeroing Z, the sketches' gather of two inputs and the backward's
// scatter of one input's gradient.
__global__ void __launch_bounds__(512, 1) zero_kernel(int64_t n) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  zero(Group<5>{}, reinterpret_cast<cplx<float>*>(smem_raw), n);
}
__global__ void __launch_bounds__(512, 1) gather_kernel(const Args<float, float> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  gather_sketches<4>(Group<5>{}, reinterpret_cast<float*>(smem_raw),
                     Sketches<float, float, 2>{{sketch_of(a, 0, 0, blockIdx.x, blockIdx.y),
                                                sketch_of(a, 1, 1, blockIdx.x, blockIdx.y)}});
}
__global__ void __launch_bounds__(512, 1) scatter_kernel(const Args<float, float> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scatter_grad(Group<5>{}, a, reinterpret_cast<const float*>(smem_raw), 0, 0, blockIdx.x, blockIdx.y);
}
"""
KERNEL = re.compile(r"pass_kernel<(\d+), (\d+), (true|false), (\d+)>")


def span_of(lh: int) -> str:
    return "Unit" if lh == 0 else "Wide" if lh >= 4 else "Narrow"


def passes(log2n: int, max_bits: int) -> list:
    """(log2 radix, span kind) of each forward pass of a 2^log2n-point transform."""
    out, lh = [], log2n
    for bits in schedule(log2n, max_bits):
        lh -= bits
        out.append((bits, span_of(lh)))
    return out


def used_passes(max_bits: int, max_log2d: int = 14) -> list:
    """Every (log2 radix, span kind) some transform of 1 to 2^max_log2d points uses (fused.h's
    pass_used: only those are compiled)."""
    return sorted({p for log2n in range(max_log2d + 1) for p in passes(log2n, max_bits)})


def listing(sass: str) -> dict:
    """(address, instruction) per function of a cuobjdump -sass listing, keyed by the mangled
    name: NOPs and the closing branch to itself left out."""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if name is None or m is None:
            continue
        address, text = int(m.group(1), 16), m.group(2)
        branch = re.fullmatch(r"BRA 0x([0-9a-f]+)", text)
        if not text.startswith("NOP") and not (branch and int(branch.group(1), 16) == address):
            out[name].append((address, text))
    return out


def count_sass(sass: str) -> dict:
    """Instructions per function of a cuobjdump -sass listing (see listing)."""
    return {name: len(code) for name, code in listing(sass).items()}


def loop_body(code: list) -> int:
    """Instructions of one trip round a function's outermost loop, less the loops inside it (a
    gather's walk along a bucket's third and further channels, which most buckets skip): the
    instructions one iteration issues when no inner loop runs, counting both sides of its
    forward branches, so an upper bound."""
    back = [(re.search(r"BRA 0x([0-9a-f]+)", t), a) for a, t in code]
    back = [(int(m.group(1), 16), a) for m, a in back if m and int(m.group(1), 16) < a]
    if not back:
        return len(code)
    lo, hi = max(back, key=lambda r: r[1] - r[0])
    inside = lambda a0, a1: sum(1 for a, _ in code if a0 <= a <= a1)
    return inside(lo, hi) - sum(inside(a0, a1) for a0, a1 in back if lo < a0 and a1 < hi)


def measure(arch: str) -> dict:
    """{(max_bits, bits, span, inverse): (instructions, registers)} for every used pass, and
    {"zero" | "gather" | "scatter": (instructions per loop trip, registers)}."""
    combos = [(mb, bits, span, inv) for mb in (3, 5) for bits, span in used_passes(mb) for inv in (False, True)]
    src = HARNESS + "".join(
        f"template __global__ void pass_kernel<{mb}, {1 << bits}, {str(inv).lower()}, {SPANS.index(span)}>"
        "(const cplx<float>*, int, int);\n" for mb, bits, span, inv in combos)
    with tempfile.TemporaryDirectory() as tmp:
        cu, cubin = os.path.join(tmp, "passes.cu"), os.path.join(tmp, "passes.cubin")
        Path(cu).write_text(src)
        cmd = nvcc_command(arch, cubin, source=cu, output="-cubin")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-4000:])
        regs = dict(re.findall(r"Compiling entry function '(\S+)'.*?Used (\d+) registers",
                               proc.stdout + proc.stderr, flags=re.S))
        sass = subprocess.run([cuda_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    code = listing(sass)
    names = list(code)
    result = {}
    for mangled, name in zip(names, demangle(names)):
        m = KERNEL.search(name)
        if m:
            key = (int(m.group(1)), int(m.group(2)).bit_length() - 1, SPANS[int(m.group(4))], m.group(3) == "true")
            result[key] = (len(code[mangled]), int(regs.get(mangled, 0)))
        elif name.startswith(("zero_kernel", "gather_kernel", "scatter_kernel")):
            result[name.split("_")[0]] = (loop_body(code[mangled]), int(regs.get(mangled, 0)))
    return result


def transform_instructions(d: int, max_bits: int, table: dict, inverse: bool = False) -> int:
    """Warp instructions of one d-point transform: per pass, d / radix butterflies in warps of 32."""
    log2d = d.bit_length() - 1
    return sum(max(1, d >> bits) / 32 * table[(max_bits, bits, span, inverse)][0]
               for bits, span in passes(log2d, max_bits))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sass_passes", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="90", help="compute capability without the dot (default 90, H100/H200)")
    ap.add_argument("--d", type=int, default=8192, help="transform size of the summary (default 8192)")
    ap.add_argument("--channels", type=int, default=1024, help="channels per input of the summary (default 1024)")
    args = ap.parse_args(argv)
    table = measure(args.arch)
    print(f"FFT passes of the fused kernel (float), SASS sm_{args.arch}: instructions per virtual thread")
    print(f"{'largest radix':>13s} {'radix':>5s} {'span':7s} {'forward':>8s} {'inverse':>8s} {'registers':>9s}")
    passes_only = {k: v for k, v in table.items() if isinstance(k, tuple)}
    for (mb, bits, span, inv), (n, regs) in sorted(passes_only.items()):
        if not inv:
            inv_n, inv_regs = table[(mb, bits, span, True)]
            print(f"{1 << mb:13d} {1 << bits:5d} {span:7s} {n:8d} {inv_n:8d} {max(regs, inv_regs):9d}")
    log2d = args.d.bit_length() - 1
    for mb in (5, 3):
        sched = ", ".join(f"{1 << b} {s.lower()}" for b, s in passes(log2d, mb))
        fwd = transform_instructions(args.d, mb, table)
        inv = transform_instructions(args.d, mb, table, inverse=True)
        half = transform_instructions(max(args.d // 2, 1), mb, table)
        print(f"d = {args.d}, passes up to radix {1 << mb} ({sched}): {fwd:.0f} warp instructions forward, "
              f"{inv:.0f} inverse; a forward row (1.5 transforms) {fwd + inv / 2:.0f}; the backward's "
              f"gradient row (d/2 points) {half:.0f}")
    # A row's zeroing of Z (z_size = d + d/16 values, two per trip) and its gather of two inputs
    # of --channels each in one loop (4 positions of each input per trip, as load_sketches takes
    # them with radix-32 passes).
    zero_trips = (args.d + args.d // 16) / 2 / 32
    gather_trips = -(-args.channels // 4) / 32
    print(f"zero Z: {table['zero'][0]} instructions per trip (2 values), {zero_trips * table['zero'][0]:.0f} warp "
          f"instructions per row; gather: {table['gather'][0]} per trip (4 positions of each input, buckets of one or two channels), "
          f"{gather_trips * table['gather'][0]:.0f} per row of two inputs of {args.channels} channels; "
          f"the backward's scatter: {table['scatter'][0]} per trip (1 channel), "
          f"{2 * args.channels / 32 * table['scatter'][0]:.0f} per row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
