"""pytest-benchmark suite for the core cases of `python -m benchmarks` (see conftest.py for how
to run it). Each implementation's output is checked against the float64 composite reference
before it is timed; no test asserts a timing."""
from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("compact_bilinear")

from benchmarks import cases as C  # noqa: E402
from benchmarks.impls import IMPLS, NotApplicable, WontFit  # noqa: E402
from benchmarks.measure import TOLERANCE, ground_truth, rel_err, sync  # noqa: E402

CORE = [
    C._vec(64, 512, 4096),
    C._maps(8, (7, 7), 512, 4096),
    C._maps(8, (7, 7), 512, 4096, sum_pool=True),
    C._maps(8, (7, 7), 512, 4096, is_map=(True, False)),
]
CUDA_CORE = [
    C.canonical(),
    C.canonical(sum_pool=True),
]
PARAMS = [("cpu", c) for c in CORE]
if torch.cuda.is_available():
    PARAMS += [("cuda", c) for c in CORE + CUDA_CORE]


def _id(p):
    device, case = p
    return f"{device}-" + re.sub(r"[^A-Za-z0-9=.]+", "_", case.label)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["naive", "reference", "fft", "fused"])
@pytest.mark.parametrize("param", PARAMS, ids=[_id(p) for p in PARAMS])
def test_compact_bilinear(benchmark, param, impl, mode):
    device, case = param
    if impl == "naive" and case.outer_elems() > 20_000_000:
        pytest.skip("naive outer product too large for a suite run")
    idx, signs = C.make_hashes(case, device)
    try:
        fn = IMPLS[impl].build(case, idx, signs, device, mode=mode)
    except (NotApplicable, WontFit) as e:
        pytest.skip(str(e))
    n_sets = C.rotation_sets(case, 64 << 20, max_sets=8)
    bwd = mode == "fwd+bwd"
    sets = [C.make_inputs(case, device, seed=1 + i, requires_grad=bwd) for i in range(n_sets)]
    g = C.make_grad_output(case, device)

    truth, _ = ground_truth(case, device, idx, signs, sets[0], g)
    with torch.no_grad():
        err = rel_err(fn(sets[0]), truth)
    assert err < TOLERANCE[case.torch_dtype], f"{impl}: relative error {err:.2e}"

    state = {"i": 0}

    def setup():
        state["i"] = (state["i"] + 1) % n_sets
        for x in sets[state["i"]]:
            x.grad = None
        return (sets[state["i"]],), {}

    def call(xs):
        if bwd:
            fn(xs).backward(g)
        else:
            with torch.no_grad():
                fn(xs)
        sync(device)

    benchmark.group = f"{device} {case.label} {mode}"
    benchmark.extra_info.update(case=case.to_dict(), impl=impl, mode=mode, device=device,
                                rel_err=err)
    rounds = 30 if device == "cpu" else 200
    benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=3, iterations=1)
