"""The fused kernel's launches at the canonical size, for Nsight Compute (gpu_check.sh).

    ncu -k regex:fused_kernel -c 6 python benchmarks/ncu_cases.py

Six launches, in this order: unpooled forward; pooled forward (whose last chunk of each sample
finishes it); the forward and the backward of an unpooled forward+backward; the forward and the
backward of a pooled forward+backward. Inputs are random normals (never zeros); each result is
checked against the fft path so a profile is never of a wrong kernel. The backward's upstream
gradient is that of a sum (every value 1, read at stride 0), so its kernel time leaves out the
gradient's layout (benchmarks/fused_ab.py times NCHW against location-major).

    ncu -k regex:fused_kernel -c 2 python benchmarks/ncu_cases.py --nchw

Two launches instead: the forward and the backward of an unpooled forward+backward whose gradient
is NCHW (torch.randn(out.shape)), which the backward reads 8 rows at a time in clusters of blocks
on sm_90, as it reads the NCHW maps' rows in every backward here and writes the maps' gradients
(COMPACT_BILINEAR_STAGE_GRAD=0, COMPACT_BILINEAR_STAGE_INPUTS=0 and COMPACT_BILINEAR_STAGE_INPUT_GRADS=0:
one by one; the launch statistics show the cluster size).
"""
import sys

import torch

import compact_bilinear as cb
from compact_bilinear.reference import random_hashes


def main(batch=32, channels=1024, d=8192):
    hs, ss = random_hashes((channels, channels), d, torch.Generator().manual_seed(0), device="cuda")
    xs = [torch.randn(batch, channels, 7, 7, device="cuda", requires_grad=True) for _ in range(2)]
    if "--nchw" in sys.argv[1:]:
        g = torch.randn(batch, d, 7, 7, device="cuda")  # NCHW-contiguous; the output is location-major
        grads = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fused"), xs, g)
        ref = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, algorithm="fft"), xs, g)
        err = max(((a - r).norm() / r.norm()).item() for a, r in zip(grads, ref))
        print(f"backward, NCHW gradient: rel err vs fft {err:.1e}")
        return
    for pool in (False, True):
        got = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fused")
        want = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fft")
        print(f"sum_pool={pool}: rel err vs fft {((got - want).norm() / want.norm()).item():.1e}")
    for pool in (False, True):
        grads = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fused").sum(),
                                    xs)
        ref = torch.autograd.grad(cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=pool, algorithm="fft").sum(), xs)
        err = max(((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref))
        print(f"backward{' pooled' if pool else ''}: rel err vs fft {err:.1e}")


if __name__ == "__main__":
    main()
