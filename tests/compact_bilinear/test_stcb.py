"""compact_bilinear: values against the definition, gradients, registration, dtypes and errors.

Ground truth is the explicit outer product (reference.explicit_outer_product_sketch) in float64;
gradients are checked with float64 gradcheck. Every test runs on the CPU and, where a device
exists, on CUDA; algorithm="fused" on the CPU runs the host instance of the CUDA kernel.
"""
import functools
import math
import sys
from pathlib import Path

import pytest
import torch

import compact_bilinear as cb
from compact_bilinear.reference import (
    compact_bilinear_pooling_reference,
    explicit_outer_product_sketch,
    random_hashes,
)

ALGOS = ["fft", "fused"]

# (channels per input, d, shapes without channels: () vector, (H, W) map, ...), sum_pool
CASES = {
    "k2_vectors_odd_d": ((5, 7), 13, [(), ()], False),
    "k3_vectors_prime_d": ((4, 6, 3), 31, [(), (), ()], False),
    "k2_maps": ((5, 7), 16, [(3, 4), (3, 4)], False),
    "k2_map_x_vector": ((6, 5), 32, [(3, 3), ()], False),
    "k3_map_vec_map": ((5, 7, 3), 16, [(2, 3), (), (2, 3)], False),
    "k2_video_3d": ((4, 5), 8, [(2, 3, 2), ()], False),
    "k2_maps_pooled": ((5, 7), 64, [(3, 4), (3, 4)], True),
    "k3_pooled_broadcast": ((5, 7, 3), 128, [(3, 3), (), (3, 3)], True),
    "k3_pooled_prime_d": ((4, 6, 3), 17, [(2, 2), (2, 2), ()], True),
    "k1_count_sketch": ((9,), 16, [(3, 3)], False),  # odd L: a row pair may straddle two samples
    "k2_map_x_vector_pooled": ((6, 5), 64, [(2, 5), ()], True),
    "k3_map_two_vectors": ((5, 4, 3), 32, [(3, 3), (), ()], False),
    "k3_map_two_vectors_pooled": ((5, 4, 3), 16, [(3, 3), (), ()], True),
    "k4_maps": ((3, 4, 2, 5), 16, [(2, 3)] * 4, False),
    "k5_three_maps_two_vectors": ((3, 4, 2, 5, 3), 16, [(2, 2), (), (2, 2), (), (2, 2)], False),
    "k4_mixed": ((3, 4, 2, 5), 32, [(2, 2), (), (), (2, 2)], False),
}


def make(case, device, dtype=torch.float64, batch=3, seed=0, requires_grad=False):
    dims, d, spatial, sum_pool = case
    g = torch.Generator().manual_seed(seed)
    hs, ss = random_hashes(dims, d, g, device=device)
    xs = [
        torch.randn(batch, c, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)
        for c, s in zip(dims, spatial)
    ]
    return xs, hs, ss, d, sum_pool


def fused_applies(d):
    return d & (d - 1) == 0 and d <= 16384


def gram_applies(case):
    # Two inputs and an output without locations: pooled, or two vectors.
    dims, _, spatial, sum_pool = case
    return len(dims) == 2 and (sum_pool or not any(spatial))


def case_algos(case):
    return [a for a in ALGOS if a == "fft" or fused_applies(case[1])] + (["gram"] if gram_applies(case) else [])


PARAMS = [(name, algo) for name, case in CASES.items() for algo in case_algos(case)]


@pytest.mark.parametrize("name,algo", PARAMS)
def test_values_match_explicit_outer_product(name, algo, device):
    xs, hs, ss, d, sum_pool = make(CASES[name], device)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    ref = explicit_outer_product_sketch(xs, hs, ss, d, sum_pool)
    assert out.shape == ref.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_output_shapes(device):
    hs, ss = random_hashes((4, 6), 10, device=device)
    x4, v = torch.randn(2, 4, 3, 5, device=device), torch.randn(2, 6, device=device)
    assert cb.compact_bilinear_pooling([x4, v], hs, ss, 10).shape == (2, 10, 3, 5)
    assert cb.compact_bilinear_pooling([x4, v], hs, ss, 10, sum_pool=True).shape == (2, 10)
    assert cb.compact_bilinear_pooling([torch.randn(2, 4, device=device), v], hs, ss, 10).shape == (2, 10)


# The fused FFT's largest radix (COMPACT_BILINEAR_FFT_RADIX, both phases): by default 32 in the float forward,
# 8 in the backward and in double.
RADICES = ["8", "32"]


@pytest.mark.parametrize("sum_pool", [False, True])
@pytest.mark.parametrize("radix", RADICES)
@pytest.mark.parametrize("d", [2 ** e for e in range(0, 15)])
def test_fused_every_supported_d(d, radix, sum_pool, device, monkeypatch):
    """The fused kernel at every power of two, forward and backward, unpooled and pooled, against
    the FFT path, with the FFT in passes of radix up to 8 and up to 32 (every pass schedule of
    fused.h's Schedule); the vector's gradient and the pooled output take the half-length real
    inverse (inverse_real) at every d too."""
    monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", radix)
    # float64 needs twice the shared memory of float32, so the largest sizes run in float32.
    dtype, tol = (torch.float64, 1e-9) if d <= 2048 else (torch.float32, 2e-5)
    # At 16384 the map x vector backward keeps its half spectra in global memory (see
    # test_fused_slots_in_global_memory).
    case = ((6, 5), d, [(2, 3), ()], sum_pool)
    xs, hs, ss, d, sum_pool = make(case, device, dtype=dtype, batch=2, requires_grad=True)
    ref = explicit_outer_product_sketch(xs, hs, ss, d, sum_pool)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    w = torch.randn_like(out)
    g_fused = torch.autograd.grad((out * w).sum(), xs)
    out_fft = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fft")
    g_fft = torch.autograd.grad((out_fft * w).sum(), xs)
    for a, b in zip(g_fused, g_fft):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


FUSED_RACE_CASES = [name for name, case in CASES.items() if fused_applies(case[1])]


@pytest.mark.parametrize("radix", RADICES)
@pytest.mark.parametrize("d", [1, 2, 8, 32, 128, 1024, 2048, 8192])
@pytest.mark.parametrize("name", FUSED_RACE_CASES)
def test_fused_host_instance_has_no_missing_barrier(name, d, radix, monkeypatch):
    """By default the host instance runs every for_each to completion, as if each ended with a
    barrier. The 'threads' schedules run each virtual thread's whole segment between two sync()
    calls before the next thread's, forwards and backwards: results must be bit-identical, or a
    thread reads (or overwrites) another thread's value with no barrier in between, where the GPU
    would race. The sizes cover one-pass transforms, every pass size from radix 2 to radix 32
    (1024 and 8192: two and three passes of which the first is radix 32), one- and many-chunk
    plans, and both FFT radices."""
    monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", radix)
    dims, _, spatial, sum_pool = CASES[name]
    xs, hs, ss, d, sum_pool = make((dims, d, [tuple(3 * e for e in s) for s in spatial], sum_pool), "cpu",
                                   dtype=torch.float32, requires_grad=True)

    def run():
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
        return [out, *torch.autograd.grad(out.square().sum(), xs)]

    immediate = run()
    for order in ("threads", "threads-reverse"):
        monkeypatch.setenv("COMPACT_BILINEAR_HOST_ORDER", order)
        for a, b in zip(immediate, run()):
            assert torch.equal(a, b), order


@pytest.mark.parametrize("sum_pool", [False, True])
def test_fused_fft_radices_agree_at_the_canonical_d(sum_pool, device, monkeypatch):
    """d = 8192 runs in passes of 32, 16 and 16 points by default and in five radix-8 passes with
    COMPACT_BILINEAR_FFT_RADIX=8: both match the definition, and really are two schedules."""
    case = ((6, 5), 8192, [(2, 3), (2, 3)], sum_pool)
    xs, hs, ss, d, sum_pool = make(case, device, dtype=torch.float32, batch=2, requires_grad=True)
    ref = explicit_outer_product_sketch(xs, hs, ss, d, sum_pool)
    outs = {}
    for radix in RADICES:
        monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", radix)
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
        torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())
        outs[radix] = out
    assert not torch.equal(outs["8"], outs["32"])


def test_fused_default_radix_is_32_forward_and_8_backward(monkeypatch):
    """In float, the forward runs radix-32 passes and the backward radix-8 ones (cbp.cpp
    fused_plan, as measured on an H100): the default's output is bit-identical to
    COMPACT_BILINEAR_FFT_RADIX=32's, its gradients to radix 8's, and the two schedules differ."""
    xs, hs, ss, d, _ = make(((6, 5), 8192, [(2, 3), (2, 3)], False), "cpu", dtype=torch.float32, batch=2,
                            requires_grad=True)

    w = torch.randn(2, d, 2, 3, generator=torch.Generator().manual_seed(0))  # the same upstream gradient

    def run():
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
        return out, torch.autograd.grad(out, xs, w)

    out, grads = run()
    by_radix = {}
    for radix in RADICES:
        monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", radix)
        by_radix[radix] = run()
    assert torch.equal(out, by_radix["32"][0]) and not torch.equal(out, by_radix["8"][0])
    for g, g8, g32 in zip(grads, by_radix["8"][1], by_radix["32"][1]):
        assert torch.equal(g, g8) and not torch.equal(g, g32)


def staging(plan):
    """The plan's (cluster, stage_grad, stage_x, stage_dx, grad_pairs): who reads the backward's rows
    together, and whether its clusters write the two maps' gradients together."""
    return plan["cluster"], plan["stage_grad"], plan["stage_x"], plan["stage_dx"], plan["grad_pairs"]


# (channels per input, d, spatial shapes, sum_pool, batch) -> the plan's (cluster, grad_pairs):
# unpooled backward calls whose NCHW output gradients are read a few rows together (fused.h
# stage_cluster_rows, stage_grad_rows): by clusters of 8 blocks, a row each, or by a single map's
# row pairs.
STAGE_GRAD_CASES = {
    "k2_maps": (((6, 5), 64, [(3, 3), (3, 3)], False), 3, (8, 0)),  # 27 rows: clusters span samples, the last has 3
    "k3_maps": (((4, 6, 3), 128, [(2, 3)] * 3, False), 2, (8, 0)),  # L = 6 < 8: a cluster's rows wrap samples
    "k2_maps_d64": (((5, 7), 64, [(2, 2), (2, 2)], False), 5, (8, 0)),  # d = 64, the least: L = 4
    "k2_video_3d": (((4, 5), 64, [(2, 3, 2), (2, 3, 2)], False), 2, (8, 0)),  # (B, d, T, H, W)
    "k2_map_vector_rows": (((6, 5), 256, [(3, 3), ()], False), 2, (8, 0)),  # a row a chunk: SUM_ROWS=1
    "k2_map_vector": (((6, 5), 64, [(3, 3), ()], False), 3, (0, 1)),  # chunks of a pair; odd L: some go as single rows
    "k1_count_sketch": (((9,), 8, [(2, 3)], False), 2, (0, 1)),  # a pair a chunk; d = 8, the least for pairs
    "k3_map_two_vectors": (((5, 4, 3), 32, [(3, 3), (), ()], False), 2, (0, 1)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", STAGE_GRAD_CASES)
def test_fused_backward_reads_nchw_gradient_rows_together(name, dtype, device, monkeypatch):
    """An NCHW-contiguous output gradient (what torch.randn(out.shape) gives; the output itself is
    location-major) is read a few rows together: by clusters of 8 blocks, each reading its slice of
    8 rows' values (the host instance emulates the clusters), or by a single map's row pairs. The plan
    says which, the input gradients are the reference's and bit-identical to those from the same
    gradient stored location-major, read row by row, and to those with the rows read one at a time
    (COMPACT_BILINEAR_STAGE_GRAD=0)."""
    case, batch, (cluster, pairs) = STAGE_GRAD_CASES[name]
    if name == "k2_map_vector_rows":
        monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", "1")
    xs, hs, ss, d, sum_pool = make(case, device, dtype=dtype, batch=batch, requires_grad=True)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        cluster = 0
    plan = fused_plan(xs, hs, ss, d, sum_pool, backward=True)
    two_maps = len(case[2]) == 2 and all(case[2])  # whose NCHW maps the clusters read together too
    assert staging(plan) == (cluster, cluster > 0, cluster > 0 and two_maps, cluster > 0 and two_maps, pairs)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nchw = g.to(device=device, dtype=dtype)
    rows = torch.empty_like(out).copy_(nchw)  # out's strides: location-major
    assert nchw.is_contiguous() and rows.stride(1) == 1

    def grads(w):
        y = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
        return torch.autograd.grad(y, xs, w)

    staged = grads(nchw)
    x64 = [x.detach().double().requires_grad_() for x in xs]
    truth = torch.autograd.grad(explicit_outer_product_sketch(x64, hs, ss, d, sum_pool), x64, nchw.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for got, want in zip(staged, truth):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    monkeypatch.setenv("COMPACT_BILINEAR_STAGE_GRAD", "0")
    plan = fused_plan(xs, hs, ss, d, sum_pool, backward=True)
    assert (plan["stage_grad"], plan["grad_pairs"]) == (0, 0)
    one_by_one = grads(nchw)
    monkeypatch.delenv("COMPACT_BILINEAR_STAGE_GRAD")
    by_rows = grads(rows)
    for a, b, c in zip(staged, one_by_one, by_rows):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_gradient_rows_read_together_only_where_they_can(monkeypatch):
    """Pooled outputs (one gradient row a sample), maps in chunks of a row at d below 64 and pairs at d
    below 8 (8 loads in flight per thread, in 8 slices and in one) read their gradient row by row, and
    the forward has no gradient (at d = 32 the clusters still read the two maps' rows, not at d = 8,
    where their row offsets would not fit in Z); the environment switches take '0' or '1' only."""
    for case in (CASES["k2_maps_pooled"], CASES["k2_map_x_vector_pooled"], ((5, 7), 32, [(3, 3), (3, 3)], False),
                 ((5, 7), 8, [(3, 3), (3, 3)], False), ((9,), 4, [(3, 3)], False)):
        xs, hs, ss, d, sum_pool = make(case, "cpu", batch=8)
        for backward in (True, False):
            plan = fused_plan(xs, hs, ss, d, sum_pool, backward=backward)
            maps_only = backward and d == 32
            assert staging(plan) == (8 * maps_only, 0, maps_only, maps_only, 0), (case, backward)
    xs, hs, ss, d, sum_pool = make(CASES["k2_maps"], "cpu")
    for name in ("STAGE_GRAD", "STAGE_INPUTS", "STAGE_INPUT_GRADS", "ROW_PAIRS", "PREFETCH"):
        monkeypatch.setenv(f"COMPACT_BILINEAR_{name}", "2")
        with pytest.raises(ValueError, match=f"COMPACT_BILINEAR_{name} must be '0' or '1', got '2'"):
            cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
        monkeypatch.delenv(f"COMPACT_BILINEAR_{name}")


# (channels per input, d, spatial shapes, batch): unpooled backward calls of two NCHW maps, whose
# clusters read their rows' input values together into each block's buffer (fused.h
# stage_cluster_rows), a slice of each map's channels per block: 8 slices of C channels, so some
# blocks read none where C < 8, and the slices differ in size where 8 does not divide C.
STAGE_X_CASES = {
    "k2_maps": (((6, 5), 64, [(3, 3), (3, 3)]), 3),  # 27 rows: clusters span samples, the last has 3
    "k2_maps_wide": (((37, 70), 128, [(2, 5), (2, 5)]), 2),  # slices of 4-5 and 8-9 channels
    "k2_maps_L3": (((12, 9), 32, [(1, 3), (1, 3)]), 5),  # L = 3: a cluster spans three samples; d < 64
    "k2_video_3d": (((4, 5), 64, [(2, 3, 2), (2, 3, 2)]), 2),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", STAGE_X_CASES)
def test_fused_backward_reads_nchw_map_rows_together(name, dtype, device, monkeypatch):
    """Two NCHW maps (a row's channels L apart, the rows next to each other) are read by clusters of 8
    blocks, each reading a slice of the channels of 8 rows into the buffers of the blocks whose rows
    they are (a 16-bit value at its half of the word that holds it); the gather reads them there.
    The input gradients are the reference's and bit-identical to those of the same inputs stored
    channels-last (each block gathers its own row), to those with COMPACT_BILINEAR_STAGE_INPUTS=0,
    and to those with a location-major output gradient (the clusters then read the maps alone)."""
    case, batch = STAGE_X_CASES[name]
    xs, hs, ss, d, _ = make((*case, False), device, dtype=dtype, batch=batch, requires_grad=True)
    cluster = 8 if device.type == "cpu" or torch.cuda.get_device_capability(device)[0] >= 9 else 0
    plan = fused_plan(xs, hs, ss, d, False, backward=True)
    assert staging(plan) == (cluster, cluster > 0 and d >= 64, cluster > 0, cluster > 0, 0)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    rows = torch.empty_like(out).copy_(g)  # location-major, as the output

    def grads(inputs, w):
        y = cb.compact_bilinear_pooling(inputs, hs, ss, d, algorithm="fused")
        return torch.autograd.grad(y, inputs, w)

    staged = grads(xs, g)
    x64 = [x.detach().double().requires_grad_() for x in xs]
    truth = torch.autograd.grad(explicit_outer_product_sketch(x64, hs, ss, d), x64, g.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}[dtype]
    for got, want in zip(staged, truth):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    last = [x.detach().movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_() for x in xs]  # channels-last
    assert not fused_plan(last, hs, ss, d, False, backward=True)["stage_x"]
    others = [grads(last, g), grads(xs, rows)]
    monkeypatch.setenv("COMPACT_BILINEAR_STAGE_INPUTS", "0")
    assert not fused_plan(xs, hs, ss, d, False, backward=True)["stage_x"]
    others.append(grads(xs, g))
    for other in others:
        for a, b in zip(staged, other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", STAGE_X_CASES)
def test_fused_backward_writes_map_gradients_together(name, dtype, device, monkeypatch):
    """The two maps' input gradients, (B, C, L) contiguous as the backward returns them (a row's
    channels L apart), are written by clusters of 8 blocks together: each block leaves its row's
    values in its gradient slot, and after a cluster barrier writes a slice of the channels of all
    8 rows. They are the reference's and bit-identical to those each block writes itself
    (COMPACT_BILINEAR_STAGE_INPUT_GRADS=0), with NCHW maps and gradient (the clusters read them
    too) and with channels-last maps and a location-major gradient (the clusters only write)."""
    case, batch = STAGE_X_CASES[name]
    xs, hs, ss, d, _ = make((*case, False), device, dtype=dtype, batch=batch, requires_grad=True)
    cluster = 8 if device.type == "cpu" or torch.cuda.get_device_capability(device)[0] >= 9 else 0
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device, dtype)
    last = [x.detach().movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_() for x in xs]
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}[dtype]
    x64 = [x.detach().double().requires_grad_() for x in xs]
    truth = torch.autograd.grad(explicit_outer_product_sketch(x64, hs, ss, d), x64, g.double())
    for inputs, w in ((xs, g), (last, torch.empty_like(out).copy_(g))):
        def grads():
            y = cb.compact_bilinear_pooling(inputs, hs, ss, d, algorithm="fused")
            return torch.autograd.grad(y, inputs, w)

        plan = fused_plan(inputs, hs, ss, d, False, backward=True)
        assert (plan["cluster"], plan["stage_dx"]) == (cluster, cluster > 0)
        together = grads()
        for got, want in zip(together, truth):
            assert got.is_contiguous()
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
        monkeypatch.setenv("COMPACT_BILINEAR_STAGE_INPUT_GRADS", "0")
        assert not fused_plan(inputs, hs, ss, d, False, backward=True)["stage_dx"]
        for a, b in zip(together, grads()):
            assert torch.equal(a, b)
        monkeypatch.delenv("COMPACT_BILINEAR_STAGE_INPUT_GRADS")


def test_map_gradients_written_together_only_where_they_fit(monkeypatch):
    """The clusters write the two maps' gradients together only where each block's gradient slot, 2F
    values of the accumulation type, holds both maps' channels (C_0 + C_1 <= d + 2), and only for
    two maps without vectors, unpooled, a row a chunk. A full slot gives the gradients each block
    writes itself."""
    for case, dx in ((((17, 18), 32, [(2, 3), (2, 3)], False), 0), (((17, 17), 32, [(2, 3), (2, 3)], False), 1),
                     (((4, 6, 3), 64, [(2, 3)] * 3, False), 0), (((6, 5), 64, [(3, 3), ()], False), 0),
                     (((6, 5), 64, [(3, 3), (3, 3)], True), 0)):
        xs, hs, ss, d, sum_pool = make(case, "cpu", dtype=torch.float32, batch=2, requires_grad=True)
        assert fused_plan(xs, hs, ss, d, sum_pool, backward=True)["stage_dx"] == dx, case
    xs, hs, ss, d, _ = make(((17, 17), 32, [(2, 3), (2, 3)], False), "cpu", dtype=torch.float32, batch=2,
                            requires_grad=True)
    w = torch.randn(2, d, 2, 3, generator=torch.Generator().manual_seed(3))

    def grads():
        return torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused"), xs, w)

    together = grads()
    monkeypatch.setenv("COMPACT_BILINEAR_STAGE_INPUT_GRADS", "0")
    for a, b in zip(together, grads()):
        assert torch.equal(a, b)


def test_fft_radix_rejects_other_values(monkeypatch):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], "cpu")
    monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", "16")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_FFT_RADIX must be '8' or '32', got '16'"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")


SKETCH_CASES = {
    **{n: CASES[n] for n in ("k2_vectors_odd_d", "k3_map_vec_map", "k2_maps_pooled", "k3_pooled_prime_d",
                             "k1_count_sketch")},
    "k2_crowded_buckets": ((40, 9), 8, [(2, 3), (2, 3)], False),  # 5 channels a bucket on average
    "k2_sparse_buckets": ((5, 3), 1000, [(2, 2), ()], False),  # most buckets empty, d not a power of 2
}


def scatter_and_gather(xs, hs, ss, d, sum_pool, algo, w, monkeypatch):
    """The output and input gradients of one call, with the CPU's sketches as a scatter (the
    default), then as the GPU's gather (COMPACT_BILINEAR_HOST_SKETCH=gather)."""
    def run():
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
        return [out, *torch.autograd.grad(out, xs, w)]

    scatter = run()
    monkeypatch.setenv("COMPACT_BILINEAR_HOST_SKETCH", "gather")
    return scatter, run()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(SKETCH_CASES))
def test_fft_sketch_gather_matches_the_scatter(name, dtype, monkeypatch):
    """The CUDA kernel's count sketch (spectral.h bucket_sketch: each bucket sums its run of the
    channels sorted by bucket, every bucket written) against the CPU's scatter, on the CPU through
    COMPACT_BILINEAR_HOST_SKETCH=gather: bit-identical outputs and gradients (the same sums in the
    same order, input 0's terms scaled by the inverse FFT's 1/d), with buckets that hold many
    channels, all of an input's channels in one bucket, empty buckets, and a vector whose channels
    are not contiguous."""
    xs, hs, ss, d, sum_pool = make(SKETCH_CASES[name], "cpu", dtype=dtype)
    hs[-1] = torch.full_like(hs[-1], d - 1)  # one bucket takes all of the last input's channels
    xs[-1] = xs[-1].transpose(0, 1).contiguous().transpose(0, 1) if xs[-1].dim() == 2 else xs[-1]
    xs = [x.requires_grad_() for x in xs]
    shape = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fft").shape
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)

    scatter, gather = scatter_and_gather(xs, hs, ss, d, sum_pool, "fft", w, monkeypatch)
    for a, b in zip(scatter, gather):
        assert torch.equal(a, b)
    if dtype == torch.float64:
        ref = explicit_outer_product_sketch([x.detach() for x in xs], hs, ss, d, sum_pool)
        torch.testing.assert_close(gather[0], ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())


@pytest.mark.parametrize("name", list(CASES))
def test_fft_per_bin_products_match_the_blocks(name, monkeypatch):
    """The CUDA kernel's spectral products (spectral.h, a bin per thread) against the CPU's block
    loops, on the CPU through COMPACT_BILINEAR_HOST_PRODUCT=per-bin, in float64: the output and
    every input gradient, and each input's gradient alone (input_grads), where the per-bin
    backward writes only that input's product and may lack its spectrum."""
    xs, hs, ss, d, sum_pool = make(CASES[name], "cpu")
    run = functools.partial(cb.compact_bilinear_pooling, xs, hs, ss, d, sum_pool=sum_pool, algorithm="fft")
    grad = torch.randn(run().shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def calls():
        bwd = functools.partial(torch.ops.compact_bilinear.backward, grad, xs, hs, ss, d, sum_pool, "fft")
        return [run(), *bwd(), *(bwd([k])[k] for k in range(len(xs)))]

    blocks = calls()
    monkeypatch.setenv("COMPACT_BILINEAR_HOST_PRODUCT", "per-bin")
    per_bin = calls()
    for a, b in zip(blocks, per_bin):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * max(a.abs().max().item(), 1e-300))


def test_host_product_rejects_other_values(monkeypatch):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], "cpu")
    monkeypatch.setenv("COMPACT_BILINEAR_HOST_PRODUCT", "scalar")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_HOST_PRODUCT must be 'blocks' or 'per-bin', got 'scalar'"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fft")


def test_host_sketch_rejects_other_values(monkeypatch):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], "cpu")
    monkeypatch.setenv("COMPACT_BILINEAR_HOST_SKETCH", "atomic")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_HOST_SKETCH must be 'scatter' or 'gather', got 'atomic'"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fft")


def test_host_order_rejects_unknown_schedules(monkeypatch):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], "cpu")
    monkeypatch.setenv("COMPACT_BILINEAR_HOST_ORDER", "sideways")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_HOST_ORDER must be"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")


@pytest.mark.parametrize("radix", RADICES)
@pytest.mark.parametrize("sum_pool", [False, True])
def test_fused_largest_d_k2_maps(sum_pool, radix, device, monkeypatch):
    """d = 16384 with both pass schedules, the backward included (test_fused_every_supported_d's
    map x vector backward keeps its half spectra in global memory there, always with radix 8)."""
    monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", radix)
    case = ((3, 4), 16384, [(2, 2), (2, 2)], sum_pool)
    xs, hs, ss, d, sum_pool = make(case, device, dtype=torch.float32, batch=1, requires_grad=True)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
    ref = explicit_outer_product_sketch(xs, hs, ss, d, sum_pool)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), xs)
    g2 = torch.autograd.grad((compact_bilinear_pooling_reference(xs, hs, ss, d, sum_pool) * w).sum(), xs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * b.abs().max().item())


GLOBAL_SLOT_CASES = {
    # Z and more half spectra than fit beside it in 227 KiB: float at d = 16384 with two or more.
    "map_x_vector": (((6, 5), 16384, [(2, 3), ()], False), torch.float32),  # backward: G, the vector's
    "map_x_vector_pooled": (((6, 5), 16384, [(2, 3), ()], True), torch.float32),
    "three_maps": (((3, 4, 2), 16384, [(2, 2)] * 3, False), torch.float32),  # backward: G, a map's
    "three_maps_pooled": (((3, 4, 2), 16384, [(2, 2)] * 3, True), torch.float32),  # forward too
    "double_map_x_vector": (((6, 5), 8192, [(2, 3), ()], False), torch.float64),
}


@pytest.mark.parametrize("rows", ["", "5"])
@pytest.mark.parametrize("name", list(GLOBAL_SLOT_CASES))
def test_fused_slots_in_global_memory(name, rows, device, monkeypatch):
    """Where a thread group's half spectra do not fit beside Z in shared memory, the fused kernel
    keeps them in global memory, a workspace per concurrent thread group that it reuses from one
    group to the next; before, these calls took the FFT path (and algorithm='fused' raised). The
    output and the gradients match the definition. On a GPU, 300 samples give more thread groups
    than the grid has blocks (one per SM here), so each block takes several in turn. At 5 rows a
    chunk, the chunks that sum over 6 locations (pooled, or a vector's gradient) straddle samples."""
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", rows)
    case, dtype = GLOBAL_SLOT_CASES[name]
    batch = 2 if device.type == "cpu" else 300
    xs, hs, ss, d, sum_pool = make(case, device, dtype=dtype, batch=batch, requires_grad=True)
    w = torch.randn(cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fft").shape,
                    dtype=dtype, device=device, generator=torch.Generator(device).manual_seed(1))
    got = forward_and_grads(lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool,
                                                                  algorithm="fused"), xs, w)
    x64 = [x.detach().double().requires_grad_() for x in xs]
    expect = forward_and_grads(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d, sum_pool), x64,
                               w.double())
    tol = 2e-5 if dtype == torch.float32 else 1e-9
    for a, b in zip(got, expect):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("name", list(GLOBAL_SLOT_CASES))
def test_auto_leaves_a_backward_with_slots_in_global_memory_to_fft(name, device, monkeypatch):
    """'auto' takes the fused kernel on CUDA where it applies, except a backward whose plan keeps its
    half spectra in global memory: that one runs the fft path (on an H100 at d = 16384 such a
    backward took about 1.4x fft's time; a forward with its slots there beat fft by 16 %). On the
    CPU 'auto' is fft, or gram where that runs and costs less (test_auto_takes_gram_...). A pooled
    single map keeps its rows here (COMPACT_BILINEAR_SUM_MAP_FIRST=0)."""
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_MAP_FIRST", "0")
    case, dtype = GLOBAL_SLOT_CASES[name]
    xs, hs, ss, d, sum_pool = make(case, device, dtype=dtype, batch=1)
    for backward in (False, True):
        plan = torch.ops.compact_bilinear.plan(xs, hs, ss, d, sum_pool, "fused", backward)
        auto = torch.ops.compact_bilinear.plan(xs, hs, ss, d, sum_pool, "auto", backward)
        if device.type == "cuda":
            assert auto == (plan if not (backward and "global_slots=1" in plan) else "fft"), (backward, plan)
        else:
            assert auto == "fft" or (auto == "gram" and gram_applies(case)), (backward, auto)
    # Every case here has a direction with slots in global memory.
    assert any("global_slots=1" in torch.ops.compact_bilinear.plan(xs, hs, ss, d, sum_pool, "fused", bw)
               for bw in (False, True))


def test_fused_raises_where_z_alone_exceeds_shared_memory():
    """float64 at d = 16384: the d-point buffer alone takes 272 KiB (and 32 bytes of codes); 'fused'
    says so, 'auto' runs."""
    xs, hs, ss, d, _ = make(((3, 4), 16384, [(), ()], False), "cpu")
    with pytest.raises(ValueError, match="algorithm='fused' cannot run this call: the fused forward kernel "
                                         "would need 278560 bytes of shared memory .* above the limit of 232448"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
    assert cb.compact_bilinear_pooling(xs, hs, ss, d).shape == (3, d)


def forward_and_grads(fn, xs, w):
    out = fn(xs)
    return [out, *torch.autograd.grad((out * w).sum(), xs)]


@pytest.mark.parametrize("name", ["k2_maps", "k2_map_x_vector", "k4_mixed", "k1_count_sketch", "k2_video_3d",
                                  "k3_map_two_vectors", "k4_maps", "k5_three_maps_two_vectors"])
def test_fused_row_pairs_match_single_rows(name, device, monkeypatch):
    """Unpooled rows in pairs against rows one at a time (COMPACT_BILINEAR_ROW_PAIRS=0), both
    against the definition, forward and backward; odd and even location counts. The forward's
    pairs share one inverse FFT for two real rows; with a single map input the pair's sketches
    share each forward transform as well, and in the backward the pair's two real gradients
    share the inverse."""
    xs, hs, ss, d, _ = make(CASES[name], device, requires_grad=True)
    ref = explicit_outer_product_sketch(xs, hs, ss, d)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype).to(device)
    expect = forward_and_grads(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d), xs, w)
    fused = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, algorithm="fused")
    paired = forward_and_grads(fused, xs, w)
    monkeypatch.setenv("COMPACT_BILINEAR_ROW_PAIRS", "0")
    single = forward_and_grads(fused, xs, w)
    torch.testing.assert_close(paired[0], ref, rtol=1e-10, atol=1e-10)
    for got in (paired, single):
        for a, b in zip(got, expect):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Really two schedules, which round differently: the output, and where one map's backward
    # pairs its rows, that map's gradient.
    assert not torch.equal(paired[0], single[0])
    one_map = sum(x.dim() > 2 for x in xs) == 1
    map_grad = next(i for i, x in enumerate(xs) if x.dim() > 2) + 1
    assert torch.equal(paired[map_grad], single[map_grad]) != one_map


@pytest.mark.parametrize("spatial,rows", [((2, 4), "1"), ((2, 4), "3"), ((2, 4), "5"), ((2, 4), "8"),
                                          ((2, 4), "20"), ((9, 9), "")])
@pytest.mark.parametrize("second", ["vector", "map"])
def test_fused_sums_over_chunks_of_locations(spatial, rows, second, device, monkeypatch):
    """A pooled output, and a vector input's gradient, sum over a sample's locations. The chunks
    that sum (the pooled forward's and backward's, the backward's with a vector input) are runs of
    flat rows of all 3 samples, which may start and end inside a sample; the last of a sample's
    chunks to end sums their spectra in chunk order and runs the (half-length) inverse transform.
    8 locations in chunks of 1, 3, 5 (chunks straddling samples), 8 (one a sample) and 20 rows
    (samples inside a chunk, and straddling), and 81 at the plan's rows. A map beside a vector (a
    single map's rows go in pairs) and two maps. Each matches the definition, and repeated calls,
    whose chunks end in another order on the CPU's threads or the GPU's SMs, are bit-identical. A
    pooled single map keeps its rows here (COMPACT_BILINEAR_SUM_MAP_FIRST=0)."""
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", rows)
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_MAP_FIRST", "0")
    for sum_pool in (True, False):
        xs, hs, ss, d, _ = make(((6, 5), 64, [spatial, () if second == "vector" else spatial], sum_pool), device,
                                requires_grad=True)
        ref = explicit_outer_product_sketch(xs, hs, ss, d, sum_pool)
        w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype).to(device)
        expect = forward_and_grads(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d, sum_pool), xs, w)
        fused = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
        runs = [forward_and_grads(fused, xs, w) for _ in range(3)]
        for a, b in zip(runs[0], expect):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for run in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


def test_fused_backward_gradient_values_4_gib_apart(device):
    """The fused backward steps through an output gradient's row with a 32-bit byte stride; a
    gradient whose values lie 4 GiB or more apart is read from a location-major copy. Its storage is
    4 GiB of address space, of which only the values read are ever touched on the CPU."""
    if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < 8 << 30:
        pytest.skip("needs 4 GiB of free device memory")
    hs, ss = random_hashes((5, 3), 2, torch.Generator().manual_seed(0), device=device)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, c, generator=g).to(device).requires_grad_() for c in (5, 3)]
    out = cb.compact_bilinear_pooling(xs, hs, ss, 2, algorithm="fused")
    far = torch.empty((1 << 30) + 3, device=device).as_strided(out.shape, (1, 1 << 30))
    far.copy_(torch.randn(out.shape, generator=g).to(device) + 2)  # never 0
    assert far.stride(1) * far.element_size() == 1 << 32
    got = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, 2, algorithm="fused"), xs, far)
    near = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, 2, algorithm="fused"), xs, far.contiguous())
    x64 = [x.detach().double().requires_grad_() for x in xs]
    truth = torch.autograd.grad(explicit_outer_product_sketch(x64, hs, ss, 2), x64, far.double())
    for a, b, want in zip(got, near, truth):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_fused_backward_single_rows_where_a_row_pair_does_not_fit(device, monkeypatch):
    """A single map's backward keeps a second gradient spectrum for its rows in pairs. With three
    vectors beside the map at d = 8192 (float32) that slot does not fit beside the vectors'
    accumulators, so the rows go one at a time: bit-identical to COMPACT_BILINEAR_ROW_PAIRS=0,
    and matching the reference."""
    case = ((3, 4, 2, 5), 8192, [(2, 2), (), (), ()], False)
    xs, hs, ss, d, _ = make(case, device, dtype=torch.float32, batch=1, requires_grad=True)
    w = torch.randn(1, d, 2, 2, generator=torch.Generator().manual_seed(1)).to(device)
    fused = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, algorithm="fused")
    got = forward_and_grads(fused, xs, w)
    monkeypatch.setenv("COMPACT_BILINEAR_ROW_PAIRS", "0")
    single = forward_and_grads(fused, xs, w)
    for a, b in zip(got[1:], single[1:]):
        assert torch.equal(a, b)
    x64 = [x.detach().double().requires_grad_() for x in xs]
    expect = forward_and_grads(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d), x64, w.double())
    for a, b in zip(got, expect):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=2e-5 * b.abs().max().item())


def test_fused_single_rows_where_a_row_pair_does_not_fit(device):
    """Unpooled rows go in pairs that share one inverse FFT, keeping the first row's product in
    a spare slot. Three maps at d = 16384 leave no room for that slot, so the forward takes the
    rows one at a time, and still matches the definition."""
    case = ((3, 4, 2), 16384, [(2, 2)] * 3, False)
    xs, hs, ss, d, _ = make(case, device, dtype=torch.float32, batch=1)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused")
    ref = explicit_outer_product_sketch(xs, hs, ss, d)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())


def fused_plan(xs, hs, ss, d, sum_pool, backward=False):
    """The fused kernel's plan for a call (torch.ops.compact_bilinear.plan) as a dict of ints."""
    words = torch.ops.compact_bilinear.plan(xs, hs, ss, d, sum_pool, "fused", backward).split()
    assert words[0] == "fused"
    return {k: int(v) for k, v in (w.split("=") for w in words[1:])}


# (channels per input, d, spatial shapes, sum_pool): forward calls with a map, so a gather of two of
# its maps of a row, or of two of its single map's rows.
PREFETCH_CASES = {
    "k2_maps": ((6, 5), 64, [(3, 3), (3, 3)], False),  # a pair of rows: two gathers
    "k2_maps_pooled": ((6, 5), 64, [(3, 3), (3, 3)], True),  # chunks of 5 and 4 rows
    "k4_maps": ((3, 4, 2, 5), 32, [(2, 3)] * 4, False),  # two pairs of maps per row
    "k4_three_maps_vector": ((3, 4, 2, 5), 32, [(3, 1), (), (3, 1), (3, 1)], False),  # a lone third map
    # A single map: a chunk's rows in pairs, a gather each. Unpooled, a chunk is one pair of the 27
    # rows (3 samples of 9: pairs span samples, the last chunk is one row); pooled, chunks of 5 and 4
    # rows gather 3 and 2 times.
    "k2_map_x_vector": ((6, 5), 64, [(3, 3), ()], False),
    "k2_map_x_vector_pooled": ((6, 5), 64, [(3, 3), ()], True),
    "k3_map_two_vectors": ((5, 3, 4), 32, [(), (3, 1), ()], False),
}


def prefetched_equals_direct(xs, hs, ss, d, sum_pool, w, monkeypatch):
    """The fused call's output and input gradients with the plan's prefetch buffer, asserted
    bit-identical to those with COMPACT_BILINEAR_PREFETCH=0 (left set); returns the former."""
    fused = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
    prefetched = forward_and_grads(fused, xs, w)
    monkeypatch.setenv("COMPACT_BILINEAR_PREFETCH", "0")
    direct = forward_and_grads(fused, xs, w)
    for a, b in zip(prefetched, direct):
        assert torch.equal(a, b)
    return prefetched


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(PREFETCH_CASES))
def test_fused_prefetch_matches_the_direct_gather(name, dtype, device, monkeypatch):
    """The forward copies each next gather's input values into shared memory while the current rows
    transform (fused.h PrefetchWord). Its outputs are bit-identical to the gather that reads global
    memory (COMPACT_BILINEAR_PREFETCH=0) and match the definition; so are the gradients (the
    backward has no buffer).
    16-bit values travel in the 4-byte word that holds them, at either half: the first input
    starts one element into its storage, and where its locations are odd in number (3 x 3, 3 x 1)
    its channels alternate halves."""
    case = PREFETCH_CASES[name]
    xs, hs, ss, d, sum_pool = make(case, device, dtype=dtype, requires_grad=False)
    flat = torch.randn(xs[0].numel() + 1, generator=torch.Generator().manual_seed(2))
    xs[0] = flat.to(device=device, dtype=dtype)[1:].view(xs[0].shape)
    assert xs[0].storage_offset() == 1
    xs = [x.requires_grad_() for x in xs]
    ref = explicit_outer_product_sketch([x.detach().double() for x in xs], hs, ss, d, sum_pool)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    assert fused_plan(xs, hs, ss, d, sum_pool)["prefetch_half"] == max(case[0][k] for k, s in enumerate(case[2]) if s)
    prefetched = prefetched_equals_direct(xs, hs, ss, d, sum_pool, w, monkeypatch)
    assert fused_plan(xs, hs, ss, d, sum_pool)["prefetch_half"] == 0
    tol = {torch.float64: 1e-10, **TOL}[dtype]
    torch.testing.assert_close(prefetched[0].double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


# (batch, case): at d = 16384 more chunks than the 132 blocks an H100 runs at once.
SEVERAL_CHUNKS_PER_BLOCK = {
    "k2_maps": (6, ((6, 5), 16384, [(7, 7), (7, 7)], False)),  # 147 pairs of rows
    "k2_map_x_vector": (6, ((6, 5), 16384, [(7, 7), ()], False)),  # 147 pairs of rows
    "k2_maps_pooled": (20, ((6, 5), 16384, [(7, 7), (7, 7)], True)),  # 140 chunks of 7 rows (set below)
}


@pytest.mark.parametrize("name", list(SEVERAL_CHUNKS_PER_BLOCK))
def test_fused_prefetch_where_blocks_take_several_chunks(name, device, monkeypatch):
    """The prefetching forward runs as many blocks as fit at once, each taking chunks in turn, and
    a chunk's last gather prefetches the first of the block's next chunk (fused.h Turn). At
    d = 16384 an H100 holds one block per SM, 132 in all (the plan's shared memory: 139264 bytes
    for Z, 204808 with a slot), so these calls give some blocks two chunks; the small tests above
    give every block a single chunk on a GPU. Float32 outputs and gradients are bit-identical with
    and without the buffer and match the definition. (The plan sizes pooled chunks to fit the
    blocks that run at once, 8 rows here; 7 rows per chunk make more.)"""
    batch, case = SEVERAL_CHUNKS_PER_BLOCK[name]
    if case[3]:
        monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", "7")
    xs, hs, ss, d, sum_pool = make(case, device, dtype=torch.float32, batch=batch, requires_grad=True)
    plan = fused_plan(xs, hs, ss, d, sum_pool)
    chunks = -(-batch * 49 // plan["rows_per_chunk"])
    assert plan["prefetch_half"] == 6 and chunks > 132 and plan["smem_bytes"] > 228 * 1024 // 2
    ref = explicit_outer_product_sketch([x.detach().double() for x in xs], hs, ss, d, sum_pool)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    prefetched = prefetched_equals_direct(xs, hs, ss, d, sum_pool, w, monkeypatch)
    torch.testing.assert_close(prefetched[0].double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())


# (d, spatial shapes, sum_pool, rows one by one): where the forward's last pass is radix 16 (radix-32
# passes: d = 256, 512, 4096, 8192, 16384), two maps' product in every sink: a pair's first and second
# row (even L), a row alone (odd L: a pair across two samples runs as two rows; pairs turned off),
# the pooled accumulator.
UNIT_PRODUCT_CASES = {
    "pairs_256": (256, [(2, 3), (2, 3)], False, False),
    "pairs_512_odd_L": (512, [(3, 3), (3, 3)], False, False),
    "pooled_4096": (4096, [(3, 3), (3, 3)], True, False),
    "pairs_8192": (8192, [(2, 2), (2, 2)], False, False),
    "single_rows_8192": (8192, [(1, 3), (1, 3)], False, True),
    "pooled_8192": (8192, [(2, 3), (2, 3)], True, False),
    "pairs_16384_odd_L": (16384, [(1, 3), (1, 3)], False, False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(UNIT_PRODUCT_CASES))
def test_fused_unit_product_matches_separate_passes(name, dtype, device, monkeypatch):
    """Two maps' product runs fused with the transforms' passes of span 1 (fused.h unit_product: a
    thread holds a bin's block and its mirror's in registers): the forward's (radix 16) and the
    backward's (radix 8). Same arithmetic in the same order: the outputs and the gradients are
    bit-identical to the separate passes and product phases (COMPACT_BILINEAR_UNIT_PRODUCT=0), and
    match the definition."""
    d, spatial, sum_pool, single = UNIT_PRODUCT_CASES[name]
    if single:
        monkeypatch.setenv("COMPACT_BILINEAR_ROW_PAIRS", "0")
    xs, hs, ss, d, sum_pool = make(((6, 5), d, spatial, sum_pool), device, dtype=dtype, batch=2, requires_grad=True)
    assert fused_plan(xs, hs, ss, d, sum_pool)["unit_product"] == 1
    assert fused_plan(xs, hs, ss, d, sum_pool, backward=True)["unit_product"] == 1
    ref = explicit_outer_product_sketch([x.detach().double() for x in xs], hs, ss, d, sum_pool)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    fused = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
    unit = forward_and_grads(fused, xs, w)
    monkeypatch.setenv("COMPACT_BILINEAR_UNIT_PRODUCT", "0")
    assert fused_plan(xs, hs, ss, d, sum_pool)["unit_product"] == 0
    separate = forward_and_grads(fused, xs, w)
    for a, b in zip(unit, separate):
        assert torch.equal(a, b)
    tol = TOL[dtype]
    torch.testing.assert_close(unit[0].double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    x64 = [x.detach().double().requires_grad_() for x in xs]
    expect = forward_and_grads(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d, sum_pool), x64, w.double())
    for a, b in zip(unit[1:], expect[1:]):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item())


def test_fused_unit_product_only_where_the_last_pass_has_its_radix(monkeypatch):
    """The unit passes are radix 16 in kernels of radix-32 passes (the forward's: d = 256, 512, 4096,
    8192 and 16384, not 1024, two radix-32 passes, or 2048, 4, 4, 3 stages) and radix 8 in those of
    radix 8 (the backward's, or COMPACT_BILINEAR_FFT_RADIX=8: d = 32 and up; 16 is 4, 4 stages).
    Float only (a double's 16 values of a block would take the radix-8 kernel's 64 registers), and
    only the plain product of two maps (not with a vector, more maps or a single map)."""
    def plan(d, spatial=((2, 2), (2, 2)), dtype=torch.float32, backward=False):
        xs, hs, ss, d, sum_pool = make(((6, 5, 4)[:len(spatial)], d, list(spatial), False), "cpu", dtype=dtype,
                                       batch=1)
        return fused_plan(xs, hs, ss, d, sum_pool, backward=backward)["unit_product"]
    sizes = [2 ** e for e in range(15)]
    assert [d for d in sizes if plan(d)] == [256, 512, 4096, 8192, 16384]
    assert [d for d in sizes if plan(d, backward=True)] == sizes[5:]
    assert plan(8192, dtype=torch.float64) == 0 and plan(8192, dtype=torch.float64, backward=True) == 0
    for backward in (False, True):
        assert plan(8192, spatial=((2, 2), ()), backward=backward) == 0
        assert plan(8192, spatial=((2, 2),), backward=backward) == 0
        assert plan(8192, spatial=((2, 2),) * 3, backward=backward) == 0
    monkeypatch.setenv("COMPACT_BILINEAR_FFT_RADIX", "8")
    assert [d for d in sizes if plan(d)] == sizes[5:]
    monkeypatch.setenv("COMPACT_BILINEAR_UNIT_PRODUCT", "2")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_UNIT_PRODUCT must be '0' or '1'"):
        plan(8192)


def test_fused_prefetch_only_where_it_costs_no_block_per_sm(monkeypatch):
    """The plan gives a forward with a map a prefetch buffer (two halves of the largest map's channel
    count, 4-byte words for 16-bit inputs), where the SM still holds as many blocks, and the
    backward one only for the values of two NCHW maps that its clusters read; the host plans for an H100 (228 KiB of shared memory per SM, 1 KiB reserved per
    block, 65536 registers). Figures for float32, d = 8192, 7x7 maps: Z and one slot take
    8 x (8192 + 512 + 2 + 4097) = 102424 bytes (Z's 2: the magnitude codes)."""
    def plan(channels=1024, d=8192, spatial=(7, 7), vector=False, sum_pool=False, dtype=torch.float32, **kw):
        case = ((channels, channels), d, [spatial, () if vector else spatial], sum_pool)
        xs, hs, ss, d, sum_pool = make(case, "cpu", dtype=dtype, batch=1)
        return fused_plan(xs, hs, ss, d, sum_pool, **kw)

    base = 8 * (8192 + 512 + 2 + 4097)
    # Two blocks of 102424 + 8192 bytes (+ 1 KiB each) fit 233472: the buffer costs no block.
    assert 2 * (base + 8192 + 1024) <= 228 * 1024
    canonical = plan()
    assert (canonical["rows_per_chunk"], canonical["slots"], canonical["global_slots"]) == (2, 1, 0)  # row pairs
    assert canonical["prefetch_half"] == 1024 and canonical["smem_bytes"] == base + 8192
    assert plan(sum_pool=True)["prefetch_half"] == 1024  # 7 rows a chunk
    assert plan(dtype=torch.bfloat16)["smem_bytes"] == base + 8192  # 4-byte words
    # At C = 2048 the buffer (16 KiB) would leave one block per SM: none.
    assert 2 * (base + 16384 + 1024) > 228 * 1024
    assert plan(channels=2048)["prefetch_half"] == 0 and plan(channels=2048)["smem_bytes"] == base
    # d = 16384 pooled: one block per SM with or without the buffer (8 x (16384 + 1024 + 2 + 8193) + 8192).
    assert plan(d=16384, sum_pool=True)["smem_bytes"] == 8 * (16384 + 1024 + 2 + 8193) + 8192
    # One map (map x vector, no slot unpooled): its two rows' values, 8 KiB beside Z's 69648 bytes.
    assert plan(vector=True)["smem_bytes"] == 8 * (8192 + 512 + 2) + 8192
    assert plan(vector=True, sum_pool=True)["smem_bytes"] == base + 8192
    # The backward prefetches nothing (on an H100 it took 2.5 % longer with a buffer): it has one for
    # the values of its two NCHW maps that its clusters read together (stage_x), and none for
    # channels-last maps, at C = 2048, or with COMPACT_BILINEAR_STAGE_INPUTS=0. The map x vector
    # backward keeps three slots: G, the pair's second G, the vector's sum.
    backward = plan(backward=True)
    assert (backward["prefetch_half"], backward["stage_x"], backward["smem_bytes"]) == (1024, 1, base + 8192)
    assert plan(channels=2048, backward=True)["smem_bytes"] == base
    xs, hs, ss, d, _ = make(((1024, 1024), 8192, [(7, 7)] * 2, False), "cpu", dtype=torch.float32, batch=1)
    last = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    assert fused_plan(last, hs, ss, d, False, backward=True)["smem_bytes"] == base
    # Its clusters write the maps' gradients together in every layout, from slot G: no memory of their own.
    assert fused_plan(last, hs, ss, d, False, backward=True)["stage_dx"] == 1
    assert plan(channels=2048, backward=True)["stage_dx"] == 1
    assert plan(vector=True, backward=True)["smem_bytes"] == 8 * (8192 + 512 + 2 + 3 * 4097)
    monkeypatch.setenv("COMPACT_BILINEAR_STAGE_INPUTS", "0")
    assert plan(backward=True)["smem_bytes"] == base
    monkeypatch.delenv("COMPACT_BILINEAR_STAGE_INPUTS")
    monkeypatch.setenv("COMPACT_BILINEAR_PREFETCH", "0")
    assert plan()["prefetch_half"] == 0 and plan()["smem_bytes"] == base
    monkeypatch.setenv("COMPACT_BILINEAR_PREFETCH", "yes")
    with pytest.raises(ValueError, match="COMPACT_BILINEAR_PREFETCH must be '0' or '1', got 'yes'"):
        plan()


# (batch, second input a vector, sum_pool, backward) -> (rows_per_chunk, nchunks) at d = 8192,
# C = 1024 x 2 float32, 7 x 7 maps: chunks that sum over a sample's locations.
SUM_CHUNK_PLANS = {
    (32, False, True, False): (6, 9),  # the canonical pooled forward: 262 chunks for 264 blocks
    (128, False, True, False): (24, 3),
    (1, False, True, False): (1, 49),
    (6, False, True, False): (2, 25),
    (1, True, True, False): (2, 25),  # a single map's rows go in pairs: 1 rounded up
    (32, False, True, True): (6, 9),  # the pooled backward: Z and G, two blocks per SM
    (32, True, False, True): (12, 5),  # map x vector: Z and three slots, one block per SM, 1568 / 132
    (32, True, True, True): (12, 5),  # pooled map x vector: two slots, one block per SM
    (1, True, False, True): (2, 25),
}


@pytest.mark.parametrize("batch,vector,sum_pool,backward", list(SUM_CHUNK_PLANS))
def test_fused_sum_chunks_fill_the_blocks_that_run_at_once(batch, vector, sum_pool, backward, monkeypatch):
    """Chunks that sum over a sample's locations (the pooled forward and backward, the backward with
    a vector input) run over the flat rows of all samples, so they need not align with samples:
    the plan gives each as many rows as make all chunks run at once, an even count where a single
    map's rows go in pairs. The host plans as an H100: 132 SMs, two blocks each where a block has
    Z and at most one slot beside it at d = 8192 and C = 1024 float32 (the pooled forward's 110616
    bytes, the backward's 102424), one where it has more (167976 bytes for the map x vector
    backward's three). nchunks bounds the chunks one sample's 49 locations span (its partial sums'
    stride): 9 of 6 rows, 3 of 24, 5 of 12, 25 of 2, 49 of 1; 8 of 7 rows (each spans exactly 7).
    A pooled single map keeps its rows here (COMPACT_BILINEAR_SUM_MAP_FIRST=0)."""
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_MAP_FIRST", "0")
    case = ((1024, 1024), 8192, [(7, 7), () if vector else (7, 7)], sum_pool)
    xs, hs, ss, d, _ = make(case, "cpu", dtype=torch.float32, batch=batch)
    plan = fused_plan(xs, hs, ss, d, sum_pool, backward=backward)
    per_sm = 2 if plan["smem_bytes"] <= 228 * 1024 // 2 - 1024 else 1
    assert per_sm == (1 if backward and vector else 2)
    rows, nchunks = SUM_CHUNK_PLANS[batch, vector, sum_pool, backward]
    assert (plan["rows_per_chunk"], plan["nchunks"]) == (rows, nchunks)
    at_once, fewest = 132 * per_sm, rows - (2 if vector else 1)  # the next smaller count the plan could take
    assert -(-batch * 49 // rows) <= at_once and (fewest < 1 or -(-batch * 49 // fewest) > at_once)
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", "7")
    forced = fused_plan(xs, hs, ss, d, sum_pool, backward=backward)
    assert (forced["rows_per_chunk"], forced["nchunks"]) == (7, 8)
    for bad in ("0", "-3", "six", "1e3"):
        monkeypatch.setenv("COMPACT_BILINEAR_SUM_ROWS", bad)
        with pytest.raises(ValueError, match=f"COMPACT_BILINEAR_SUM_ROWS must be a positive integer .*got '{bad}'"):
            fused_plan(xs, hs, ss, d, sum_pool, backward=backward)


GRAD_CASES = ["k2_vectors_odd_d", "k2_maps", "k2_map_x_vector", "k3_map_vec_map", "k2_maps_pooled",
              "k3_pooled_broadcast", "k3_pooled_prime_d", "k4_mixed", "k2_video_3d", "k1_count_sketch",
              "k2_map_x_vector_pooled", "k3_map_two_vectors", "k3_map_two_vectors_pooled", "k4_maps",
              "k5_three_maps_two_vectors"]


@pytest.mark.parametrize("name,algo", [(n, a) for n in GRAD_CASES for a in case_algos(CASES[n])])
def test_gradcheck(name, algo, device):
    xs, hs, ss, d, sum_pool = make(CASES[name], device, batch=2, requires_grad=True)
    fn = lambda *x: cb.compact_bilinear_pooling(list(x), hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    assert torch.autograd.gradcheck(fn, xs)


@pytest.mark.parametrize("algo", ALGOS)
def test_post_processing_gradcheck_and_zero(algo, device):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], device, batch=2, requires_grad=True)
    fn = lambda *x: cb.compact_bilinear_pooling(list(x), hs, ss, d, signed_sqrt=True, l2_normalize=True, algorithm=algo)
    assert torch.autograd.gradcheck(fn, xs)
    zeros = [torch.zeros_like(x).requires_grad_() for x in xs]
    out = fn(*zeros)
    assert torch.all(out == 0)
    grads = torch.autograd.grad(out.sum(), zeros)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ALGOS)
def test_post_processing_of_half_outputs_at_zero(dtype, algo, device):
    """Half-type outputs that are 0 somewhere (a zero location here) keep finite values and
    gradients through signed_sqrt and l2_normalize, which run in float32: in float16 their eps
    (1e-8, 1e-12) are 0, and torch.sqrt(0)'s infinite derivative times sign(0) gave NaN, as did
    F.normalize of a zero vector. The values match the same post-processing of the float32 output.
    (Both paths' zero rows are exactly 0, the fused kernel's too, whose rows share transforms: near
    0 the two steps' gradients, about 5000 and 1 / |row|, overflow float16; sign(0) stops them.)"""
    xs, hs, ss, d, _ = make(CASES["k2_map_x_vector"], device, dtype=dtype)
    xs[0][:, :, 0, 0] = 0
    xs = [x.requires_grad_() for x in xs]
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, signed_sqrt=True, l2_normalize=True, algorithm=algo)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.all(out[:, :, 0, 0] == 0)
    grads = torch.autograd.grad(out.float().square().sum() + out.float().sum(), xs)
    assert all(torch.isfinite(g).all() for g in grads)
    raw = cb.compact_bilinear_pooling([x.detach() for x in xs], hs, ss, d, algorithm=algo).float()
    expect = torch.nn.functional.normalize(cb.signed_sqrt(raw), dim=1)
    torch.testing.assert_close(out.float(), expect, rtol=1e-2, atol=1e-2)
    raw[:, :, 0, 0] = 0  # the float16 post-processing gave NaN exactly there
    assert torch.isfinite(cb.signed_sqrt(raw.to(dtype))).all()
    z = torch.zeros(4, dtype=dtype, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(cb.signed_sqrt(z).sum(), z)
    assert cb.signed_sqrt(z).dtype == dtype and torch.isfinite(g).all()


def test_signed_sqrt_and_l2_values(device):
    xs, hs, ss, d, _ = make(CASES["k2_map_x_vector"], device)
    raw = cb.compact_bilinear_pooling(xs, hs, ss, d)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, signed_sqrt=True, l2_normalize=True)
    expect = torch.sign(raw) * raw.abs().sqrt()
    expect = expect / expect.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones_like(out.norm(dim=1)))


@pytest.mark.parametrize("name", ["k2_maps", "k3_pooled_broadcast", "k2_map_x_vector"])
def test_opcheck(name, device):
    xs, hs, ss, d, sum_pool = make(CASES[name], device, dtype=torch.float32, batch=2, requires_grad=True)
    for algo in case_algos(CASES[name]):
        torch.library.opcheck(torch.ops.compact_bilinear.forward.default, (xs, hs, ss, d, sum_pool, algo))
        grad = torch.randn(cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool).shape, device=device)
        torch.library.opcheck(
            torch.ops.compact_bilinear.backward.default,
            (grad, [x.detach() for x in xs], hs, ss, d, sum_pool, algo),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
        )
        torch.library.opcheck(  # one input's gradient; the others are expanded zeros, in fake mode too
            torch.ops.compact_bilinear.backward.default,
            (grad, [x.detach() for x in xs], hs, ss, d, sum_pool, algo, [1]),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
        )


@pytest.mark.parametrize("name", ["k2_map_x_vector", "k3_map_vec_map", "k2_maps_pooled", "k1_count_sketch"])
@pytest.mark.parametrize("algo", ALGOS)
def test_backward_computes_only_the_gradients_asked_for(name, algo, device):
    """input_grads: the backward op returns the listed inputs' gradients, equal to those of a call
    for all of them, and a zero expanded to each other input's shape (no memory). Autograd asks
    only for the inputs that need a gradient, so a frozen input (precomputed image features, a
    frozen stream) costs the `fft` path no inverse FFT and no scatter, and an input whose spectrum
    no asked-for gradient needs (input k's gradient needs the others' spectra, not its own) no
    sketch and no forward FFT: the profiler counts the c2r and r2c FFTs."""
    xs, hs, ss, d, sum_pool = make(CASES[name], device)
    K = len(xs)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    grad = torch.randn_like(out)
    every = torch.ops.compact_bilinear.backward(grad, xs, hs, ss, d, sum_pool, algo)
    for want in ([0], [K - 1], [K - 1, 0], []):
        got = torch.ops.compact_bilinear.backward(grad, xs, hs, ss, d, sum_pool, algo, want)
        for k, (g, e) in enumerate(zip(got, every)):
            assert g.shape == e.shape
            if k in want:
                assert torch.equal(g, e)
            else:
                assert not g.any() and all(s == 0 for s in g.stride())
    for bad in (-1, K):
        with pytest.raises(ValueError, match=rf"input_grads\[1\] must be an input index in \[0, {K}\), got {bad}"):
            torch.ops.compact_bilinear.backward(grad, xs, hs, ss, d, sum_pool, algo, [0, bad])

    if algo != "fft":
        return

    def ffts(requires):
        leaves = [x.detach().requires_grad_(r) for x, r in zip(xs, requires)]
        out = cb.compact_bilinear_pooling(leaves, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
        with torch.profiler.profile() as prof:
            grads = torch.autograd.grad(out, [x for x in leaves if x.requires_grad], grad)
        names = [e.name for e in prof.events()]
        return names.count("aten::_fft_c2r"), names.count("aten::_fft_r2c"), grads

    # Every gradient: the output gradient's spectrum, every input's (with one input, none: its
    # gradient needs no other spectrum), an inverse per input.
    assert ffts([True] * K)[:2] == (K, 1 + (K if K > 1 else 0))
    # Only the last input's: no spectrum of its own, one inverse.
    c2r, r2c, (g_last,) = ffts([False] * (K - 1) + [True])
    assert (c2r, r2c) == (1, K)
    assert torch.equal(g_last, every[-1])


def test_compile_fullgraph(device):
    layer = cb.STCB((8, 6), 32, signed_sqrt=True, l2_normalize=True).to(device)
    x = torch.randn(2, 8, 3, 3, device=device, requires_grad=True)
    v = torch.randn(2, 6, device=device, requires_grad=True)
    eager = layer(x, v)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x, v)
    torch.testing.assert_close(out, eager)
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), (x, v))
    g2 = torch.autograd.grad((eager * w).sum(), (x, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("algo", ALGOS)
def test_bitwise_deterministic(algo, device):
    xs, hs, ss, d, sum_pool = make(CASES["k3_pooled_broadcast"], device, dtype=torch.float32, requires_grad=True)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
            grads = torch.autograd.grad(out.square().sum(), xs)
            results.append((out, grads))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("algo", ALGOS)
def test_dtypes(dtype, algo, device):
    xs, hs, ss, d, sum_pool = make(CASES["k2_map_x_vector"], device, dtype=dtype, requires_grad=True)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm=algo)
    assert out.dtype == dtype
    ref = explicit_outer_product_sketch([x.double() for x in xs], hs, ss, d)
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err < TOL[dtype], f"relative error {err:.2e}"
    grads = torch.autograd.grad(out.float().sum(), xs)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_autocast(device):
    layer = cb.STCB((8, 6), 32).to(device)
    x, v = torch.randn(2, 8, 3, 3, device=device), torch.randn(2, 6, device=device)
    dtype = torch.bfloat16
    with torch.autocast(device.type, dtype=dtype):
        out = layer(x, v)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), layer(x, v), rtol=5e-2, atol=5e-2)


def test_mixed_dtypes_are_promoted(device):
    hs, ss = random_hashes((4, 6), 16, device=device)
    x, v = torch.randn(2, 4, device=device, dtype=torch.float16), torch.randn(2, 6, device=device)
    assert cb.compact_bilinear_pooling([x, v], hs, ss, 16).dtype == torch.float32


def test_non_contiguous_inputs(device):
    xs, hs, ss, d, _ = make(CASES["k2_maps"], device)
    nc = [torch.randn(x.shape[0], x.shape[1] * 2, *x.shape[2:], dtype=x.dtype, device=device)[:, ::2] for x in xs]
    assert not nc[0].is_contiguous()
    for algo in ALGOS:
        out = cb.compact_bilinear_pooling(nc, hs, ss, d, algorithm=algo)
        torch.testing.assert_close(out, explicit_outer_product_sketch([x.contiguous() for x in nc], hs, ss, d))


@pytest.mark.parametrize("sum_pool", [False, True])
def test_empty_batch(sum_pool, device):
    """No samples: an empty output and empty gradients (the fused plan sizes chunks of no rows)."""
    hs, ss = random_hashes((4, 6), 16, device=device)
    x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
    v = torch.randn(0, 6, device=device, requires_grad=True)
    for algo in ALGOS:
        out = cb.compact_bilinear_pooling([x, v], hs, ss, 16, sum_pool=sum_pool, algorithm=algo)
        assert out.shape == ((0, 16) if sum_pool else (0, 16, 3, 3))
        gx, gv = torch.autograd.grad(out.sum(), (x, v))
        assert gx.shape == x.shape and gv.shape == v.shape


@pytest.mark.parametrize("sum_pool", [False, True])
def test_empty_map(sum_pool, device):
    """A zero-size spatial dim: pooling sums over no locations (zeros); every gradient is zero."""
    hs, ss = random_hashes((4, 6), 16, device=device)
    x = torch.randn(2, 4, 0, 3, device=device, requires_grad=True)
    v = torch.randn(2, 6, device=device, requires_grad=True)
    for algo in ALGOS:
        out = cb.compact_bilinear_pooling([x, v], hs, ss, 16, sum_pool=sum_pool, algorithm=algo)
        ref = explicit_outer_product_sketch([x, v], hs, ss, 16, sum_pool=sum_pool)
        assert out.shape == ref.shape
        torch.testing.assert_close(out.double(), ref)
        gx, gv = torch.autograd.grad((out * 2).sum(), (x, v))
        assert gx.shape == x.shape and torch.equal(gv, torch.zeros_like(v))


@pytest.mark.parametrize("prefetch", ["0", "1"])
@pytest.mark.parametrize("sum_pool", [False, True])
@pytest.mark.parametrize("shapes", [[(0, 3, 3), (5, 3, 3)], [(5, 3, 3), (0, 3, 3)], [(0,), (7,)], [(0, 3, 3), (6,)]])
def test_inputs_without_channels(shapes, sum_pool, prefetch, device, monkeypatch):
    """An input of no channels sketches to zero: outputs and gradients are zero, by both
    algorithms, with and without the fused forward's prefetch buffer. Its row may have no memory at
    all (an empty tensor's data pointer is null), so no kernel may read a value of it."""
    monkeypatch.setenv("COMPACT_BILINEAR_PREFETCH", prefetch)
    hs, ss = random_hashes([s[0] for s in shapes], 64, device=device)
    for algo in ALGOS:
        xs = [torch.randn(2, *s, device=device, requires_grad=True) for s in shapes]
        out = cb.compact_bilinear_pooling(xs, hs, ss, 64, sum_pool=sum_pool, algorithm=algo)
        ref = compact_bilinear_pooling_reference(xs, hs, ss, 64, sum_pool=sum_pool)
        assert out.shape == ref.shape and torch.equal(out, torch.zeros_like(ref))
        grads = torch.autograd.grad(out.sum(), xs)
        assert all(g.shape == x.shape and torch.equal(g, torch.zeros_like(x)) for g, x in zip(grads, xs))


@pytest.mark.skipif(not (sys.platform.startswith("linux") and torch._C.has_openmp),
                    reason="the library uses OpenMP where torch does, on Linux")
def test_cpu_kernels_are_built_with_openmp():
    """at::parallel_for runs in parallel only in code compiled with OpenMP; built without it,
    every CPU kernel of the library silently ran on one thread."""
    from compact_bilinear import _C

    assert b"GOMP_parallel" in Path(_C.__file__).read_bytes()


@pytest.mark.parametrize("name", ["k2_map_x_vector", "k3_pooled_broadcast", "k2_vectors_odd_d"])
@pytest.mark.parametrize("algo", ALGOS)
def test_cpu_thread_count_does_not_change_results(name, algo):
    """The CPU kernels split rows, bins and channels across threads; every value is still computed
    by one task in a fixed order, so 1 and 2 threads agree bit for bit. Sizes give several bin
    and channel blocks per sample. (torch's CPU FFT, which the fft path calls, is not thread-count
    invariant at every size: a single row at d = 16000 differs by 4e-7, README "Deterministic".)"""
    dims, _, spatial, sum_pool = CASES[name]
    d = 13 * 81 if algo == "fft" else 1024
    case = (tuple(100 + 37 * c for c in dims), d, [tuple(2 * e for e in s) for s in spatial], sum_pool)
    xs, hs, ss, d, sum_pool = make(case, "cpu", dtype=torch.float32, requires_grad=True)
    w = torch.randn(cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool).shape)
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
            results.append((out, torch.autograd.grad((out * w).sum(), xs)))
    finally:
        torch.set_num_threads(before)
    (out1, g1), (out2, g2) = results
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    ref = compact_bilinear_pooling_reference([x.double() for x in xs], hs, ss, d, sum_pool=sum_pool)
    torch.testing.assert_close(out1.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


NAN_CASES = {
    **{n: CASES[n] for n in ("k3_pooled_broadcast", "k2_map_x_vector", "k1_count_sketch", "k2_vectors_odd_d")},
    "k2_maps_odd_l": ((5, 7), 16, [(3, 3), (3, 3)], False),
}


@pytest.mark.parametrize("name,algo", [(n, a) for n, c in NAN_CASES.items() for a in case_algos(c)])
def test_nan_stays_in_its_sample(name, algo, device):
    """A NaN in one sample's input leaves the other samples finite. The fused kernel shares
    transforms between rows (a pair's outputs share an inverse, a single map's two rows a forward
    too), so rows that share one must be of one sample: at an odd number of locations (3 x 3 here)
    a flat pair can hold a sample's last location and the next one's first, and runs as two single
    rows. Pairing them anyway fails the map x map case, and a single map's pairs three cases."""
    xs, hs, ss, d, sum_pool = make(NAN_CASES[name], device, dtype=torch.float32)
    xs[0][1, 2] = float("nan")  # sample 1, channel 2 (every location of it for a map)
    xs = [x.requires_grad_() for x in xs]
    out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    assert torch.isnan(out[1]).any()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    grads = torch.autograd.grad(out, xs, torch.ones_like(out))
    assert all(torch.isfinite(g[0]).all() and torch.isfinite(g[2]).all() for g in grads)


SCALE_CASES = {
    **{n: CASES[n] for n in ("k2_maps", "k2_maps_pooled", "k1_count_sketch", "k2_map_x_vector",
                             "k2_map_x_vector_pooled", "k3_map_two_vectors", "k4_maps", "k5_three_maps_two_vectors",
                             "k4_mixed")},
    "k2_vectors": ((5, 7), 16, [(), ()], False),
}


def rows_of(t):
    """(B, C, *S) or (B, C) -> one row of C values per sample and location."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def worst_row_error(got, ref):
    g, r = rows_of(got.double()), rows_of(ref)
    return ((g - r).norm(dim=1) / r.norm(dim=1)).max().item()


@pytest.mark.parametrize("scales", ["inputs", "rows"])
@pytest.mark.parametrize("name,algo", [(n, a) for n, c in SCALE_CASES.items() for a in case_algos(c)])
def test_float32_accuracy_where_scales_differ(name, algo, scales, device):
    """Float32 outputs and gradients against float64, row by row, where the inputs differ in scale
    by 10^6 (scales="inputs") or each location's rows (and the output gradient's) by up to 10^6
    (scales="rows"). The fused kernel shares each complex FFT between two real signals (two inputs
    or two rows), whose rounding error is in proportion to the larger: unbalanced, the smaller
    signal's row took about 8.5e-8 times the ratio (0.1 here); the kernel balances every shared
    transform by powers of two, so each row keeps float32's accuracy, as on the FFT path."""
    xs, hs, ss, d, sum_pool = make(SCALE_CASES[name], device, batch=4)
    g = torch.Generator().manual_seed(7)
    powers = lambda *shape: torch.pow(10.0, torch.empty(*shape, dtype=torch.float64).uniform_(-3, 3, generator=g))
    for k, x in enumerate(xs):
        if scales == "inputs":
            x.mul_(10.0 ** (3 * (-1) ** k))
        else:
            x.mul_(powers(x.shape[0], 1, *x.shape[2:]).to(device))
    ref_fn = lambda x: compact_bilinear_pooling_reference(x, hs, ss, d, sum_pool=sum_pool)
    w = torch.randn(ref_fn(xs).shape, generator=g, dtype=torch.float64)
    if scales == "rows":
        w.mul_(powers(w.shape[0], 1, *w.shape[2:]))
    w = w.to(device)
    expect = forward_and_grads(ref_fn, [x.requires_grad_() for x in xs], w)
    xf = [x.detach().float().requires_grad_() for x in xs]
    got = forward_and_grads(lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool, algorithm=algo),
                            xf, w.float())
    errors = [worst_row_error(a, b) for a, b in zip(got, expect)]
    assert max(errors) < 2.5e-6, errors  # measured: at most 1.2e-6 on either path (1.1e-6 fft)


ZERO_CASES = {n: c for n, c in SCALE_CASES.items() if any(c[2])}


@pytest.mark.parametrize("name,algo", [(n, a) for n, c in ZERO_CASES.items() for a in case_algos(c)])
def test_zero_rows_are_exactly_zero(name, algo, device):
    """Where an input is zero at a location (a padded frame, a masked region), that location's
    output row is exactly 0, and so is every map's gradient where the output gradient's row is 0:
    an exact product of zeros on the FFT path, and in the fused kernel, whose rows share transforms,
    because each shared signal found to be 0 is multiplied out (Balance) rather than left as the
    other's rounding error, which signed_sqrt and l2_normalize would have scaled to a unit row. A
    sample whose vector is 0 has no nonzero output at all. Everything else matches float64."""
    xs, hs, ss, d, sum_pool = make(ZERO_CASES[name], device, dtype=torch.float32, batch=4)
    g = torch.Generator().manual_seed(3)
    B, S = xs[0].shape[0], next(x.shape[2:] for x in xs if x.dim() > 2)
    zero_at = torch.zeros(B, *S, dtype=torch.bool)  # locations with an input of 0 there
    for x in xs:
        if x.dim() > 2:
            hole = torch.rand(B, *S, generator=g) < 0.3
            x.masked_fill_(hole.unsqueeze(1).to(device), 0)
        else:
            hole = torch.zeros(B, *S, dtype=torch.bool)
            hole[1] = True
            x[1] = 0
        zero_at |= hole
    ref_fn = lambda x: compact_bilinear_pooling_reference(x, hs, ss, d, sum_pool=sum_pool)
    w = torch.randn(ref_fn([x.double() for x in xs]).shape, generator=g, dtype=torch.float64)
    w_zero = torch.rand(w.shape[0], *w.shape[2:], generator=g) < 0.3  # output gradient rows of 0
    w.masked_fill_(w_zero.unsqueeze(1), 0)
    xs = [x.requires_grad_() for x in xs]
    fn = lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    got = forward_and_grads(fn, xs, w.float().to(device))
    expect = forward_and_grads(ref_fn, [x.detach().double().requires_grad_() for x in xs], w.to(device))
    for a, b in zip(got, expect):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    out = got[0].cpu()
    zero_out = zero_at.flatten(1).all(1) if sum_pool else zero_at
    assert torch.all(out.movedim(1, -1)[zero_out] == 0)
    assert torch.all(out.movedim(1, -1)[~zero_out].abs().amax(-1) > 0)
    if not sum_pool:
        post = cb.compact_bilinear_pooling(xs, hs, ss, d, signed_sqrt=True, l2_normalize=True, algorithm=algo)
        assert torch.all(post.detach().cpu().movedim(1, -1)[zero_at] == 0)
        for x, gx in zip(xs, got[1:]):  # a map's gradient is 0 where the output gradient's row is
            if x.dim() > 2:
                assert torch.all(gx.cpu().movedim(1, -1)[w_zero] == 0)


def test_stcb_layer_state_dict_and_hashes(device):
    a = cb.STCB((8, 8, 5), 64, seed=3)
    b = cb.STCB((8, 8, 5), 64, seed=3)
    c = cb.STCB((8, 8, 5), 64, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.hash_indices, b.hash_indices))
    assert not all(torch.equal(x, y) for x, y in zip(a.hash_indices, c.hash_indices))
    # Independent hashes per input, even for equal channel counts.
    assert not torch.equal(a.hash_indices[0], a.hash_indices[1])
    assert all(h.dtype == torch.int64 and h.min() >= 0 and h.max() < 64 for h in a.hash_indices)
    assert all(set(s.unique().tolist()) <= {-1.0, 1.0} for s in a.hash_signs)
    sd = c.state_dict()
    assert len([k for k in sd if k.startswith("hash_")]) == 6
    a.load_state_dict(sd)
    assert all(torch.equal(x, y) for x, y in zip(a.hash_indices, c.hash_indices))
    a = a.to(device)
    assert all(h.device.type == device.type for h in a.hash_indices + a.hash_signs)
    xs = [torch.randn(2, 8, device=device), torch.randn(2, 8, 2, 2, device=device), torch.randn(2, 5, device=device)]
    torch.testing.assert_close(a(*xs), explicit_outer_product_sketch(xs, a.hash_indices, a.hash_signs, 64).float())


def test_sketch_kernel_property():
    """E[<psi(x, y), psi(x', y')>] = <x, x'><y, y'> over random hashes; biased if the inputs share a hash.

    x' = y and y' = x with x orthogonal to y make the true value 0 while a shared hash adds about
    |x|^2 |y|^2, so this fails if STCB ever reused one hash for two inputs.
    """
    g = torch.Generator().manual_seed(0)
    c, d, seeds = 16, 32, 400
    x, y = torch.randn(c, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64)
    y = y - (y @ x) / (x @ x) * x  # orthogonal to x
    pairs = [(x, y, y, x), (x, y, x, y)]
    for x1, y1, x2, y2 in pairs:
        truth = float((x1 @ x2) * (y1 @ y2))
        vals = []
        for seed in range(seeds):
            layer = cb.STCB((c, c), d, seed=seed)
            p1 = layer(x1[None], y1[None])[0]
            p2 = layer(x2[None], y2[None])[0]
            vals.append(float(p1 @ p2))
        vals = torch.tensor(vals, dtype=torch.float64)
        stderr = vals.std() / math.sqrt(seeds)
        assert abs(vals.mean() - truth) < 4 * stderr + 1e-9, (vals.mean(), truth, stderr)
    shared = torch.tensor(
        [float((lambda h, s: explicit_outer_product_sketch([x[None], y[None]], [h, h], [s, s], d)[0]
                @ explicit_outer_product_sketch([y[None], x[None]], [h, h], [s, s], d)[0])(
            *[t[0] for t in random_hashes((c,), d, torch.Generator().manual_seed(seed))]))
         for seed in range(seeds)], dtype=torch.float64)
    assert shared.mean() > 0.5 * float((x @ x) * (y @ y)), "the shared-hash control should be biased"


# ------------------------------------------------------------------------------------ errors

def _ok(device):
    # Seeded: drawn from the global generator, the six signs of input 1 were all +1 in one test
    # order in 64, and a 0/1 draw of them then was a valid sign vector.
    hs, ss = random_hashes((4, 6), 16, torch.Generator().manual_seed(0), device=device)
    assert (ss[1] < 0).any() and (ss[1] > 0).any()
    return [torch.randn(2, 4, 3, 3, device=device), torch.randn(2, 6, device=device)], hs, ss


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda xs, hs, ss: (xs, [hs[0], hs[1][:-1]], ss), ValueError, r"hash_indices\[1\] must have shape \(6,\)"),
        (lambda xs, hs, ss: (xs, [hs[0], hs[1] + 16], ss), ValueError, r"hash_indices\[1\] must lie in \[0, output_dim\)"),
        (lambda xs, hs, ss: (xs, [torch.full_like(hs[0], -1), hs[1]], ss), ValueError, r"hash_indices\[0\] must lie in"),
        (lambda xs, hs, ss: ([xs[0], xs[1][:1]], hs, ss), ValueError, r"batch size mismatch: inputs\[1\] has 1"),
        (lambda xs, hs, ss: ([xs[0], xs[1][..., None, None].expand(2, 6, 3, 2)], hs, ss), ValueError, "spatial shape mismatch"),
        (lambda xs, hs, ss: ([xs[0].long(), xs[1]], hs, ss), TypeError, r"inputs\[0\] must be a floating-point tensor"),
        (lambda xs, hs, ss: ([xs[0], xs[1].to(torch.complex64)], hs, ss), TypeError, r"inputs\[1\] must be a floating-point"),
        (lambda xs, hs, ss: (xs, hs[:1], ss), ValueError, r"hash_indices must hold one tensor per input \(2\), got 1"),
        (lambda xs, hs, ss: (xs, hs, ss + ss), ValueError, r"hash_signs must hold one tensor per input \(2\), got 4"),
        (lambda xs, hs, ss: ([xs[0], xs[1][0]], hs, ss), ValueError, r"inputs\[1\] must have shape \(B, C\) or \(B, C, \*S\)"),
        (lambda xs, hs, ss: (xs, [hs[0].float(), hs[1]], ss), TypeError, r"hash_indices\[0\] must be an integer tensor"),
        # Signs drawn as 0/1 instead of -1/+1: every algorithm would take them as weights.
        (lambda xs, hs, ss: (xs, hs, [ss[0], (ss[1] > 0).float()]), ValueError,
         r"hash_signs\[1\] must hold only \+1 and -1, found \d+ other value\(s\), the first 0 at channel \d+"),
        (lambda xs, hs, ss: (xs, hs, [ss[0].index_fill(0, torch.tensor([2], device=ss[0].device), float("nan")), ss[1]]),
         ValueError, r"hash_signs\[0\] must hold only \+1 and -1, found 1 other value\(s\), the first nan at channel 2"),
        (lambda xs, hs, ss: (xs, hs, [ss[0], ss[1] * 2]), ValueError, r"hash_signs\[1\] must hold only \+1 and -1"),
    ],
)
def test_bad_input(mutate, exc, match, device):
    xs, hs, ss = mutate(*_ok(device))
    with pytest.raises(exc, match=match):
        cb.compact_bilinear_pooling(xs, hs, ss, 16)


def test_bad_output_dim_and_algorithm(device):
    xs, hs, ss = _ok(device)
    with pytest.raises(ValueError, match="output_dim must be >= 1, got 0"):
        cb.compact_bilinear_pooling(xs, hs, ss, 0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cb.compact_bilinear_pooling(xs, hs, ss, 16, algorithm="fast")
    hs2, ss2 = random_hashes((4, 6), 100, device=device)
    with pytest.raises(ValueError, match="algorithm='fused' cannot run this call: .*power of two"):
        cb.compact_bilinear_pooling(xs, hs2, ss2, 100, algorithm="fused")
    assert cb.compact_bilinear_pooling(xs, hs2, ss2, 100).shape == (2, 100, 3, 3)  # auto falls back


def test_no_inputs_and_meta_inputs():
    with pytest.raises(ValueError, match="inputs must hold at least one tensor, got none"):
        cb.compact_bilinear_pooling([], [], [], 16)
    xs, hs, ss = _ok("cpu")
    out = cb.compact_bilinear_pooling([x.to("meta") for x in xs], [h.to("meta") for h in hs],
                                      [s.to("meta") for s in ss], 16)
    assert out.device.type == "meta" and out.shape == (2, 16, 3, 3)


@pytest.mark.parametrize("where", ["cpu", "meta"])
def test_backward_op_checks_grad_out(where):
    """The backward op called directly (as torch.compile's graphs do) with an output gradient of the
    wrong shape or device: the same ValueError from the compiled op and from its fake kernel."""
    xs, hs, ss = _ok("cpu")
    to = lambda ts: [t.to(where) for t in ts]  # noqa: E731
    xs, hs, ss = to(xs), to(hs), to(ss)
    backward = torch.ops.compact_bilinear.backward
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \(2, 16, 3, 3\), got \(2, 16, 3\)"):
        backward(torch.zeros(2, 16, 3, device=where), xs, hs, ss, 16, False, "auto")
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \(2, 16\), got \(2, 16, 3, 3\)"):
        backward(torch.zeros(2, 16, 3, 3, device=where), xs, hs, ss, 16, True, "auto")
    other = "meta" if where == "cpu" else "cpu"
    with pytest.raises(ValueError, match=f"grad_out must be on {where}, got {other}"):
        backward(torch.zeros(2, 16, 3, 3, device=other), xs, hs, ss, 16, False, "auto")
    grads = backward(torch.zeros(2, 16, 3, 3, device=where), xs, hs, ss, 16, False, "auto")
    assert [g.shape for g in grads] == [x.shape for x in xs]


def test_fused_needs_a_channel_stride_below_4_gib():
    """The fused gather addresses a channel as a 32-bit multiple of its stride in bytes: a larger
    stride (here a single channel, so the view needs 8 bytes of storage) is 'fused's clear error and
    'auto' takes the FFT path."""
    hs, ss = random_hashes((1, 4), 16, torch.Generator().manual_seed(0))
    x = torch.randn(8, dtype=torch.float64).as_strided((2, 1), (1, 2 ** 30))  # 2^33 bytes apart
    v = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="32-bit stride, got 8589934592 bytes between the channels of input 0"):
        cb.compact_bilinear_pooling([x, v], hs, ss, 16, algorithm="fused")
    ref = explicit_outer_product_sketch([x.contiguous(), v], hs, ss, 16)
    torch.testing.assert_close(cb.compact_bilinear_pooling([x, v], hs, ss, 16), ref)


def test_fused_needs_fewer_than_2_31_rows():
    """The fused kernel numbers its rows (samples x locations) with 32-bit integers: 2^31 of them
    (stride-0 views of one value, so nothing of that size is allocated) are 'fused's clear error."""
    hs, ss = random_hashes((1, 4), 16, torch.Generator().manual_seed(0))
    x = torch.ones(1).as_strided((2 ** 16, 1, 2 ** 15), (0, 0, 0))
    v = torch.ones(1).as_strided((2 ** 16, 4), (0, 0))
    with pytest.raises(ValueError, match="numbers rows .* with 32-bit integers, got 2147483648"):
        cb.compact_bilinear_pooling([x, v], hs, ss, 16, algorithm="fused")


def test_inputs_on_different_devices():
    if not torch.cuda.is_available():
        # A meta tensor stands in for a second device (the fake kernel checks devices too).
        x, v = torch.randn(2, 4), torch.empty(2, 6, device="meta")
    else:
        x, v = torch.randn(2, 4), torch.randn(2, 6, device="cuda")
    hs, ss = random_hashes((4, 6), 16)
    with pytest.raises((ValueError, RuntimeError, NotImplementedError), match="device|meta"):
        cb.compact_bilinear_pooling([x, v], hs, ss, 16)


def test_stcb_bad_inputs():
    layer = cb.STCB((4, 6), 16)
    with pytest.raises(ValueError, match=r"STCB: expected 2 inputs \(input_dims=\(4, 6\)\), got 1"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"STCB: input 1 must have shape \(B, 6\) or \(B, 6, \*S\), got \(2, 5\)"):
        layer(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="input_dims must be a non-empty sequence"):
        cb.STCB((), 16)
    with pytest.raises(ValueError, match="output_dim must be an int >= 1"):
        cb.STCB((4, 6), 0)
    with pytest.raises(TypeError, match="inputs must be a list or tuple of tensors"):
        cb.compact_bilinear_pooling(torch.randn(2, 4), [], [], 16)


@pytest.mark.parametrize("name,algo", PARAMS)
def test_gradgradcheck(name, algo, device):
    """Second derivatives, in the inputs and in the output gradient, against finite differences of
    the first (float64 gradgradcheck): the backward op is differentiable through the forward's
    multilinearity (csrc/autograd.cpp StcbBackward)."""
    xs, hs, ss, d, sum_pool = make(CASES[name], device, batch=2, requires_grad=True)
    fn = lambda *x: cb.compact_bilinear_pooling(list(x), hs, ss, d, sum_pool=sum_pool, algorithm=algo)
    assert torch.autograd.gradgradcheck(fn, xs)


@pytest.mark.parametrize("algo", ALGOS)
def test_third_derivatives(algo, device):
    """The double backward calls the two ops again through autograd, so derivatives of every order
    exist: gradgradcheck of the first gradient checks the third."""
    xs, hs, ss, d, sum_pool = make(CASES["k3_map_vec_map"], device, batch=2, requires_grad=True)
    w = torch.randn(2, d, 2, 3, dtype=torch.float64, device=device)

    def first_grads(*x):
        out = cb.compact_bilinear_pooling(list(x), hs, ss, d, sum_pool=sum_pool, algorithm=algo)
        return torch.autograd.grad((out * w).sum(), x, create_graph=True)

    assert torch.autograd.gradgradcheck(first_grads, xs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algo", ["auto", "fft", "fused"])
def test_gradient_penalty_matches_reference(algo, dtype, device):
    """A WGAN-GP / R1-style penalty on an STCB fusion layer (the gradient's norm, differentiated
    again), one input a constant: the penalty's gradients against the composite torch.fft
    reference's double backward. A layer's parameters reach STCB's inputs in a real model, so the
    penalty's gradient in an upstream weight is checked too."""
    layer = cb.STCB((6, 5), 64, signed_sqrt=True, l2_normalize=True, algorithm=algo, seed=3).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    v = torch.randn(2, 5, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # no gradient
    proj = torch.randn(5, 5, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    critic = torch.randn(64, 3, 4, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    def penalty(fuse):
        score = (fuse(x, v @ proj) * critic).sum()
        (gx,) = torch.autograd.grad(score, x, create_graph=True)
        return (gx.flatten(1).norm(dim=1) - 1).square().mean()

    def reference(a, b):
        out = compact_bilinear_pooling_reference([a, b], layer.hash_indices, layer.hash_signs, 64)
        return torch.nn.functional.normalize(cb.signed_sqrt(out), dim=1)

    got = torch.autograd.grad(penalty(layer), (x, proj))
    want = torch.autograd.grad(penalty(reference), (x, proj))
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for a, b in zip(got, want):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("algo", ALGOS)
def test_double_backward_of_sums(algo, device):
    """`out.sum()` and `grad.sum()` hand the backward ops expanded cotangents (every stride 0):
    the second derivatives against the reference's."""
    xs, hs, ss, d, _ = make(CASES["k2_map_x_vector"], device, requires_grad=True)

    def second(fn):
        g = torch.autograd.grad(fn(xs).sum(), xs, create_graph=True)
        return torch.autograd.grad(g[0].sum() + 2 * g[1].sum(), xs)

    got = second(lambda x: cb.compact_bilinear_pooling(x, hs, ss, d, algorithm=algo))
    want = second(lambda x: compact_bilinear_pooling_reference(x, hs, ss, d))
    for a, b in zip(got, want):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())


def test_double_backward_makes_only_the_calls_it_needs():
    """The double backward's cost, counted in kernel calls (what the dispatcher runs below
    autograd): a two-input gradient-penalty step is one forward and two backward calls (one for
    the first gradients, one in all for the second); with three inputs, differentiating one input's
    gradient in one other input takes one backward call, and no call is made for the gradients
    nobody differentiates."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n[func.name()] += 1
            return func(*args, **(kwargs or {}))

    xs, hs, ss, d, _ = make(CASES["k2_maps"], "cpu", requires_grad=True)
    critic = torch.randn(3, d, 3, 4, dtype=torch.float64)
    with Calls() as calls:
        out = cb.compact_bilinear_pooling(xs, hs, ss, d)
        g = torch.autograd.grad((out * critic).sum(), xs, create_graph=True)
        torch.autograd.grad(sum(t.square().sum() for t in g), xs)
    assert (calls.n["compact_bilinear::forward"], calls.n["compact_bilinear::backward"]) == (1, 2)

    xs, hs, ss, d, _ = make(CASES["k3_map_vec_map"], "cpu", requires_grad=True)
    out = cb.compact_bilinear_pooling(xs, hs, ss, d)
    g = torch.autograd.grad((out * torch.randn_like(out)).sum(), xs, create_graph=True)
    with Calls() as calls:
        torch.autograd.grad(g[0].square().sum(), xs[1])
    assert (calls.n["compact_bilinear::forward"], calls.n["compact_bilinear::backward"]) == (0, 1)


def test_in_place_hash_change_is_seen(device):
    """Hash tables are cached per tensor; an in-place write must invalidate the cache."""
    layer = cb.STCB((6, 5), 16, seed=1).to(device)
    x, v = torch.randn(2, 6, 2, 2, device=device), torch.randn(2, 5, device=device)
    before = layer(x, v)
    with torch.no_grad():
        layer.hash_indices_0[0] = (layer.hash_indices_0[0] + 3) % 16
    after = layer(x, v)
    expect = explicit_outer_product_sketch([x, v], layer.hash_indices, layer.hash_signs, 16).float()
    torch.testing.assert_close(after, expect)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        layer.hash_indices_1[2] = 16
    with pytest.raises(ValueError, match=r"hash_indices\[1\] must lie in"):
        layer(x, v)
    with torch.no_grad():
        layer.hash_indices_1[2] = 0
        layer.hash_signs_0[5] = 0.5
    with pytest.raises(ValueError, match=r"hash_signs\[0\] must hold only \+1 and -1, found 1 other value\(s\), "
                                         r"the first 0.5 at channel 5"):
        layer(x, v)


GRAM_CASES = {n: c for n, c in CASES.items() if gram_applies(c)}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("name", list(GRAM_CASES))
def test_gram_dtypes_match_float64(name, dtype, device):
    """algorithm='gram' (the Gram matrix X Y^T, then its pair sketch) in float32, float16 and
    bfloat16 (float32 inside) against the definition in float64: output and both gradients, also
    with one input's gradient asked for (input_grads), and bit-identical on a second call."""
    xs, hs, ss, d, sum_pool = make(GRAM_CASES[name], device, dtype=dtype, requires_grad=True)
    x64 = [x.detach().double().requires_grad_() for x in xs]
    ref = explicit_outer_product_sketch(x64, hs, ss, d, sum_pool)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    want = torch.autograd.grad(ref, x64, w)
    runs = []
    for _ in range(2):
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="gram")
        runs.append([out, *torch.autograd.grad(out, xs, w.to(dtype))])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    tol = TOL[dtype]
    for got, exp in zip(runs[0], [ref, *want]):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exp, rtol=tol, atol=tol * exp.abs().max().item())
    for k in range(2):
        one = torch.ops.compact_bilinear.backward(w.to(dtype), [x.detach() for x in xs], hs, ss, d, sum_pool, "gram", [k])
        assert torch.equal(one[k], runs[0][1 + k]) and not one[1 - k].any()


def test_gram_raises_where_it_cannot_run(device):
    xs, hs, ss, d, _ = make(CASES["k3_pooled_broadcast"], device)
    with pytest.raises(ValueError, match=r"algorithm='gram' cannot run this call: it takes exactly two inputs, got 3"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=True, algorithm="gram")
    xs, hs, ss, d, _ = make(CASES["k2_maps"], device)
    with pytest.raises(ValueError, match=r"cannot run this call: its output must have no locations"):
        cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="gram")
    with pytest.raises(ValueError, match=r"algorithm must be 'auto', 'fused', 'fft' or 'gram', got 'fast'"):
        torch.ops.compact_bilinear.forward(xs, hs, ss, d, True, "fast")


def test_auto_takes_gram_where_the_gemm_is_cheaper():
    """On the CPU 'auto' runs the Gram path where its GEMM and pair sketch cost less than the FFTs:
    compact bilinear pooling of a conv map with many locations and few channels (Gao et al.: VGG's
    512 channels at 28 x 28, d = 8192; 14x faster there, docs/benchmarks.md), not where the
    channels are many and the locations few, and never where it cannot run."""
    def plan(dims, side, d, sum_pool=True, backward=False, vector=False):
        g = torch.Generator().manual_seed(0)
        hs, ss = random_hashes(dims, d, g)
        xs = [torch.randn(1, c, side, side) for c in dims[:len(dims) - vector]] + [torch.randn(1, dims[-1])] * vector
        return torch.ops.compact_bilinear.plan(xs, hs, ss, d, sum_pool, "auto", backward)

    assert plan((512, 512), 28, 8192) == "gram" and plan((512, 512), 28, 8192, backward=True) == "gram"
    assert plan((2048, 2048), 2, 4096) == "fft"
    assert plan((512, 512), 28, 8192, sum_pool=False) == "fft"
    assert plan((64, 64, 64), 28, 8192) == "fft"


def test_auto_weighs_gram_on_the_cpu_only(device):
    """'auto' takes the Gram path on the CPU where its cost model says so; on CUDA, where no GPU
    has timed it yet, never (it runs there when asked for: algorithm='gram')."""
    g = torch.Generator().manual_seed(0)
    hs, ss = random_hashes((512, 512), 8192, g, device=device)
    xs = [torch.randn(1, 512, 28, 28, generator=g).to(device) for _ in range(2)]
    plan = functools.partial(torch.ops.compact_bilinear.plan, xs, hs, ss, 8192, True)
    for backward in (False, True):
        assert (plan("auto", backward) == "gram") == (device.type == "cpu")
        assert plan("gram", backward) == "gram"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(GRAM_CASES))
def test_gram_gather_matches_the_scatter(name, dtype, monkeypatch):
    """The GPU's pair sketch, a gather per bin (spectral.h pair_sketch_bin), run on the CPU through
    COMPACT_BILINEAR_HOST_SKETCH=gather, sums each bin's pairs in the CPU scatter's order: the
    output is identical to the bit, and so are the gradients (their adjoint is shared)."""
    xs, hs, ss, d, sum_pool = make(GRAM_CASES[name], "cpu", dtype=dtype, requires_grad=True)
    w = torch.randn(xs[0].shape[0], d, generator=torch.Generator().manual_seed(4), dtype=dtype)

    scatter, gather = scatter_and_gather(xs, hs, ss, d, sum_pool, "gram", w, monkeypatch)
    assert scatter[0].abs().max() > 0
    assert all(torch.equal(a, b) for a, b in zip(scatter, gather))


SUMMED_MAP_CASES = ["k2_map_x_vector_pooled", "k3_map_two_vectors_pooled", "k2_video_3d"]


@pytest.mark.parametrize("algo", ["fft", "fused", "gram"])
@pytest.mark.parametrize("name", SUMMED_MAP_CASES)
def test_pooled_single_map_is_summed_over_its_locations_first(name, algo, device, monkeypatch):
    """A pooled output of one map and vectors is linear in the map, sum_l F(x_l, v) = F(sum_l x_l, v),
    so the map is summed over its locations first and one row a sample is transformed instead of L.
    The same values as the per-location rows (COMPACT_BILINEAR_SUM_MAP_FIRST=0) to float64 rounding,
    and the map's gradient is the same at every location."""
    dims, d, spatial, _ = CASES[name]
    if algo == "fused" and not fused_applies(d) or algo == "gram" and len(dims) != 2:
        pytest.skip(f"{algo} does not run this case")
    xs, hs, ss, d, _ = make((dims, d, spatial, True), device, requires_grad=True)
    w = torch.randn(xs[0].shape[0], d, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)

    def run():
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=True, algorithm=algo)
        return [out, *torch.autograd.grad(out, xs, w)]

    first = run()
    monkeypatch.setenv("COMPACT_BILINEAR_SUM_MAP_FIRST", "0")
    rows = run()
    for a, b in zip(first, rows):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
    gmap = first[1 + next(k for k, x in enumerate(xs) if x.dim() > 2)].flatten(2)
    assert torch.equal(gmap, gmap[..., :1].expand_as(gmap))


@pytest.mark.parametrize("algo", ["fft", "fused"])
def test_pooled_single_map_in_float16_is_not_summed_first(algo, device):
    """float16 holds values up to 65504: 196 locations of 500 sum past it, while the pooled output
    (times a vector of 1e-3) stays well inside. The map keeps its rows there, and the output is the
    definition's, finite."""
    g = torch.Generator().manual_seed(0)
    hs, ss = random_hashes((4, 3), 64, g, device=device)
    x = torch.full((1, 4, 14, 14), 500.0, dtype=torch.float16, device=device)
    v = torch.full((1, 3), 1e-3, dtype=torch.float16, device=device)
    out = cb.compact_bilinear_pooling([x, v], hs, ss, 64, sum_pool=True, algorithm=algo)
    ref = explicit_outer_product_sketch([x.double(), v.double()], hs, ss, 64, True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=3e-3, atol=3e-3 * ref.abs().max().item())
