"""Host time per call at a size where the kernels take almost nothing: what a small call costs
before any device work (argument checks, dispatch, autograd bookkeeping, Python).

    python benchmarks/host_overhead.py [--device cpu|cuda] [--threads 1]

On a GPU this is the floor under every call, however small: the grid's small cases sit on it.
"""
import argparse
import statistics
import time

import torch

import compact_bilinear as cb
from compact_bilinear.reference import random_hashes


def per_call_us(fn, device, n=300, rounds=5):
    for _ in range(20):
        fn()
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    hs, ss = random_hashes((4, 4), 16, torch.Generator().manual_seed(0), device=dev)
    xs = [torch.randn(1, 4, 2, 2, device=dev, requires_grad=True) for _ in range(2)]
    plain = [x.detach() for x in xs]
    g = torch.randn(1, 16, 2, 2, device=dev)
    op = torch.ops.compact_bilinear.forward
    calls = {
        "op, inputs without grad": lambda: op(plain, hs, ss, 16, False, "fused"),
        "op, inputs requiring grad": lambda: op(xs, hs, ss, 16, False, "fused"),
        "compact_bilinear_pooling forward": lambda: cb.compact_bilinear_pooling(xs, hs, ss, 16, algorithm="fused"),
        "compact_bilinear_pooling fwd+bwd": lambda: torch.autograd.grad(
            cb.compact_bilinear_pooling(xs, hs, ss, 16, algorithm="fused"), xs, g),
        "torch add (for scale)": lambda: xs[0] + xs[1],
    }
    print(f"host time per call on {dev}, B=1, C=4x2, 2x2 maps, d=16, {args.threads} thread(s):")
    for name, fn in calls.items():
        print(f"  {name:36s} {per_call_us(fn, dev):8.1f} us")


if __name__ == "__main__":
    main()
