"""Measuring one (case, implementation): correctness, time, peak extra memory.

Correctness: before anything is timed, the implementation's output (and, if differentiable,
its input gradients for a fixed random upstream gradient) is compared with the composite
reference run in float64 on the same inputs. The figure reported is
``max |out - truth| / max |truth|`` (max abs error relative to the largest true value;
element-wise relative error is meaningless where the true value crosses zero).

Time: median of repeated calls after warm-up, each call on the next of several input sets
(inputs rotated so that no call finds its inputs in cache). CPU: ``time.perf_counter`` around
each call. CUDA: a pair of CUDA events around each call on the current stream.

Peak extra memory: the peak of memory allocated during one call minus what was allocated just
before it (inputs, hashes and the upstream gradient already exist; the output and the input
gradients count). CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
CPU: in a separate worker process (multiprocessing "spawn") started with glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` so that every allocation above 64 KiB is its own mmap, returned
to the OS when freed; the worker runs the call once to warm up, resets the kernel's peak-RSS
mark (``echo 5 > /proc/self/clear_refs``), runs it again and reports ``VmHWM - VmRSS(before)``.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .cases import Case, make_grad_output, make_hashes, make_inputs, rotation_sets
from .impls import IMPLS, NotApplicable, WontFit, is_oom

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass
class TimingConfig:
    warmup: int = 2
    min_reps: int = 5
    max_reps: int = 200
    target_s: float = 0.4  # aim for about this much timed work per measurement
    cache_bytes: int = 64 << 20  # rotate inputs to exceed twice this
    flush_l2: bool = False  # CUDA: also overwrite a 2x-L2 buffer before every timed call


@dataclass
class Result:
    case: Case
    impl: str
    device: str = "cpu"
    status: str = "ok"  # ok | mismatch | n/a | oom | skipped | error
    note: str = ""
    rel_err: Optional[float] = None
    grad_rel_err: Optional[float] = None
    fwd: Optional[dict] = None
    fwdbwd: Optional[dict] = None
    mem_fwd: Optional[int] = None
    mem_fwdbwd: Optional[int] = None
    mem_note: str = ""
    floor: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "case"}
        d["case"] = self.case.label
        return d


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def alternate(calls: dict, reps: int, device) -> dict:
    """Median seconds of each of `calls` (name -> callable), called in turn `reps` times after a
    warm-up round: on a VM whose speed drifts, calls side by side see the same drift (time_calls
    times one callable at a time)."""
    times = {name: [] for name in calls}
    for _ in range(reps + 1):
        for name, fn in calls.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def rel_err(out: torch.Tensor, truth: torch.Tensor) -> float:
    if out.shape != truth.shape:
        raise AssertionError(f"shape {tuple(out.shape)}, expected {tuple(truth.shape)}")
    diff = (out.detach().double() - truth).abs().max().item()
    scale = truth.abs().max().item()
    return diff / scale if scale > 0 else diff


def ground_truth(case: Case, device, idx, signs, xs0, g):
    """float64 composite reference on the same (dtype-rounded) inputs: output and gradients."""
    from compact_bilinear.reference import compact_bilinear_pooling_reference as ref

    xs64 = [x.detach().double().requires_grad_(True) for x in xs0]
    out = ref(xs64, idx, [s.double() for s in signs], case.d, sum_pool=case.sum_pool)
    grads = torch.autograd.grad(out, xs64, g.double())
    return out.detach(), [gr.detach() for gr in grads]


def _summ(times: list[float]) -> dict:
    times = sorted(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": times[0], "p25_s": q[0],
            "p75_s": q[2], "reps": len(times)}


def time_calls(call: Callable[[int], None], n_sets: int, device, cfg: TimingConfig,
               before: Optional[Callable[[int], None]] = None, flush=None) -> dict:
    """Time ``call(i)`` (i = input set), median of repeats after warm-up."""
    cuda = torch.device(device).type == "cuda"
    # warm-up, then size the number of repeats from the fastest of up to three further calls
    # (one slow call on a busy machine must not cut the repeats to the minimum); a call slower
    # than the whole budget ends this early
    seen = []
    for i in range(cfg.warmup + 3):
        if before:
            before(i % n_sets)
        t0 = time.perf_counter()
        call(i % n_sets)
        sync(device)
        seen.append(time.perf_counter() - t0)
        if i + 1 >= cfg.warmup and seen[-1] > cfg.target_s:
            break
    est = max(min(seen[cfg.warmup:] or seen), 1e-6)
    reps = int(min(cfg.max_reps, max(cfg.min_reps, cfg.target_s / est)))
    times = []
    if cuda:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
        host = []
        for r in range(reps):
            i = (r + 1) % n_sets
            if before:
                before(i)
            if flush is not None:
                flush.zero_()
            ev[r][0].record()
            t0 = time.perf_counter()
            call(i)
            host.append(time.perf_counter() - t0)
            ev[r][1].record()
        torch.cuda.synchronize(device)
        times = [a.elapsed_time(b) * 1e-3 for a, b in ev]
        out = _summ(times)
        # host time to issue one call: when it is close to the GPU time, the call is bound by
        # launch / Python overhead (or a hidden device sync), not by the GPU
        out["host_median_s"] = statistics.median(host)
        return out
    else:
        for r in range(reps):
            i = (r + 1) % n_sets
            if before:
                before(i)
            t0 = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - t0)
    return _summ(times)


def _cuda_peak_extra(run: Callable[[], object], device, xs=()) -> int:
    # drop gradients left by earlier calls *before* the baseline, so the new ones count
    for x in xs:
        x.grad = None
    torch.cuda.synchronize(device)
    gc.collect()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    keep = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del keep
    return int(peak)


def fwd_runner(fn, xs):
    def run():
        with torch.no_grad():
            return fn(xs)
    return run


def fwdbwd_runner(fn, xs, g):
    def run():
        for x in xs:
            x.grad = None
        out = fn(xs)
        out.backward(g)
        return out
    return run


def measure(case: Case, impl_names, device, cfg: TimingConfig, *, modes=("fwd", "fwd+bwd"),
            naive_limit: Optional[int] = None, mem_worker=None, seed: int = 0,
            do_time: bool = True, progress: Optional[Callable[[str], None]] = None) -> list[Result]:
    """Measure every implementation on one case. Never raises for an implementation's
    failure: it is recorded in the result's status and note."""
    device = torch.device(device)
    dt = case.torch_dtype
    idx, signs = make_hashes(case, device, seed)
    n_sets = rotation_sets(case, cfg.cache_bytes)
    sets = [make_inputs(case, device, seed=1000 * seed + 1 + i) for i in range(n_sets)]
    gsets = [[x.clone().requires_grad_(True) for x in s] for s in sets]
    g = make_grad_output(case, device, seed=1000 * seed + 999)
    truth, truth_grads = ground_truth(case, device, idx, signs, sets[0], g)
    tol = TOLERANCE.get(dt, 1e-4)
    flush = None
    if cfg.flush_l2 and device.type == "cuda":
        flush = torch.empty(int(cfg.cache_bytes) // 4 * 2, dtype=torch.float32, device=device)

    results = []
    for name in impl_names:
        impl = IMPLS[name]
        res = Result(case=case, impl=name, device=str(device))
        results.append(res)
        if progress:
            progress(name)
        try:
            fn = impl.build(case, idx, signs, device, mode="fwd+bwd" if "fwd+bwd" in modes
                            else "fwd", limit_bytes=naive_limit)
        except NotApplicable as e:
            res.status, res.note = "n/a", str(e)
            continue
        except WontFit as e:
            res.status = "skipped" if e.skipped else "oom"
            res.note = str(e)
            continue
        except Exception as e:
            res.status, res.note = "error", f"{type(e).__name__}: {e}"
            continue
        # ---- correctness, before any timing ----
        try:
            with torch.no_grad():
                out = fn(sets[0])
            sync(device)
            if out.dtype != dt:
                res.note = f"returns {out.dtype}"
            res.rel_err = rel_err(out, truth)
            del out
            if impl.backward and "fwd+bwd" in modes:
                xs = gsets[0]
                for x in xs:
                    x.grad = None
                fn(xs).backward(g)
                sync(device)
                res.grad_rel_err = max(rel_err(x.grad, t) for x, t in zip(xs, truth_grads))
        except Exception as e:
            _fail(res, e)
            _free(device)
            continue
        worst = max(res.rel_err or 0.0, res.grad_rel_err or 0.0)
        if not math.isfinite(worst) or worst > tol:
            res.status = "mismatch"
            res.note = (res.note + "; " if res.note else "") + f"error above tolerance {tol:g}"
        # ---- time ----
        try:
            if "fwd" in modes and do_time:
                def call_f(i, fn=fn):
                    with torch.no_grad():
                        fn(sets[i])
                res.fwd = time_calls(call_f, n_sets, device, cfg, flush=flush)
            if "fwd+bwd" in modes and impl.backward and do_time:
                def before(i):
                    for x in gsets[i]:
                        x.grad = None

                def call_fb(i, fn=fn):
                    fn(gsets[i]).backward(g)
                res.fwdbwd = time_calls(call_fb, n_sets, device, cfg, before=before, flush=flush)
        except Exception as e:
            _fail(res, e)
            _free(device)
        # ---- memory ----
        try:
            if device.type == "cuda":
                if "fwd" in modes:
                    res.mem_fwd = _cuda_peak_extra(fwd_runner(fn, sets[0]), device)
                if "fwd+bwd" in modes and impl.backward:
                    res.mem_fwdbwd = _cuda_peak_extra(fwdbwd_runner(fn, gsets[0], g), device,
                                                      gsets[0])
                res.mem_note = "torch.cuda.max_memory_allocated"
                if name == "cupy":
                    from .impls import cupy_memory_visible
                    if not cupy_memory_visible():
                        res.mem_fwd = res.mem_fwdbwd = None
                        res.mem_note = "CuPy's own memory pool: not measured"
            elif mem_worker is not None:
                for mode in modes:
                    if mode == "fwd+bwd" and not impl.backward:
                        continue
                    val, note = mem_worker.measure(case, name, mode, seed, naive_limit)
                    if mode == "fwd":
                        res.mem_fwd = val
                    else:
                        res.mem_fwdbwd = val
                    res.mem_note = note or "peak RSS growth in a spawn worker"
        except Exception as e:
            res.mem_note = f"{type(e).__name__}: {e}"
            _free(device)
        _free(device)
    return results


def _fail(res: Result, e: BaseException):
    if is_oom(e):
        res.status, res.note = "oom", "out of memory"
    elif isinstance(e, (ValueError, NotImplementedError)) and res.impl in ("fused", "cupy"):
        res.status, res.note = "n/a", f"{type(e).__name__}: {e}"
    else:
        res.status = "error"
        res.note = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        res.extra["traceback"] = traceback.format_exc(limit=6)


def _free(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---- CPU peak memory in a worker process -------------------------------------------------

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker_main(conn, threads: int):
    torch.set_num_threads(threads)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case_d, name, mode, seed, limit = msg
        try:
            conn.send(_worker_measure(case_d, name, mode, seed, limit))
        except Exception as e:  # report, keep serving
            if is_oom(e):
                conn.send((None, "out of memory"))
            else:
                conn.send((None, f"{type(e).__name__}: {e}"))


def _worker_measure(case_d, name, mode, seed, limit):
    case = Case.from_dict(case_d)
    idx, signs = make_hashes(case, "cpu", seed)
    fn = IMPLS[name].build(case, idx, signs, "cpu", mode=mode, limit_bytes=limit)
    xs = make_inputs(case, "cpu", seed=1000 * seed + 1, requires_grad=(mode == "fwd+bwd"))
    g = make_grad_output(case, "cpu", seed=1000 * seed + 999)
    run = fwd_runner(fn, xs) if mode == "fwd" else fwdbwd_runner(fn, xs, g)
    keep = run()  # warm-up: one-time allocations (FFT plans, thread pools, code pages)
    del keep
    for x in xs:
        x.grad = None
    gc.collect()
    if not _reset_hwm():
        return None, "peak RSS reset unavailable"
    base = _status_kb("VmRSS")
    keep = run()
    peak = _status_kb("VmHWM")
    del keep
    return (peak - base) * 1024, ""


class CpuMemWorker:
    """A long-lived spawn worker that measures peak RSS growth of one call at a time.
    Restarted if it dies (e.g. killed by the kernel's OOM killer, which is then reported)."""

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads or torch.get_num_threads()
        self.proc = None
        self.conn = None

    def _start(self):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "0"
        try:
            self.proc = ctx.Process(target=_worker_main, args=(child, self.threads), daemon=True)
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.conn = parent

    def measure(self, case: Case, name: str, mode: str, seed: int, limit) -> tuple:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send((case.to_dict(), name, mode, seed, limit))
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self.proc.exitcode if self.proc else None
            self.proc = None
            return None, f"out of memory (worker killed, exit {code})"

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except Exception:
                pass
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.terminate()
        self.proc = None
