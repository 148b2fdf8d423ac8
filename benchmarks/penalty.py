"""A gradient-penalty step through compact bilinear pooling, side by side in one run.

    python -m benchmarks.penalty [--device cpu|cuda] [--impls reference,fft,fused] [--json PATH]

The step is what a WGAN-GP or R1 critic does with a fusion layer: forward, the input gradients
of a score with create_graph, a penalty on their norms, and that penalty's gradients in the
inputs, so the backward is differentiated once more (the library's double backward,
csrc/autograd.cpp). Each implementation's penalty gradients are checked against the composite
torch.fft reference run in float64 on the same inputs before anything is timed; inputs and the
critic weights are standard normal (never zeros), and calls rotate over input sets as in the main
harness (benchmarks/measure.py time_calls). The ratio column is the reference's time over the
implementation's. On CUDA the peak extra memory of one step is reported too.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .hardware import git_commit, machine
from .cases import Case, _maps, _vec, canonical, make_grad_output, make_hashes, make_inputs, rotation_sets
from .impls import IMPLS, NotApplicable
from .measure import TOLERANCE, TimingConfig, _cuda_peak_extra, rel_err, sync, time_calls


def cases_for(device: str) -> list[Case]:
    if device == "cuda":
        return [canonical(), canonical(sum_pool=True), _vec(392, 1024, 4096)]
    return [_maps(8, (7, 7), 512, 8192), _maps(8, (7, 7), 512, 8192, sum_pool=True), _vec(392, 1024, 4096)]


def penalty_step(fn, xs, critic):
    """The penalty's gradients in the inputs: mean over samples of (|d score / d x_k| - 1)^2."""
    out = fn(xs)
    grads = torch.autograd.grad((out * critic).sum(), xs, create_graph=True)
    penalty = sum((g.flatten(1).norm(dim=1) - 1).square().mean() for g in grads)
    return torch.autograd.grad(penalty, xs)


def measure(case: Case, impls: list[str], device: str, cfg: TimingConfig) -> list[dict]:
    idx, signs = make_hashes(case, device)
    sets = [make_inputs(case, device, seed=1 + i, requires_grad=True) for i in range(rotation_sets(case, cfg.cache_bytes))]
    critic = make_grad_output(case, device, seed=999)
    ref64 = IMPLS["reference"].build(case, idx, [s.double() for s in signs], device)
    truth = penalty_step(ref64, [x.detach().double().requires_grad_() for x in sets[0]], critic.double())
    rows = []
    for name in impls:
        row = {"case": case.label, "impl": name, "device": device}
        rows.append(row)
        try:
            fn = IMPLS[name].build(case, idx, signs, device)
        except NotApplicable as e:
            row["status"] = f"n/a: {e}"
            continue
        row["rel_err"] = max(rel_err(g, t) for g, t in zip(penalty_step(fn, sets[0], critic), truth))
        if not row["rel_err"] <= TOLERANCE.get(case.torch_dtype, 1e-4):
            row["status"] = "mismatch"
            continue
        row["status"] = "ok"
        row["time"] = time_calls(lambda i: penalty_step(fn, sets[i], critic), len(sets), device, cfg)
        if device == "cuda":
            row["peak_extra_bytes"] = _cuda_peak_extra(lambda: penalty_step(fn, sets[0], critic), device)
    ref = next((r for r in rows if r["impl"] == "reference" and "time" in r), None)
    for r in rows:
        if ref is not None and "time" in r:
            r["speedup_vs_reference"] = ref["time"]["median_s"] / r["time"]["median_s"]
    return rows


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default=None, help="comma-separated (default: reference,fft, and fused on CUDA)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--quick", action="store_true", help="one small case, few repeats (a smoke test)")
    args = p.parse_args(argv)
    impls = args.impls.split(",") if args.impls else ["reference", "fft"] + (["fused"] if args.device == "cuda" else [])
    cases = [_vec(8, 16, 64)] if args.quick else cases_for(args.device)
    cfg = TimingConfig(warmup=1, min_reps=2, max_reps=3, target_s=0.01) if args.quick else TimingConfig()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **_: it
    rows = []
    print("| case | implementation | penalty step | vs reference | max rel err |")
    print("|---|---|---|---|---|")
    for case in tqdm(cases, desc="gradient penalty", unit="case", file=sys.stderr, leave=False):
        for r in measure(case, impls, args.device, cfg):
            rows.append(r)
            t = _fmt_s(r["time"]["median_s"]) if "time" in r else r["status"]
            ratio = f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "-"
            err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
            print(f"| {r['case']} | {r['impl']} | {t} | {ratio} | {err} |", flush=True)
        sync(args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"commit": git_commit(), "machine": machine([args.device]), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("n/a") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
