"""The fused kernel's launches at the canonical size, for Nsight Compute (gpu_check.sh).

    ncu -k regex:fused_kernel -c 4 python benchmarks/ncu_cases.py

Four launches, in this order: unpooled forward; pooled forward (whose last chunk of each sample
finishes it); the forward and the backward of an unpooled forward+backward. Inputs are random normals (never
zeros); each result is checked against the fft path so a profile is never of a wrong kernel.
"""
import torch

import compact_bilinear as cb
from compact_bilinear.reference import random_hashes


def main(batch=32, channels=1024, d=8192):
    hs, ss = random_hashes((channels, channels), d, torch.Generator().manual_seed(0), device="cuda")
    xs = [torch.randn(batch, channels, 7, 7, device="cuda", requires_grad=True) for _ in range(2)]
    for pool in (False, True):
        got = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fused")
        want = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fft")
        print(f"sum_pool={pool}: rel err vs fft {((got - want).norm() / want.norm()).item():.1e}")
    grads = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused").sum(), xs)
    ref = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fft").sum(), xs)
    print("backward: rel err vs fft", max(((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref)))


if __name__ == "__main__":
    main()
