"""Per-kernel GPU time of one call of each path at the canonical size (torch.profiler).

    python benchmarks/profile_kernels.py [--rows-per-sample 49] [--d 8192]

Separates kernel time from host overhead, which the end-to-end benchmark cannot: prints, per
algorithm, the wall time per call, the summed device time of its kernels, and the kernel table.
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
        "fused fwd pooled": lambda: cb.compact_bilinear_pooling(xs, hs, ss, args.d, sum_pool=True, algorithm="fused"),
        "fused fwd+bwd": lambda: torch.autograd.grad(
            cb.compact_bilinear_pooling(xs, hs, ss, args.d, algorithm="fused").sum(), xs),
    }
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
