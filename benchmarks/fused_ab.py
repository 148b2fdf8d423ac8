"""A/B timings of the fused kernel's schedules at the canonical size, side by side in one process.

    python benchmarks/fused_ab.py

The FFT in passes up to radix 32 (the forward's default) and radix 8 (the backward's default;
COMPACT_BILINEAR_FFT_RADIX=8 or 32 sets both: five or three passes at d = 8192); unpooled forward
with rows in pairs and one at a time (COMPACT_BILINEAR_ROW_PAIRS), pooled forward at several rows
per chunk (the plan's, 6 at the canonical size, and others by COMPACT_BILINEAR_SUM_ROWS), both
with and without the prefetch of the next gather's input values (COMPACT_BILINEAR_PREFETCH=0),
and with the products apart from the transforms' unit passes (COMPACT_BILINEAR_UNIT_PRODUCT=0,
also forward+backward),
pooled forward+backward at the plan's rows per chunk and at 7 (a sample's 7 x 7 rows in 7 chunks),
forward+backward with an NCHW-contiguous (its rows read by clusters of blocks, and one by one:
COMPACT_BILINEAR_STAGE_GRAD=0) and a location-major upstream gradient, each with the NCHW maps'
rows read by the clusters and one by one (COMPACT_BILINEAR_STAGE_INPUTS=0) and the maps' gradients
written by the clusters and one by one (COMPACT_BILINEAR_STAGE_INPUT_GRADS=0), map x vector
forward (unpooled and pooled, with and without the prefetch) and forward+backward with rows in
pairs (the backward's chunks at the plan's 12 rows and at 7; an NCHW gradient's pairs read
together, and one by one) and one at a time, and with a location-major gradient; at d = 16384, map
x vector forward+backward fused (its backward's half spectra in global memory) and with 'auto'
(fused forward, fft backward), its forward alone, and the pooled forward of three maps (half
spectra in global memory); each beside the fft path. CUDA
events; a case's variants are timed in turn over 15 rounds (the median round per variant), inputs
rotated so L2 does not hold them, random normal inputs, every variant checked against the fft path
before it is timed.
"""
import os
import statistics

import torch

import compact_bilinear as cb
from compact_bilinear.reference import random_hashes

B, C, D, S = 32, 1024, 8192, (7, 7)


def timed(fn, sets, calls=6):
    """Mean time of `calls` back-to-back calls (one per input set), so the host's launch work
    overlaps the device's and is not counted the way a lone call counts it."""
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for s in sets[:calls]:
        fn(s)
    t1.record()
    t1.synchronize()
    return t0.elapsed_time(t1) * 1e3 / calls


def with_env(env, fn, *args):
    os.environ.update(env)
    try:
        return fn(*args)
    finally:
        for k in env:
            del os.environ[k]


def compare(group, reps=15):
    """One case's variants timed in turn, `reps` rounds (A B C A B C ...), so a drift of the card's
    clock or temperature during the case reaches every variant alike; the median round per variant."""
    errs, times = {}, {name: [] for _, name, *_ in group}
    for case, name, env, fn, ref, inputs in group:
        got, want = with_env(env, fn, inputs[0]), ref(inputs[0])
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        errs[name] = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, want))
        assert errs[name] < 1e-5, f"{case} {name}: rel err {errs[name]:.1e}"
        for s in inputs[:2]:  # warm-up
            with_env(env, fn, s)
    for _ in range(reps):
        for _, name, env, fn, _, inputs in group:
            times[name].append(with_env(env, timed, fn, inputs))
    for case, name, *_ in group:
        print(f"{case:18s} {name:36s} {statistics.median(times[name]):8.1f} us  {errs[name]:.1e}", flush=True)


def main():
    hs, ss = random_hashes((C, C), D, torch.Generator().manual_seed(0), device="cuda")
    sets = [[torch.randn(B, C, *S, device="cuda", requires_grad=True) for _ in range(2)] for _ in range(6)]
    # Forward-only variants take inputs that do not require grad: no autograd bookkeeping on the host.
    plain = [[x.detach() for x in s] for s in sets]
    grad = torch.randn(B, D, *S, device="cuda")  # NCHW-contiguous: the backward reads it at stride L
    # The layout of the forward's own output (location-major), which elementwise ops on the output
    # (signed sqrt, L2 normalisation) hand back: the backward reads whole rows.
    grad_rows = torch.randn(B, *S, D, device="cuda").movedim(-1, 1)

    def fwd(algo, pool):
        return lambda xs: cb.compact_bilinear_pooling(xs, hs, ss, D, sum_pool=pool, algorithm=algo)

    def fwd_bwd(algo, g=grad, pool=False):
        return lambda xs: torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, D, sum_pool=pool, algorithm=algo),
                                              xs, g)

    # (case, variant, environment, call, the fft path's call it must match, input sets)
    unpooled, pooled = fwd("fft", False), fwd("fft", True)
    radix8, radix32 = {"COMPACT_BILINEAR_FFT_RADIX": "8"}, {"COMPACT_BILINEAR_FFT_RADIX": "32"}
    no_prefetch = {"COMPACT_BILINEAR_PREFETCH": "0"}
    no_unit = {"COMPACT_BILINEAR_UNIT_PRODUCT": "0"}  # the product apart from the unit passes
    one_by_one = {"COMPACT_BILINEAR_STAGE_GRAD": "0"}
    variants = [
        ("unpooled fwd", "fft", {}, unpooled, unpooled, plain),
        ("unpooled fwd", "fused, row pairs", {}, fwd("fused", False), unpooled, plain),
        ("unpooled fwd", "fused, row pairs, radix 8", radix8, fwd("fused", False), unpooled, plain),
        ("unpooled fwd", "fused, row pairs, no prefetch", no_prefetch, fwd("fused", False), unpooled, plain),
        ("unpooled fwd", "fused, row pairs, unit passes apart", no_unit, fwd("fused", False), unpooled, plain),
        ("unpooled fwd", "fused, single rows", {"COMPACT_BILINEAR_ROW_PAIRS": "0"}, fwd("fused", False), unpooled,
         plain),
        ("pooled fwd", "fft", {}, pooled, pooled, plain),
        ("pooled fwd", "fused (6 rows per chunk, the plan's)", {}, fwd("fused", True), pooled, plain),
    ] + [("pooled fwd", f"fused, {n} rows per chunk", {"COMPACT_BILINEAR_SUM_ROWS": n}, fwd("fused", True), pooled,
          plain) for n in ("2", "4", "5", "7", "8")] + [
        ("pooled fwd", "fused, radix 8", radix8, fwd("fused", True), pooled, plain),
        ("pooled fwd", "fused, no prefetch", no_prefetch, fwd("fused", True), pooled, plain),
        ("pooled fwd", "fused, unit passes apart", no_unit, fwd("fused", True), pooled, plain)]
    # Chunks of flat rows against a sample's 7 x 7 rows in chunks of 7 (SUM_ROWS=7: the plan before
    # commit 2e3c3d3 in the forward and before c7cbb24 in the backward).
    pooled_grad = torch.randn(B, D, device="cuda")
    ref = fwd_bwd("fft", pooled_grad, True)
    variants += [("pooled fwd+bwd", "fft", {}, ref, ref, sets),
                 ("pooled fwd+bwd", "fused (6 rows per chunk, the plan's)", {}, fwd_bwd("fused", pooled_grad, True),
                  ref, sets),
                 ("pooled fwd+bwd", "fused, 7 rows per chunk", {"COMPACT_BILINEAR_SUM_ROWS": "7"},
                  fwd_bwd("fused", pooled_grad, True), ref, sets)]
    for layout, g in (("NCHW", grad), ("location-major", grad_rows)):
        ref = fwd_bwd("fft", g)
        variants += [("unpooled fwd+bwd", f"fft, {layout} grad", {}, ref, ref, sets),
                     ("unpooled fwd+bwd", f"fused, {layout} grad", {}, fwd_bwd("fused", g), ref, sets),
                     ("unpooled fwd+bwd", f"fused, {layout} grad, radix 8", radix8, fwd_bwd("fused", g), ref, sets),
                     ("unpooled fwd+bwd", f"fused, {layout} grad, radix 32", radix32, fwd_bwd("fused", g), ref,
                      sets),
                     ("unpooled fwd+bwd", f"fused, {layout} grad, unit passes apart", no_unit, fwd_bwd("fused", g),
                      ref, sets)]
    # The NCHW gradient's rows and the NCHW maps' rows read by clusters of 8 blocks (the default on
    # sm_90), and the maps' gradients written by them, against each block reading or writing its
    # own row at stride L: the gradient's one by one, the maps' (STAGE_INPUTS=0), the maps'
    # gradients (STAGE_INPUT_GRADS=0), all three (then no clusters; the location-major rows above
    # are the gradient's floor).
    maps_one_by_one = {"COMPACT_BILINEAR_STAGE_INPUTS": "0"}
    writes_one_by_one = {"COMPACT_BILINEAR_STAGE_INPUT_GRADS": "0"}
    for layout, g in (("NCHW", grad), ("location-major", grad_rows)):
        ref = fwd_bwd("fft", g)
        if layout == "NCHW":
            variants += [("unpooled fwd+bwd", "fused, NCHW grad, rows one by one", one_by_one, fwd_bwd("fused", g),
                          ref, sets),
                         ("unpooled fwd+bwd", "fused, NCHW grad, all rows one by one",
                          {**one_by_one, **maps_one_by_one, **writes_one_by_one}, fwd_bwd("fused", g), ref, sets)]
        variants += [("unpooled fwd+bwd", f"fused, {layout} grad, map rows one by one", maps_one_by_one,
                      fwd_bwd("fused", g), ref, sets),
                     ("unpooled fwd+bwd", f"fused, {layout} grad, map grads row by row", writes_one_by_one,
                      fwd_bwd("fused", g), ref, sets)]
    # One map input (map x vector): rows in pairs share the forward's transforms and, in the
    # backward, the gradients' inverse; ROW_PAIRS=0 takes forward and backward a row at a time.
    mv_sets = [[s[0], torch.randn(B, C, device="cuda", requires_grad=True)] for s in sets]
    mv_plain = [[x.detach() for x in s] for s in mv_sets]
    for pool in (False, True):
        case, ref = f"map x vec fwd{' pooled' if pool else ''}", fwd("fft", pool)
        variants += [(case, "fft", {}, ref, ref, mv_plain),
                     (case, "fused", {}, fwd("fused", pool), ref, mv_plain),
                     (case, "fused, no prefetch", no_prefetch, fwd("fused", pool), ref, mv_plain)]
    ref = fwd_bwd("fft")
    variants += [("map x vec fwd+bwd", "fft, NCHW grad", {}, ref, ref, mv_sets),
                 ("map x vec fwd+bwd", "fused, row pairs (backward: 12 rows per chunk, the plan's)", {},
                  fwd_bwd("fused"), ref, mv_sets),
                 ("map x vec fwd+bwd", "fused, row pairs, backward 7 rows per chunk",
                  {"COMPACT_BILINEAR_SUM_ROWS": "7"}, fwd_bwd("fused"), ref, mv_sets),
                 ("map x vec fwd+bwd", "fused, single rows", {"COMPACT_BILINEAR_ROW_PAIRS": "0"}, fwd_bwd("fused"),
                  ref, mv_sets),
                 ("map x vec fwd+bwd", "fused, NCHW grad rows one by one", one_by_one, fwd_bwd("fused"), ref, mv_sets)]
    ref = fwd_bwd("fft", grad_rows)
    variants += [("map x vec fwd+bwd", "fft, location-major grad", {}, ref, ref, mv_sets),
                 ("map x vec fwd+bwd", "fused, location-major grad", {}, fwd_bwd("fused", grad_rows), ref, mv_sets)]
    # d = 16384: the map x vector backward's half spectra, and the pooled forward's of three maps, do
    # not fit beside Z in shared memory and live in global memory (one block per SM taking the thread
    # groups in turn); 'auto' leaves such a backward to fft (the forward runs fused).
    hs16, ss16 = random_hashes((C, C, C), 2 * D, torch.Generator().manual_seed(0), device="cuda")
    grad16 = torch.randn(B, 2 * D, *S, device="cuda")

    def call16(algo, pool=False):
        return lambda xs: cb.compact_bilinear_pooling(xs, hs16[:len(xs)], ss16[:len(xs)], 2 * D, sum_pool=pool,
                                                      algorithm=algo)

    def fwd_bwd16(algo):
        return lambda xs: torch.autograd.grad(call16(algo)(xs), xs, grad16)

    ref = fwd_bwd16("fft")
    variants += [("map x vec 16384", "fft, NCHW grad", {}, ref, ref, mv_sets),
                 ("map x vec 16384", "auto: fused fwd, fft bwd", {}, fwd_bwd16("auto"), ref, mv_sets),
                 ("map x vec 16384", "fused, slots in global memory", {}, fwd_bwd16("fused"), ref, mv_sets),
                 ("map x vec 16384 fwd", "fft", {}, call16("fft"), call16("fft"), mv_plain),
                 ("map x vec 16384 fwd", "fused", {}, call16("fused"), call16("fft"), mv_plain)]
    maps3 = [[*s, torch.randn(B, C, *S, device="cuda")] for s in plain]
    ref = call16("fft", True)
    variants += [("3 maps pooled 16384", "fft", {}, ref, ref, maps3),
                 ("3 maps pooled 16384", "fused, slots in global memory", {}, call16("fused", True), ref, maps3)]
    print(f"{'case':18s} {'variant':36s} {'median':>10s}  rel err vs fft")
    for case in dict.fromkeys(v[0] for v in variants):
        compare([v for v in variants if v[0] == case])


if __name__ == "__main__":
    main()
