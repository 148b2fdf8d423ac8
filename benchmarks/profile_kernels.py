"""Per-kernel GPU time of one call of each path at the canonical size (torch.profiler).

    python benchmarks/profile_kernels.py [--rows-per-sample 49] [--d 8192]

Separates kernel time from host overhead, which the end-to-end benchmark cannot: prints, per
algorithm, the wall time per call, the summed device time of its kernels, and the kernel table.
Then the Gram path, pooled, at the canonical size and at Gao et al.'s (B = 8, 512 x 512 channels at
28 x 28, d = 8192) beside the fused kernel: its GEMMs, pair sketch and conversions apart.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import compact_bilinear as cb
from compact_bilinear.reference import compact_bilinear_pooling_reference, random_hashes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--d", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    dev = "cuda"
    hs, ss = random_hashes((args.channels, args.channels), args.d, torch.Generator().manual_seed(0), device=dev)
    xs = [torch.randn(args.batch, args.channels, 7, 7, device=dev, requires_grad=True) for _ in range(2)]
    calls = {
        "reference fwd": lambda: compact_bilinear_pooling_reference(xs, hs, ss, args.d),
        "fft fwd": lambda: cb.compact_bilinear_pooling(xs, hs, ss, args.d, algorithm="fft"),
        "fused fwd": lambda: cb.compact_bilinear_pooling(xs, hs, ss, args.d, algorithm="fused"),
        "fused fwd+bwd": lambda: torch.autograd.grad(
            cb.compact_bilinear_pooling(xs, hs, ss, args.d, algorithm="fused").sum(), xs),
    }
    hs8, ss8 = random_hashes((512, 512), 8192, torch.Generator().manual_seed(1), device=dev)
    xs8 = [torch.randn(8, 512, 28, 28, device=dev, requires_grad=True) for _ in range(2)]
    for algo in ("gram", "fused"):
        calls[f"{algo} fwd pooled"] = lambda a=algo: cb.compact_bilinear_pooling(
            xs, hs, ss, args.d, sum_pool=True, algorithm=a)
        calls[f"{algo} fwd+bwd pooled"] = lambda a=algo: torch.autograd.grad(
            cb.compact_bilinear_pooling(xs, hs, ss, args.d, sum_pool=True, algorithm=a).sum(), xs)
        calls[f"{algo} fwd pooled, B=8 512x512 28x28"] = lambda a=algo: cb.compact_bilinear_pooling(
            xs8, hs8, ss8, 8192, sum_pool=True, algorithm=a)
        calls[f"{algo} fwd+bwd pooled, B=8 512x512 28x28"] = lambda a=algo: torch.autograd.grad(
            cb.compact_bilinear_pooling(xs8, hs8, ss8, 8192, sum_pool=True, algorithm=a).sum(), xs8)
    for name, fn in calls.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.iters):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / args.iters
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                fn()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in events) / args.iters
        print(f"\n== {name}: wall {wall * 1e6:.1f} us/call, kernels {total:.1f} us/call")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:8]:
            print(f"   {e.self_device_time_total / args.iters:9.1f} us  x{e.count // args.iters:<3d} {e.key[:110]}")


if __name__ == "__main__":
    main()
