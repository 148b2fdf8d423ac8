"""The fused kernel's mechanisms that no GPU has run yet, each run once on its own before the rest of
a GPU run (benchmarks/gpu_check.sh), so that one which hangs, crashes or computes wrong values is
named and switched off instead of taking the run's tests and timings down with it.

    python benchmarks/gpu_canary.py [--device cuda] [--env-out FILE]

A cluster barrier that a block never meets hangs its kernel, and an illegal address poisons the
process's CUDA context: every later call in it fails. So the cases run in a child process, in turn,
each ending in a synchronizing comparison that prints its verdict; the parent gives a child's first
case 60 s (the child's start and CUDA's), every other 20 s, all of them 200 s, and where the child
hangs or dies it names the case it was on and starts a new child for the rest. Each case is a
forward+backward on 4 samples of 7 x 7 NCHW maps (C = 96 and 80, d = 1024: 196 rows, so the last
cluster of 8 has 4; 4096 for the forward's product with the unit passes), float32 and bfloat16,
with an NCHW upstream gradient, against the float64 reference (`torch.fft` composite). It checks
first that the plan engages what the case is about, so a case cannot pass by not running.

--env-out writes `export NAME=0` for each switch of a failed case (where the case of that switch
alone failed too, or all of them where none did): gpu_check.sh sources it, and the run's tests and
timings go on without the mechanism (the tests that assert it then fail, which says the same). The host instance runs the same cases (--device cpu, clusters emulated): a test
runs the canary there.
"""
import argparse
import os
import queue
import subprocess
import sys
import threading
import time

STAGE = ("COMPACT_BILINEAR_STAGE_GRAD", "COMPACT_BILINEAR_STAGE_INPUTS", "COMPACT_BILINEAR_STAGE_INPUT_GRADS")
SWITCHES = STAGE + ("COMPACT_BILINEAR_UNIT_PRODUCT",)
FORWARD_KEYS = {"unit_product"}  # plan keys of the forward's plan (the others: the backward's)

# name -> (what it runs, the plan's keys it must engage (value), the switches (0, 1, or None: unset,
# the default; those left out: unset), sum_pool, whether the second input is a vector, d). None of
# these has run on a GPU: the clusters (commits 29d65d2, b735892, 190b8ba), the pooled chunks over
# all samples' rows (2e3c3d3, c7cbb24), the backward's row pairs reading their gradient together
# (35d5593), the balance of shared transforms (fa56940) in all of them, the forward's product with
# the unit passes (4226e9a; at d = 1024, whose last pass is radix 32, the other cases run without it).
CASES = {
    "plain": ("fused, no clusters", {"cluster": 0}, (0, 0, 0), False, False, 1024),
    "grad_rows": ("clusters read the gradient's rows", {"cluster": 8, "stage_grad": 1}, (1, 0, 0), False, False, 1024),
    "map_rows": ("clusters read the maps' rows", {"cluster": 8, "stage_x": 1}, (0, 1, 0), False, False, 1024),
    "map_grads": ("clusters write the maps' gradients", {"cluster": 8, "stage_dx": 1}, (0, 0, 1), False, False,
                  1024),
    "clusters": ("all three (the default)", {"stage_grad": 1, "stage_x": 1, "stage_dx": 1}, (1, 1, 1), False, False,
                 1024),
    "pooled": ("pooled: chunks over all samples' rows", {"cluster": 0}, (), True, False, 1024),
    "map_vector": ("map x vector: row pairs read their gradient together", {"grad_pairs": 1}, (1,), False, True,
                   1024),
    "unit_product": ("forward: the product with the unit passes (d = 4096)", {"unit_product": 1}, (0, 0, 0, 1), False,
                     False, 4096),
}
# Each switch's case with it alone on.
ALONE = dict(zip(SWITCHES, ("grad_rows", "map_rows", "map_grads", "unit_product")))
PASSED = ("ok", "n/a")  # n/a: what the device cannot run, which its plans then never ask for
TOL = {"float32": 1e-4, "bfloat16": 2e-2}  # of the largest reference value, on each input's gradient too


def switches_off(results):
    """What the rest of the run goes without: of each failed case's switches (those it turned on),
    the ones whose case alone failed too, or all of them where none did (they fail together)."""
    off = []
    for name, (verdict, _) in results.items():
        if verdict not in PASSED:
            mine = [s for s, on in zip(SWITCHES, CASES[name][2]) if on]
            blamed = [s for s in mine if results[ALONE[s]][0] not in PASSED] or mine
            off += [s for s in blamed if s not in off]
    return off


def run_case(name, device):
    """'ok' or 'wrong' and what was measured, for one case on `device` (raises where the call does)."""
    import torch

    import compact_bilinear as cb
    from compact_bilinear.reference import compact_bilinear_pooling_reference, random_hashes

    _, engages, switches, sum_pool, vector, d = CASES[name]
    for s, on in zip(SWITCHES, switches + (None,) * len(SWITCHES)):
        if on is None:
            os.environ.pop(s, None)
        else:
            os.environ[s] = str(on)
    C, batch = (96, 80), 4
    # Inputs of its own: a result that some write missed cannot pass on what an earlier case left in
    # the same memory (the caching allocator hands freed blocks out again).
    gen = torch.Generator().manual_seed(list(CASES).index(name))
    hs, ss = random_hashes(C, d, gen, device=device)
    shapes = [(batch, C[0], 7, 7), (batch, C[1]) if vector else (batch, C[1], 7, 7)]
    x64 = [torch.randn(s, generator=gen, dtype=torch.float64).add_(0.5).to(device) for s in shapes]
    ref = compact_bilinear_pooling_reference([x.requires_grad_() for x in x64], hs, ss, d, sum_pool)
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device)  # NCHW, never zeros
    want = [ref, *torch.autograd.grad(ref, x64, g)]
    plans = {}
    for backward in (False, True):
        words = torch.ops.compact_bilinear.plan([x.float() for x in x64], hs, ss, d, sum_pool, "fused", backward)
        plans[backward] = {k: int(v) for k, v in (w.split("=") for w in words.split()[1:])}
    if any(plans[k not in FORWARD_KEYS].get(k) != v for k, v in engages.items()):
        if device != "cpu" and plans[True]["cluster"] == 0 and torch.cuda.get_device_capability(device)[0] < 9:
            return "n/a", "no clusters before sm_90"
        return "wrong", f"the plans do not engage {engages}: forward {plans[False]}, backward {plans[True]}"
    worst = []
    for dtype, tol in TOL.items():
        xs = [x.detach().to(getattr(torch, dtype)).requires_grad_() for x in x64]
        out = cb.compact_bilinear_pooling(xs, hs, ss, d, sum_pool=sum_pool, algorithm="fused")
        got = [out, *torch.autograd.grad(out, xs, g.to(out.dtype))]
        errs = [((a.double() - w).abs().max() / w.abs().max()).item() for a, w in zip(got, want)]
        worst.append(f"{dtype} {max(errs, key=lambda e: (e != e, e)):.1e}")  # NaN the worst (max() would skip it)
        if not all(e <= tol for e in errs):  # NaN fails too
            return "wrong", f"{dtype}: error of the output, each input's gradient, over the largest value: " + \
                ", ".join(f"{e:.1e}" for e in errs) + f" (at most {tol:.0e})"
    return "ok", "error " + ", ".join(worst)


def child(names, device):
    """Runs `names` in turn, a line `CANARY name verdict detail` each; exits at the first exception
    (the CUDA context may be lost): the parent starts another child for the rest."""
    for name in names:
        try:
            verdict, detail = run_case(name, device)
        except Exception as e:  # noqa: BLE001 - every failure is a verdict here
            print(f"CANARY {name} raised {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}", flush=True)
            os._exit(3)
        print(f"CANARY {name} {verdict} {detail}", flush=True)


def run_cases(names, command, first_timeout=60.0, timeout=20.0, total=200.0):
    """{name: (verdict, detail)} from children started as command + the names left. A child that
    prints nothing for a case within its timeout (a new child's first: first_timeout) is killed
    ('hung'); one that exits before it has printed a case's verdict has 'crashed' on it. Either way
    the next child starts after it. Past `total` seconds the cases left are 'skipped'."""
    results, todo = {}, list(names)
    deadline = time.monotonic() + total
    while todo:
        proc = subprocess.Popen(command + todo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = queue.Queue()

        def read(out=proc.stdout):  # the child's lines, then None at its end
            for line in out:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        tail, wait = [], first_timeout
        while todo:
            limit = max(0.0, min(wait, deadline - time.monotonic()))
            try:
                line = lines.get(timeout=limit)
            except queue.Empty:
                proc.kill()
                results[todo.pop(0)] = ("hung", f"no verdict within {limit:.0f} s; the child was killed")
                if time.monotonic() >= deadline:
                    results.update((n, ("skipped", f"the canary's {total:.0f} s were spent")) for n in todo)
                    todo.clear()
                break
            if line is None:
                rc = proc.wait()
                results[todo.pop(0)] = ("crashed", f"the child exited with {rc}: " + " | ".join(tail[-3:]))
                break
            words = line.rstrip("\n").split(" ", 3)
            if words[0] == "CANARY" and len(words) >= 3 and words[1] == todo[0]:
                results[todo.pop(0)] = (words[2], words[3] if len(words) > 3 else "")
                wait = timeout
                if words[2] == "raised":  # the child ends there: the next case is not to blame
                    break
            else:
                tail.append(line.strip())
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--env-out", help="write `export NAME=0` for each switch of a failed case here")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.device)
    command = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--child"]
    results = run_cases(list(CASES), command)
    for name, (verdict, detail) in results.items():
        print(f"{CASES[name][0]:<55} {verdict:<7} {detail}")
    off = switches_off(results)
    failed = [n for n, (v, _) in results.items() if v not in PASSED]
    if failed and not off:
        print("failed where no switch helps:", ", ".join(failed))
    if off:
        print("switched off for the rest of the run:", " ".join(f"{s}=0" for s in off))
    if args.env_out:
        with open(args.env_out, "w") as f:
            f.writelines(f"export {s}=0\n" for s in off)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
