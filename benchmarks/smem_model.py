"""Shared-memory bank model of the fused kernel (csrc/common/fused.h), per row of the unpooled
forward: how many shared-memory wavefronts each phase costs for a given layout of Z.

A warp's access to 8-byte values is served in wavefronts of 32 four-byte banks; a warp touching
32 consecutive values needs 2, and every extra distinct word that lands in an already used bank
costs one more. On an H100 an SM serves about one wavefront per clock, so at d = 8192 the
canonical case (1568 rows on 132 SMs) spends about 6.8 us per 1000 wavefronts per row. The
global-memory traffic per row is printed beside it for comparison.

    python -m benchmarks.smem_model [--d 8192] [--rows 1568] [--channels 1024]

Layouts compared:
  before     Z unpadded, half spectra in natural bin order, radix-4 passes (commit 13112e3 and
             earlier)
  padded     Z padded with one value per 16, half spectra in slot order (slot t < d/2 holds bin
             bitrev(2t), which sits at position 2t of the bit-reversed Z)
  pairs      padded, unpooled rows in pairs sharing one inverse FFT (commit 296268e)
  radix-8    pairs, with radix-8 passes (5 instead of 7 at d = 8192). A radix-16 closing pass was
             tried before and not kept: ptxas gave the float forward 101 registers
"""
from __future__ import annotations

import argparse
from collections import defaultdict


def bitrev(x: int, bits: int) -> int:
    return int(format(x, f"0{bits}b")[::-1], 2) if bits else 0


def wavefronts(indices) -> int:
    """Wavefronts for one warp instruction reading or writing 8-byte values at `indices`."""
    banks = defaultdict(set)
    for i in indices:
        for word in (2 * i, 2 * i + 1):
            banks[word % 32].add(word)
    return max(len(words) for words in banks.values())


def cost(items: int, accesses) -> int:
    """Sum over warps of the wavefronts of each access; accesses(t) lists item t's indices."""
    total = 0
    for w0 in range(0, items, 32):
        per_thread = [accesses(t) for t in range(w0, min(items, w0 + 32))]
        for k in range(len(per_thread[0])):
            total += wavefronts([p[k] for p in per_thread])
    return total


def schedule(log2n: int, radix8: bool) -> list:
    """log2 of each pass's radix, largest spans first, as fused.h runs them: radix-4 passes after
    one radix-2 pass when log2n is odd (until commit ef2c027), or radix-8 passes after one
    radix-2 or radix-4 pass when log2n is not a multiple of 3."""
    step = 3 if radix8 else 2
    rem = log2n % step
    return ([rem] if rem else []) + [step] * (log2n // step)


def fft(n: int, pos, radix8: bool = False) -> int:
    """One transform, pass by pass: R values per thread at base + m h, each read once and written
    once."""
    top, total = n.bit_length() - 1, 0
    for r in schedule(top, radix8):
        lh, rr = top - r, 1 << r
        h = 1 << lh
        total += cost(n // rr, lambda t, lh=lh, h=h, r=r, rr=rr: [
            pos(((t >> lh) << (lh + r)) + (t & (h - 1)) + m * h) for m in range(rr)] * 2)
        top -= r
    return total


def forward_row(d: int, layout: str) -> dict:
    """Wavefronts per output row, by phase."""
    bits = d.bit_length() - 1
    pos = (lambda i: i) if layout == "before" else (lambda i: i + (i >> 4))
    if layout == "before":
        bin_of = lambda t: t  # noqa: E731
    else:
        bin_of = lambda t: bitrev(2 * t, bits) if t < d // 2 else d // 2  # noqa: E731
    radix8 = layout == "radix-8"
    half = d // 2 + 1
    share = 2 if layout in ("pairs", "radix-8") else 1  # rows per inverse FFT and per read of Z for output
    parts = {
        "zero Z": cost(d, lambda j: [pos(j)]),
        "forward FFT": fft(d, pos, radix8),
        # split + product + Hermitian fill: read Z[p], Z[q], write Z[p], Z[q]
        "product": cost(half, lambda t: [pos(bitrev(bin_of(t), bits)),
                                         pos(bitrev((d - bin_of(t)) % d, bits))] * 2),
        "inverse FFT": fft(d, pos, radix8) // share,
        "output": cost(d, lambda j: [pos(j)]) // share,
    }
    if share == 2:  # the first row writes its product to the slot, the second reads it
        parts["pair slot"] = cost(half, lambda t: [t]) // share * 2
    return parts


def global_bytes_per_row(d: int, channels: int, inputs: int, strided: bool) -> dict:
    """DRAM/L2 traffic of one row of the unpooled forward: each input's channels gathered (a 32-byte
    sector per value when channels lie L values apart in NCHW, 4 bytes when contiguous) and one
    d-value output row written."""
    per_value = 32 if strided else 4
    return {"input gather (L2 to SM)": inputs * channels * per_value, "output row": 4 * d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.smem_model", description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=8192, help="output dimension, a power of two >= 32")
    ap.add_argument("--rows", type=int, default=1568, help="output rows (B x locations), default 32 x 7 x 7")
    ap.add_argument("--channels", type=int, default=1024, help="channels per input (two map inputs)")
    ap.add_argument("--sms", type=int, default=132, help="streaming multiprocessors (H100 SXM: 132)")
    ap.add_argument("--clock-ghz", type=float, default=1.755, help="SM clock (H100 SXM boost: 1.755)")
    ap.add_argument("--bandwidth-tbs", type=float, default=3.35, help="DRAM bandwidth (H100 SXM: 3.35)")
    args = ap.parse_args(argv)
    us_per_wavefront_row = args.rows / args.sms / (args.clock_ghz * 1e3)  # one wavefront per clock per SM
    print(f"shared-memory wavefronts per row, unpooled forward, d = {args.d}; time for {args.rows} rows "
          f"on {args.sms} SMs at {args.clock_ghz} GHz (the sketch scatter not counted)")
    for layout in ("before", "padded", "pairs", "radix-8"):
        parts = forward_row(args.d, layout)
        detail = ", ".join(f"{k} {v}" for k, v in parts.items())
        total = sum(parts.values())
        print(f"  {layout:9s} {total:7d}  {total * us_per_wavefront_row:7.1f} us   ({detail})")
    g = global_bytes_per_row(args.d, args.channels, 2, strided=True)
    total = sum(g.values())
    print(f"global traffic per row: {total / 1024:.0f} KiB ("
          + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in g.items())
          + f"): {total * args.rows / (args.bandwidth_tbs * 1e12) * 1e6:.1f} us at {args.bandwidth_tbs} TB/s "
          "if it all came from DRAM (the inputs mostly hit L2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
