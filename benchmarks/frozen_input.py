"""The backward with a frozen input, side by side in one run: every input gradient (what the
backward computed before it took `input_grads`) against only the trained input's.

    python -m benchmarks.frozen_input [--batch 8] [--channels 2048] [--side 14] [--d 16000] [--algorithm fft]

MCB-style VQA: an image feature map (B, C, side, side) times a question vector (B, C), one of
them frozen: the map (precomputed image features), whose gradient needs no inverse FFTs, or the
vector, whose gradient is the only one that needs the map's spectrum. By default the `fft` path,
which runs every d that is not a power of two (MCB's 16000) on CUDA too; `--algorithm fused` (a
power of two d) the fused kernel, which leaves out a frozen map's product, inverse FFT and scatter
and a frozen vector's inverse FFT and scatter. Inputs are standard normal; each
trained input's gradient must be identical to that of the call for every gradient, which is
checked against the float64 reference before anything is timed. Calls alternate; the median of 6
after one warm-up each.
"""

import argparse
import functools

import torch

import compact_bilinear as cb
from compact_bilinear.reference import compact_bilinear_pooling_reference, random_hashes

from .measure import alternate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=2048)
    p.add_argument("--side", type=int, default=14)
    p.add_argument("--d", type=int, default=16000)
    p.add_argument("--algorithm", choices=("fft", "fused"), default="fft")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    hs, ss = random_hashes((a.channels, a.channels), a.d, g, device=a.device)
    x = torch.randn(a.batch, a.channels, a.side, a.side, generator=g).to(a.device)
    v = torch.randn(a.batch, a.channels, generator=g).to(a.device)
    # Location-major, as the output (and the gradient of elementwise ops on it) is laid out.
    grad = torch.randn(a.batch, a.side, a.side, a.d, generator=g).to(a.device).movedim(-1, 1)
    op = torch.ops.compact_bilinear.backward
    calls = {"every gradient": None, "map frozen": [1], "vector frozen": [0]}
    got = {name: op(grad, [x, v], hs, ss, a.d, False, a.algorithm, want) for name, want in calls.items()}
    for name, want in calls.items():
        for k in want or ():
            assert torch.equal(got[name][k], got["every gradient"][k]), f"{name}: input {k}'s gradient differs"
    leaves = [x.double().requires_grad_(), v.double().requires_grad_()]
    ref = compact_bilinear_pooling_reference(leaves, hs, [s.double() for s in ss], a.d)
    truth = torch.autograd.grad(ref, leaves, grad.double())
    err = max(((g.double() - t).abs().max() / t.abs().max()).item() for g, t in zip(got["every gradient"], truth))
    assert err < 1e-4, f"error {err:.1e} against the float64 reference"
    med = alternate({name: functools.partial(op, grad, [x, v], hs, ss, a.d, False, a.algorithm, want)
                     for name, want in calls.items()}, 6, a.device)
    every = med["every gradient"]
    print(f"{a.device}, B={a.batch} C={a.channels}x2 {a.side}x{a.side} map x vector, d={a.d}, {a.algorithm} backward "
          f"(max rel err {err:.1e}):")
    for name, t in med.items():
        print(f"  {name:15s} {t * 1e3:7.1f} ms  ({every / t:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
