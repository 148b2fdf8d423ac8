"""The Gram path against the FFT path (and, on CUDA, the fused kernel), side by side in one run,
and what 'auto' picks.

    python -m benchmarks.gram [--quick] [--device cpu|cuda] [--dtype float32|bfloat16|float16]

Two inputs pooled over their locations: the sum of the outer products is the Gram matrix X Y^T
(C_0 x C_1 per sample), and algorithm='gram' sketches it under the pair hash instead of running
an FFT per location. Its cost grows with C_0 C_1 (L + a constant), the FFT path's with L d log d,
so it wins where the maps have many locations and few channels (Gao et al.'s compact bilinear
pooling of a VGG conv map, 512 channels at 28 x 28) and loses where the channels are many and the
locations few. For each case: the forward, and the backward op for both gradients, each algorithm
checked against the float64 reference on the same (dtype-rounded) inputs before anything is timed
(inputs standard normal; error at most 1e-4 of the largest value in float32, 1e-2 in 16 bits); calls
alternate, the median of 5 after a warm-up. The speed-up is the fastest other algorithm's time
over gram's. On the CPU the host instance of the fused kernel is not timed: it is a test vehicle,
never what 'auto' runs there.
"""
from __future__ import annotations

import argparse

import torch

from compact_bilinear.reference import compact_bilinear_pooling_reference, random_hashes

from .measure import alternate

# (B, C_0, C_1, side, d, second input a vector)
CASES = [
    (8, 512, 512, 14, 8192, False),
    (8, 512, 512, 28, 8192, False),
    (8, 256, 256, 7, 4096, False),
    (8, 1024, 1024, 7, 8192, False),
    (32, 1024, 1024, 7, 8192, False),
    (8, 2048, 2048, 14, 16000, False),
    (8, 2048, 2048, 14, 16000, True),
    (32, 1024, 1024, 1, 4096, True),
]
QUICK = [(2, 16, 12, 3, 64, False), (2, 16, 12, 3, 64, True)]
ALGOS = ("gram", "fused", "fft")


def run_case(case, device, dtype=torch.float32, reps=5):
    B, c0, c1, side, d, vector = case
    g = torch.Generator().manual_seed(0)
    hs, ss = random_hashes((c0, c1), d, g, device=device)
    x = torch.randn(B, c0, side, side, generator=g).to(device, dtype)
    y = (torch.randn(B, c1, generator=g) if vector else torch.randn(B, c1, side, side, generator=g)).to(device, dtype)
    grad = torch.randn(B, d, generator=g).to(device, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    ops = torch.ops.compact_bilinear

    def runs(a, backward):
        if a == "fused" and torch.device(device).type == "cpu":
            return False
        try:
            ops.plan([x, y], hs, ss, d, True, a, backward)
            return True
        except ValueError:  # 'fused' where it cannot run
            return False

    calls = {}
    for a in ALGOS:
        if runs(a, False):
            calls[("forward", a)] = lambda a=a: ops.forward([x, y], hs, ss, d, True, a)
        if runs(a, True):
            calls[("backward", a)] = lambda a=a: ops.backward(grad, [x, y], hs, ss, d, True, a)
    leaves = [x.double().requires_grad_(), y.double().requires_grad_()]
    ref = compact_bilinear_pooling_reference(leaves, hs, [s.double() for s in ss], d, sum_pool=True)
    truth = {"forward": [ref.detach()], "backward": list(torch.autograd.grad(ref, leaves, grad.double()))}
    err = 0.0
    for (what, a), fn in calls.items():
        got = fn()
        for t, w in zip(got if isinstance(got, (list, tuple)) else [got], truth[what]):
            e = ((t.double() - w).abs().max() / w.abs().max()).item()
            assert e < tol, f"{what}, {a}: error {e:.1e} against the float64 reference"
            err = max(err, e)
    med = alternate(calls, reps, device)
    auto = {w: ops.plan([x, y], hs, ss, d, True, "auto", w == "backward").split()[0] for w in ("forward", "backward")}
    return med, auto, err


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two tiny cases (a check that it runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    threads = f"{torch.get_num_threads()} threads" if a.device == "cpu" else torch.cuda.get_device_name(a.device)
    print(f"{a.device}, {threads}; pooled, {a.dtype}, times in ms (speed-up: the fastest other algorithm's time "
          "over gram's; -: does not run)")
    head = [f"{w} {al}" for w in ("forward", "backward") for al in (*ALGOS, "speed-up")]
    print("| B | C | locations | d | " + " | ".join(head) + " | auto | max rel err |")
    print("|---" * (len(head) + 6) + "|")
    for case in QUICK if a.quick else CASES:
        med, auto, err = run_case(case, a.device, dtype)
        B, c0, c1, side, d, vector = case
        row = [str(B), f"{c0} x {c1}" + (" (vector)" if vector else ""), f"{side}x{side}", str(d)]
        for what in ("forward", "backward"):
            t = {al: med[(what, al)] * 1e3 for al in ALGOS if (what, al) in med}
            row += [f"{t[al]:.4g}" if al in t else "-" for al in ALGOS]
            row.append(f"{min(v for al, v in t.items() if al != 'gram') / t['gram']:.2f}x")
        row += [f"{auto['forward']} / {auto['backward']}", f"{err:.1e}"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
