"""Shared-memory bank model of the fused kernel (csrc/common/fused.h), per row of the unpooled
forward and backward: how many shared-memory wavefronts each phase costs for a given layout of Z.

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
  radix-8    pairs, with radix-8 passes (5 instead of 7 at d = 8192; commit 033ab34)
  radix-8s   radix-8, the last inverse pass storing the output rows itself (no trip of Z for
             the output): the kernel with COMPACT_BILINEAR_FFT_RADIX=8
  radix-32   radix-8s with passes up to radix 32 (3 at d = 8192): the kernel's default in float
             (256 threads of up to 128 registers; an earlier radix-16 pass at 512 threads took
             101 registers, one block per SM, and was not kept)
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


def schedule(log2n: int, max_bits: int, legacy: bool = False) -> list:
    """log2 of each forward pass's radix, largest spans first, as fused.h's Schedule runs them:
    as few passes as radix 2^max_bits allows, of balanced sizes, radix-8 and radix-16 passes last
    (the smallest spans). legacy: the remainder pass first, then full ones (commits up to 033ab34
    and their radix-4 predecessors)."""
    if log2n == 0:
        return [0]
    if legacy:
        rem = log2n % max_bits
        return ([rem] if rem else []) + [max_bits] * (log2n // max_bits)
    passes = -(-log2n // max_bits)
    q, big = divmod(log2n, passes)
    small_first = q + 1 in (3, 4) and q not in (3, 4)
    sizes = [q] * (passes - big) + [q + 1] * big
    return sizes if small_first else sizes[::-1]


def pass_costs(n: int, pos, sched: list) -> list:
    """Wavefronts of each pass (R values per thread at base + m h, each read once and written
    once), in forward order."""
    top, costs = n.bit_length() - 1, []
    for r in sched:
        lh, rr = top - r, 1 << r
        h = 1 << lh
        costs.append(cost(n // rr, lambda t, lh=lh, h=h, r=r, rr=rr: [
            pos(((t >> lh) << (lh + r)) + (t & (h - 1)) + m * h) for m in range(rr)] * 2))
        top -= r
    return costs


def fft(n: int, pos, sched: list, store_direct: bool = False, load_direct: bool = False) -> int:
    """One transform. store_direct: the inverse's last pass writes its values elsewhere (the output
    row); load_direct: the forward's first pass reads them from elsewhere (the gradient row). Either
    removes half of that pass's shared-memory accesses."""
    costs = pass_costs(n, pos, sched)  # the inverse's last pass is the forward's first
    return sum(costs) - (costs[0] // 2 if store_direct else 0) - (costs[0] // 2 if load_direct else 0)


def _layout(d: int, layout: str):
    """(padded position, half-spectrum slot -> bin, forward pass schedule, direct loads/stores)."""
    bits = d.bit_length() - 1
    pos = (lambda i: i) if layout == "before" else (lambda i: i + (i >> 4))
    if layout == "before":
        bin_of = lambda t: t  # noqa: E731
    else:
        bin_of = lambda t: bitrev(2 * t, bits) if t < d // 2 else d // 2  # noqa: E731
    if layout in ("before", "padded", "pairs"):
        sched = schedule(bits, 2, legacy=True)
    elif layout == "radix-8":
        sched = schedule(bits, 3, legacy=True)
    else:
        sched = schedule(bits, 5 if layout.startswith("radix-32") else 3)
    return pos, bin_of, sched, layout in ("radix-8s", "radix-32", "radix-32h")


def _bins(d: int, pos, bin_of, t: int) -> list:
    """Z positions of slot t's bin and its mirror."""
    bits = d.bit_length() - 1
    return [pos(bitrev(bin_of(t), bits)), pos(bitrev((d - bin_of(t)) % d, bits))]


LAYOUTS = ("before", "padded", "pairs", "radix-8", "radix-8s", "radix-32")


def forward_row(d: int, layout: str) -> dict:
    """Wavefronts per output row of the unpooled forward, by phase."""
    pos, bin_of, sched, direct = _layout(d, layout)
    half = d // 2 + 1
    share = 1 if layout in ("before", "padded") else 2  # rows per inverse FFT and per read of Z for output
    parts = {
        "zero Z": cost(d, lambda j: [pos(j)]),
        "forward FFT": fft(d, pos, sched),
        # split + product + Hermitian fill: read Z[p], Z[q], write Z[p], Z[q]
        "product": cost(half, lambda t: _bins(d, pos, bin_of, t) * 2),
        "inverse FFT": fft(d, pos, sched, store_direct=direct) // share,
    }
    if not direct:
        parts["output"] = cost(d, lambda j: [pos(j)]) // share
    if share == 2:  # the first row writes its product to the slot, the second reads it
        parts["pair slot"] = cost(half, lambda t: [t]) // share * 2
    return parts


BACKWARD_LAYOUTS = ("radix-8", "radix-8s", "radix-32", "radix-32h")


def backward_row(d: int, layout: str) -> dict:
    """Wavefronts per row of the unpooled backward of two map inputs (one thread group per row,
    a location-major gradient), by phase; the sketch scatter and the gradients' gather from Z
    (random positions) not counted. radix-8 is the kernel of commit 6235626, which first copied
    the gradient row into Z; radix-32h (the kernel since commit 35e3d82) sends the real gradient
    row through a d/2-point transform, whose slot t sits at position t (grad_spectrum)."""
    pos, bin_of, sched, direct = _layout(d, layout)
    half = d // 2 + 1
    if layout == "radix-32h":
        m = max(d // 2, 1)
        mbits = m.bit_length() - 1
        mirror = lambda t: bitrev((m - bitrev(t, mbits)) % m, mbits) if t < m else 0  # noqa: E731
        gradient_fft = fft(m, pos, schedule(mbits, 5), load_direct=True)
        gradient_split = cost(half, lambda t: [pos(t if t < m else 0), pos(mirror(t))]) + cost(half, lambda t: [t])
    else:
        gradient_fft = fft(d, pos, sched, load_direct=direct)
        gradient_split = cost(half, lambda t: _bins(d, pos, bin_of, t)) + cost(half, lambda t: [t])
    parts = {
        "gradient FFT": gradient_fft,
        "gradient split": gradient_split,
        "zero Z": cost(d, lambda j: [pos(j)]),
        "sketch FFT": fft(d, pos, sched),
        # split, Q = G conj(other spectrum) for both inputs, merged back: Z[p], Z[q] read and
        # written, the gradient's slot read
        "product": cost(half, lambda t: _bins(d, pos, bin_of, t) * 2) + cost(half, lambda t: [t]),
        "inverse FFT": fft(d, pos, sched),
    }
    if not direct:
        parts["gradient into Z"] = cost(d, lambda j: [pos(j)])
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
    def rows(row, layouts):
        for layout in layouts:
            parts = row(args.d, layout)
            detail = ", ".join(f"{k} {v}" for k, v in parts.items())
            total = sum(parts.values())
            print(f"  {layout:9s} {total:7d}  {total * us_per_wavefront_row:7.1f} us   ({detail})")

    rows(forward_row, LAYOUTS)
    print("the same per row of the unpooled backward, two maps (the gradients' gather not counted)")
    rows(backward_row, BACKWARD_LAYOUTS)
    g = global_bytes_per_row(args.d, args.channels, 2, strided=True)
    total = sum(g.values())
    print(f"global traffic per row: {total / 1024:.0f} KiB ("
          + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in g.items())
          + f"): {total * args.rows / (args.bandwidth_tbs * 1e12) * 1e6:.1f} us at {args.bandwidth_tbs} TB/s "
          "if it all came from DRAM (the inputs mostly hit L2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
