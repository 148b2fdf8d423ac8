"""Random calls against the reference: shapes, layouts, dtypes, hashes and the fused plan's switches
drawn together, so that combinations no hand-written case names still meet the definition.

Each case draws K inputs (maps or vectors, one to three spatial dims, channels from 0 to 257), an
output_dim (powers of two up to 16384 and others), a dtype, a batch (0 included), sum_pool, each
input's memory layout (contiguous, channels-last, transposed, a strided slice), hashes (random, all
in one bin, all in the last bin) and signs, which inputs are frozen (no gradient asked for), and any
of the fused plan's A/B switches (row pairs, unit products, prefetch, radix, staged inputs, rows per
summing chunk) and the host instance's thread order. Both algorithms run forward and backward;
values and input gradients are compared with the composite reference in float64 (autograd for the
gradients), within a bound on the scale of the sums the kernels round (in float32, or the output's
half type), which cancellation can make far larger than the result: the same computation on |x| and
|s| with |grad| where a row's sketch sits in a few bins, and the rows' sketch norms where the
transforms spread its rounding over all bins (`spread_bounds`).

Cases are seeded and small (rows x d below 2^17); a failure prints the case that reproduces it.
"""
import math
import os
import random

import pytest
import torch

import compact_bilinear as cb
from compact_bilinear.reference import compact_bilinear_pooling_reference as reference

CASES_PER_SEED = 100
SEEDS = range(12)

# The fused plan's switches (cbp.cpp fused_plan) and their values; each case sets some of them.
SWITCHES = {
    "COMPACT_BILINEAR_ROW_PAIRS": ("0", "1"),
    "COMPACT_BILINEAR_UNIT_PRODUCT": ("0", "1"),
    "COMPACT_BILINEAR_PREFETCH": ("0", "1"),
    "COMPACT_BILINEAR_FFT_RADIX": ("8", "32"),
    "COMPACT_BILINEAR_STAGE_INPUTS": ("0", "1"),
    "COMPACT_BILINEAR_SUM_ROWS": ("1", "2", "3", "5", "8"),
    # The host instance's thread order (cpu/cbp_kernel.cpp HostGroup; the device ignores it): a
    # missing barrier gives wrong values under these.
    "COMPACT_BILINEAR_HOST_ORDER": ("threads", "threads-reverse"),
}
# Switches drawn from each case's own generator (added after the draws above were fixed): a pooled
# single map summed over its locations first (the default) or kept in rows; the CPU's sketches
# (the FFT path's and the Gram path's pair sketch) as a scatter (the default) or as the GPU's gather.
OWN_SWITCHES = {
    "COMPACT_BILINEAR_SUM_MAP_FIRST": ("0", "1"),
    "COMPACT_BILINEAR_HOST_SKETCH": ("scatter", "gather"),
}
# Error bound per unit of the absolute computation, before the transform's log2(d) growth: about
# 100 ulps of the accumulation (float32 inside for the half types) or of the output's rounding.
UNIT = {torch.float64: 1e-13, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def draw(rng):
    k = rng.choice([1, 2, 2, 2, 3, 3, 4])
    spatial = tuple(rng.choice([1, 1, 2, 3, 4, 5, 7]) for _ in range(rng.choice([0, 1, 2, 2, 3])))
    return dict(
        maps=[bool(spatial) and rng.random() < 0.7 for _ in range(k)],
        spatial=spatial,
        channels=[rng.choice([0, 1, 2, 3, 5, 8, 16, 31, 64, 100, 257]) for _ in range(k)],
        d=rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 3, 12, 100]),
        dtype=rng.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16]),
        batch=rng.choice([0, 1, 1, 2, 3, 5, 9]),
        sum_pool=rng.random() < 0.4,
        layouts=[rng.choice(["contiguous", "contiguous", "channels_last", "transposed", "slice"]) for _ in range(k)],
        hashes=rng.choice(["random", "random", "one bin", "last bin"]),
        env={name: rng.choice(values) for name, values in SWITCHES.items() if rng.random() < 0.4},
        seed=rng.randrange(1 << 30),
    )


def rows(case):
    return case["batch"] * (math.prod(case["spatial"]) if any(case["maps"]) else 1)


def cases(seed):
    rng = random.Random(seed)
    out = []
    while len(out) < CASES_PER_SEED:
        case = draw(rng)
        # Frozen inputs (no gradient asked for), from a generator of their own, so that the draws
        # above stay those of the seed.
        own = random.Random(case["seed"])
        case["frozen"] = [own.random() < 0.25 for _ in case["maps"]]
        case["env"].update({name: own.choice(values) for name, values in OWN_SWITCHES.items() if own.random() < 0.4})
        if rows(case) * case["d"] < 1 << 17:
            out.append(case)
    return out


def make_input(g, case, c, is_map, layout, device):
    batch, dtype = case["batch"], case["dtype"]
    shape = (batch, c, *case["spatial"]) if is_map else (batch, c)
    # Scales from 1e-3 to 1e3 (1e-1 to 1e1 in float16, whose products would overflow).
    span = 1 if dtype == torch.float16 else 3
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 10 ** (span * (2 * torch.rand(1, generator=g).item() - 1))
    x = x.to(device=device, dtype=dtype)  # the layout made on the device: .to() would not keep a slice's strides
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and x.dim() >= 3:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "slice":
        wide = x.new_zeros(shape[0], 2 * c + 1, *shape[2:])
        wide[:, 1::2] = x
        x = wide[:, 1::2]
    return x


def make(case, device):
    g = torch.Generator().manual_seed(case["seed"])
    d, hs, ss = case["d"], [], []
    for c in case["channels"]:
        if case["hashes"] == "one bin":
            h = torch.full((c,), int(torch.randint(0, d, (1,), generator=g)), dtype=torch.int64)
        elif case["hashes"] == "last bin":
            h = torch.full((c,), d - 1, dtype=torch.int64)
        else:
            h = torch.randint(0, d, (c,), generator=g)
        hs.append(h.to(device))
        ss.append((torch.randint(0, 2, (c,), generator=g) * 2 - 1).float().to(device))
    xs = [make_input(g, case, c, m, lay, device) for c, m, lay in zip(case["channels"], case["maps"], case["layouts"])]
    return xs, hs, ss, g


def reference_of(xs, hs, ss, d, pool):
    if xs[0].shape[0]:
        return reference(xs, hs, ss, d, sum_pool=pool)
    # torch.fft rejects an empty batch (MKL): the shape of one sample's output, with no sample.
    one = reference([x.new_ones(1, *x.shape[1:]) for x in xs], hs, ss, d, sum_pool=pool)
    return one[:0] + sum(x.sum() for x in xs)  # empty, and attached to the inputs' graphs


def off_by(got, want):
    """The largest error of `got` against `want`. Values at or beyond the largest finite value of
    got's dtype (float16 sums of many large products) must be that large, or infinite, with their sign."""
    if not got.numel():
        return 0.0
    top = torch.finfo(got.dtype).max
    big = want.abs() > 0.99 * top
    assert ((got[big].double() * torch.sign(want[big])) >= 0.98 * top).all(), "an overflow lost its size or sign"
    return (got.double() - want)[~big].abs().amax().item() if (~big).any() else 0.0


def spread_bounds(xs, hs, ss, d, pool, grad):
    """Bounds for errors that the transforms spread over a row's bins: the output's (with its
    sum over locations where pooled) on the scale of the product of the rows' sketch norms
    ||S_k|x_k| ||_2, and each input's gradient on the scale of the output gradient's row norm times
    the other inputs' sketch norms (summed over locations for a vector). Where a row's sketch sits
    in one bin, |x| and |s| bound the sums better; where it is spread, these do."""
    spatial = next((x.shape[2:] for x in xs if x.dim() > 2), torch.Size())
    norms = []
    for x, h, s in zip(xs, hs, ss):
        xl = x.detach().double().abs().movedim(1, -1)  # (B, *S, C), a vector (B, C)
        sk = xl.new_zeros(*xl.shape[:-1], d).index_add_(-1, h, xl * s.abs())
        n = sk.norm(dim=-1)
        norms.append(n.reshape(n.shape[0], *([1] * len(spatial))) if x.dim() == 2 else n)
    ones = torch.ones(xs[0].shape[0], *spatial, dtype=torch.float64, device=xs[0].device)  # a value a row
    over = tuple(range(1, 1 + len(spatial)))
    per_sample = (lambda t: t.sum(dim=over)) if over else (lambda t: t)
    out = ones * math.prod(norms)
    out_bound = (per_sample(out) if pool else out).amax().item()
    gn = grad.norm(dim=1)
    gn = ones * (gn.reshape(gn.shape[0], *([1] * len(spatial))) if pool else gn)
    grad_bounds = []
    for k, x in enumerate(xs):
        w = gn * math.prod(n for j, n in enumerate(norms) if j != k)
        grad_bounds.append((per_sample(w) if x.dim() == 2 else w).amax().item())
    return out_bound, grad_bounds


def check(case, device):
    xs, hs, ss, g = make(case, device)
    d, pool, dtype = case["d"], case["sum_pool"], case["dtype"]
    # The reference on the inputs as given (rounded to their dtype), in float64, and its absolute
    # counterpart: |x|, |s| and |grad| bound the sums at each bin (spread_bounds the rest).
    x64 = [x.detach().double().requires_grad_() for x in xs]
    xabs = [x.detach().double().abs().requires_grad_() for x in xs]
    s64 = [s.double() for s in ss]
    want = reference_of(x64, hs, s64, d, pool)
    bound = reference_of(xabs, hs, [s.abs() for s in s64], d, pool)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64).to(device)
    if want.numel():
        (want * grad).sum().backward()
        (bound * grad.abs()).sum().backward()
    growth = UNIT[dtype] * (1 + math.log2(max(d, 2)) / 4)
    out_bound, grad_bounds = 0.0, [0.0] * len(xs)
    if want.numel():
        out_bound, grad_bounds = spread_bounds(xs, hs, ss, d, pool, grad)
        out_bound = max(out_bound, bound.detach().abs().amax().item())
    for algo in ("fused", "fft", "gram"):
        xa = [x.detach().clone().requires_grad_(not frozen) for x, frozen in zip(xs, case["frozen"])]
        try:
            out = cb.compact_bilinear_pooling(xa, hs, ss, d, sum_pool=pool, algorithm=algo)
        except ValueError as e:
            # Where the fused kernel cannot run (d not a power of two up to 16384, Z alone beyond
            # shared memory: float64 at d = 16384) "fused" is a clear error, and only there; so is
            # "gram" but for two inputs and an output without locations.
            if algo == "gram":
                assert len(xs) != 2 or want.dim() > 2, e
                continue
            assert algo == "fused" and "algorithm='fused' cannot run this call" in str(e), e
            assert d & (d - 1) or d > 16384 or dtype == torch.float64, e
            continue
        assert out.shape == want.shape and out.dtype == dtype, (algo, out.shape, out.dtype)
        err = off_by(out, want)
        assert err <= growth * out_bound, f"{algo}: output off by {err:.3e}, bound {growth * out_bound:.3e}"
        if out.requires_grad:
            (out.double() * grad).sum().backward()
        for k, (a, w, b) in enumerate(zip(xa, x64, xabs)):
            if case["frozen"][k]:
                assert a.grad is None, (algo, k)
                continue
            assert a.grad is not None and a.grad.shape == a.shape and a.grad.dtype == dtype, (algo, k)
            if not a.numel():
                continue
            want_grad = w.grad if w.grad is not None else torch.zeros_like(w)
            grad_bound = max(grad_bounds[k], b.grad.abs().amax().item() if b.grad is not None else 0.0)
            err = off_by(a.grad, want_grad)
            assert err <= growth * grad_bound, (
                f"{algo}: inputs[{k}]'s gradient off by {err:.3e}, bound {growth * grad_bound:.3e}"
            )


@pytest.mark.parametrize("seed", SEEDS)
def test_random_calls_match_the_reference(seed, device, monkeypatch):
    # A switch set outside is kept: on a lent GPU the canary (benchmarks/gpu_canary.py) turns off a
    # mechanism that failed there, which a case here must not turn back on. (This file's name puts
    # it after test_stcb.py, so a fault here cannot take the device from those tests either.)
    for i, case in enumerate(cases(seed)):
        with monkeypatch.context() as m:
            for name, value in case["env"].items():
                if name not in os.environ:
                    m.setenv(name, value)
            try:
                check(case, device)
            except Exception as e:
                shown = {k: (str(v) if k == "dtype" else v) for k, v in case.items()}
                raise AssertionError(f"case {i} of seed {seed}: {shown}") from e


def test_the_cases_cover_every_class():
    """The draws reach what they are meant to: every dtype, fused-capable and other d, empty
    batches, pooled and vector-only calls, each layout and hash pattern, each switch."""
    drawn = [c for s in SEEDS for c in cases(s)]
    assert {c["dtype"] for c in drawn} == set(UNIT)
    assert {c["hashes"] for c in drawn} == {"random", "one bin", "last bin"}
    assert {lay for c in drawn for lay in c["layouts"]} == {"contiguous", "channels_last", "transposed", "slice"}
    assert {len(c["channels"]) for c in drawn} == {1, 2, 3, 4}
    assert any(0 in c["channels"] and c["batch"] and "COMPACT_BILINEAR_PREFETCH" in c["env"] for c in drawn)
    assert any(c["batch"] == 0 for c in drawn) and any(c["d"] == 16384 for c in drawn)
    assert any(c["d"] & (c["d"] - 1) for c in drawn)
    assert any(c["sum_pool"] and any(c["maps"]) for c in drawn) and any(not any(c["maps"]) for c in drawn)
    assert any(sum(c["maps"]) == 2 and len(c["maps"]) == 2 and c["d"] >= 4096 and c["batch"] for c in drawn)
    assert {(name, c["env"][name]) for c in drawn for name in c["env"]} == {
        (name, v) for name, values in {**SWITCHES, **OWN_SWITCHES}.items() for v in values
    }
    one_map_pooled = [c for c in drawn if c["sum_pool"] and sum(c["maps"]) == 1 and c["batch"]]
    assert {c["env"].get("COMPACT_BILINEAR_SUM_MAP_FIRST", "1") for c in one_map_pooled} == {"0", "1"}
    gram = [c for c in drawn if len(c["maps"]) == 2 and (c["sum_pool"] or not any(c["maps"])) and c["batch"]]
    assert {c["env"].get("COMPACT_BILINEAR_HOST_SKETCH", "scatter") for c in gram} == {"scatter", "gather"}
    assert any(any(c["frozen"]) for c in drawn) and any(not any(c["frozen"]) for c in drawn)
