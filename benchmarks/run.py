"""Command line: ``python -m benchmarks`` (see docs/benchmarks.md).

Presets:
  default        the grid (sweep of d and of rows, maps vs vectors, pooled vs not, K=2/3) on
                 the CPU and, when present, CUDA; a few minutes on 2 CPU cores (`make bench`)
  quick          a short grid, under a minute on 2 CPU cores (`make demo`); same as --quick
  cpu-targets    issue 2's CPU targets: fwd+bwd speed-up of the library over the composite
                 (geometric mean >= 1.5x) and peak extra memory (<= 0.5x)
  gpu-canonical  issue 3's canonical GPU case (B=32, 7x7 maps, C=1024x2, d=8192), pooled and
                 not, fp32 and bf16, against the roofline floor of the card
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from . import cases as C
from . import hardware as H
from . import report as R
from .impls import DEFAULT_IMPLS, IMPLS, impls_for, naive_pooling
from .measure import CpuMemWorker, Result, TimingConfig, measure

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("default", "quick", "cpu-targets", "gpu-canonical")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compact bilinear pooling: time, peak memory and error of the naive outer "
                    "product, the composite torch.fft path and the library, side by side.",
        epilog=__doc__.split("\n", 2)[2] + "\nMethod and outputs: docs/benchmarks.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="default")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default=None,
                   help="default: cpu and, when present, cuda (presets pick their own)")
    p.add_argument("--impls", default=None,
                   help=f"comma-separated subset of {','.join(IMPLS)} (default: all that apply)")
    p.add_argument("--dtype", default=None, choices=tuple(C.DTYPES),
                   help="run the grid in this dtype (default float32)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: <results-dir>/results.json)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="folder for results.json, table.txt, table.md and the PNG plots "
                        "(default: benchmarks/results/latest/<preset>-<devices>/, git-ignored "
                        "and overwritten by the next such run; or the folder of --out)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory worker")
    p.add_argument("--naive-limit-gb", type=float, default=None,
                   help="skip the naive method above this estimated peak (default: CPU 2.5 GB, "
                        "CUDA none; it is always reported as out of memory when it cannot fit)")
    p.add_argument("--target-s", type=float, default=None,
                   help="seconds of timed work per measurement (repeats adapt to it)")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic shown in tables, plots and targets (the JSON has both)")
    p.add_argument("--flush-l2", action="store_true",
                   help="CUDA: also overwrite a buffer of twice the L2 before every timed call")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S",
                   help="CPU: before each case wait up to S seconds for other processes to "
                        "leave the CPUs idle (for shared machines)")
    p.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help="CPU: measure a case again (up to N times) when other processes used "
                        "more than 15%% of the CPUs while it ran")
    p.add_argument("--rounds", type=int, default=3, metavar="N",
                   help="cpu-targets: time the three cases N times, every implementation in each "
                        "round, and judge the speed-up by the median round's geometric mean "
                        "(timings on a shared VM drift by up to 2x for tens of seconds)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.preset = "quick"
    return a


def check_library() -> Optional[str]:
    try:
        import compact_bilinear  # noqa: F401
        from compact_bilinear.reference import (  # noqa: F401
            compact_bilinear_pooling_reference, random_hashes)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def self_check() -> dict:
    """The naive outer product and the composite reference agree in float64 (K=2 and 3,
    maps, vectors broadcast over maps, pooling)."""
    from compact_bilinear.reference import compact_bilinear_pooling_reference as ref

    out = {}
    for case in (C.Case(batch=3, channels=(7, 5), d=16),
                 C.Case(batch=2, channels=(6, 4, 3), d=32, spatial=(2, 3),
                        is_map=(True, False, True)),
                 C.Case(batch=2, channels=(5, 9), d=64, spatial=(3, 2), sum_pool=True)):
        idx, signs = C.make_hashes(case, "cpu", 7)
        xs = C.make_inputs(case, "cpu", dtype=torch.float64)
        s64 = [s.double() for s in signs]
        a = naive_pooling(xs, idx, s64, case.d, case.sum_pool)
        b = ref(xs, idx, s64, case.d, sum_pool=case.sum_pool)
        err = ((a - b).abs().max() / b.abs().max()).item()
        out[case.label] = err
    return out


def grid_for(preset: str, device: str) -> list[C.Case]:
    cuda = torch.device(device).type == "cuda"
    if preset == "quick":
        return C.grid_quick()
    if preset == "default":
        return C.grid_cuda() if cuda else C.grid_default()
    raise ValueError(preset)


def timing_config(args, preset: str, device: str) -> TimingConfig:
    cuda = torch.device(device).type == "cuda"
    cfg = TimingConfig()
    if preset == "quick":
        cfg.warmup, cfg.min_reps, cfg.target_s = 1, 3, 0.08
    elif preset == "cpu-targets":
        cfg.warmup, cfg.min_reps, cfg.target_s = 1, 5, 0.5
    elif preset == "default":
        cfg.warmup, cfg.min_reps, cfg.target_s = 1, 3, 0.25
    if cuda:
        cfg.warmup, cfg.min_reps, cfg.max_reps = 10, 30, 300
        cfg.target_s = 0.05 if preset != "quick" else 0.02
        cfg.cache_bytes = H.gpu_l2_bytes(device)
        cfg.flush_l2 = args.flush_l2
    else:
        cfg.cache_bytes = H.l3_bytes()
    if args.target_s is not None:
        cfg.target_s = args.target_s
    if args.min_reps is not None:
        cfg.min_reps = args.min_reps
    return cfg


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="impl", file=sys.stderr, dynamic_ncols=True,
                                leave=False)
            except Exception:
                self.bar = None
        self.first = True

    def case(self, label: str, device: str):
        self.first = True
        self.label = f"{device} {label}"

    def impl(self, name: str):
        if self.bar is not None:
            if not self.first:
                self.bar.update(1)
            self.first = False
            self.bar.set_description_str(f"{self.label} | {name}")

    def case_done(self):
        if self.bar is not None and not self.first:
            self.bar.update(1)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_cases(cases, device, impl_names, cfg, args, progress: Progress, *,
              modes=("fwd", "fwd+bwd"), do_time=True, peaks=None, mem_worker=None):
    results: list[Result] = []
    naive_limit = None
    if args.naive_limit_gb is not None:
        naive_limit = int(args.naive_limit_gb * 1e9)
    elif torch.device(device).type == "cpu":
        naive_limit = int(2.5e9)  # keeps `make bench` to a few minutes; the row says so
    cpu = torch.device(device).type == "cpu"

    def own():
        return [mem_worker.proc.pid] if (mem_worker is not None and mem_worker.proc is not None
                                         and mem_worker.proc.is_alive()) else []

    for case in cases:
        names = [i.name for i in impls_for(impl_names, device)]
        for attempt in range(1 + (args.retry_busy if cpu else 0)):
            if cpu and args.wait_idle:
                wait_for_idle(args.wait_idle, progress)
            progress.case(case.label, device)
            contention = H.CpuContention().start(own())
            rs = measure(case, names, device, cfg, modes=modes, naive_limit=naive_limit,
                         mem_worker=mem_worker, do_time=do_time, progress=progress.impl)
            progress.case_done()
            share = contention.stop(own()) if cpu else None
            if share is not None and share > BUSY and attempt < args.retry_busy:
                progress.write(f"{case.label}: other processes used {share:.0%} of the CPUs; "
                               f"measuring it again")
                continue
            break
        for r in rs:
            r.extra["cpu_busy_by_others"] = share
        if peaks is not None:
            fl = H.roofline(case, peaks)
            for r in rs:
                r.floor = fl
        results += rs
    return results


BUSY = 0.15  # share of the CPUs used by other processes above which CPU timings are flagged


def wait_for_idle(limit_s: float, progress) -> None:
    t0 = time.time()
    told = False
    while time.time() - t0 < limit_s:
        share = H.idle_check(1.0)
        if share is None or share < 0.10:
            return
        if not told:
            progress.write(f"waiting up to {limit_s:.0f} s for the CPUs to be idle "
                           f"(others use {share:.0%})")
            told = True


def resolve_devices(args, preset: str) -> list[str]:
    if preset == "cpu-targets":
        return ["cpu"]
    if preset == "gpu-canonical":
        # --device cpu runs the same cases on the CPU: a dry run of the harness (no floors)
        return ["cpu"] if args.device == "cpu" else ["cuda"]
    want = args.device or "all"
    devs = []
    if want in ("cpu", "all"):
        devs.append("cpu")
    if want in ("cuda", "all") and torch.cuda.is_available():
        devs.append("cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return devs


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset
    R.STAT = f"{args.stat}_s"
    if args.threads:
        torch.set_num_threads(args.threads)
    err = check_library()
    if err:
        print(f"compact_bilinear is not importable ({err}).\nBuild it first: "
              "pip install --no-build-isolation -e .  (or python setup.py build_ext --inplace)",
              file=sys.stderr)
        return 2
    devices = resolve_devices(args, preset)
    if preset == "gpu-canonical" and devices == ["cuda"] and not torch.cuda.is_available():
        print("--preset gpu-canonical needs a CUDA device", file=sys.stderr)
        return 2

    # default: benchmarks/results/latest/<preset>-<devices>/ (git-ignored, overwritten by the
    # next run of the same preset); pass --results-dir or --out to keep a run
    outdir = args.results_dir or (args.out.parent if args.out else
                                  RESULTS / "latest" / f"{preset}-{'-'.join(devices)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    json_path = args.out or outdir / "results.json"

    impl_names = tuple(args.impls.split(",")) if args.impls else None
    if impl_names:
        bad = [n for n in impl_names if n not in IMPLS]
        if bad:
            raise SystemExit(f"--impls: unknown {bad}; expected some of {list(IMPLS)}")

    meta = {"preset": preset, "date": H.now_utc(), "commit": H.git_commit(),
            "versions": H.versions(), "machine": H.machine(devices),
            "argv": sys.argv[1:] if argv is None else list(argv)}
    meta["load_average_start"] = H.load_average()
    meta["cpu_busy_before_start"] = H.idle_check()
    warn = H.busy_warning(meta["cpu_busy_before_start"])
    if warn:
        print(warn.replace("while measuring", "just before starting"), file=sys.stderr)
    t_start = time.time()
    checks = self_check()
    bad = {k: v for k, v in checks.items() if not v < 1e-10}
    meta["self_check_naive_vs_reference_float64"] = checks
    if bad:
        print(f"SELF-CHECK FAILED: naive outer product and composite reference disagree "
              f"in float64: {bad}", file=sys.stderr)

    all_results: list[Result] = []
    extra: dict = {"tables": {}}
    targets: list[dict] = []
    mem_worker = None
    if "cpu" in devices and not args.no_memory:
        mem_worker = CpuMemWorker()
    text_out = []
    try:
        for device in devices:
            cuda = device == "cuda"
            cfg = timing_config(args, preset, device)
            peaks = H.gpu_peaks(device) if cuda else None
            if peaks:
                extra.setdefault("gpu_peaks", {})[device] = peaks
            if preset in ("default", "quick"):
                cases = C.filter_cases(grid_for(preset, device), args.dtype)
                names = impl_names or DEFAULT_IMPLS
                plan = [(cases, names, ("fwd", "fwd+bwd"), True)]
            elif preset == "cpu-targets":
                timed, memc = C.preset_cpu_targets()
                names = impl_names or ("reference", "fft", "fused")
                plan = [(timed, names, ("fwd", "fwd+bwd"), True)] * max(1, args.rounds) + [
                    (memc, names, ("fwd+bwd",), False)]
            else:  # gpu-canonical
                names = impl_names or ("reference", "cupy", "fft", "fused")
                plan = [(C.preset_gpu_canonical(), names, ("fwd", "fwd+bwd"), True)]
            total = sum(len(cs) * len(impls_for(ns, device)) for cs, ns, _, _ in plan)
            progress = Progress(total, not args.no_progress)
            results = []
            own = lambda: [mem_worker.proc.pid] if (  # noqa: E731
                mem_worker is not None and mem_worker.proc is not None) else []
            contention = H.CpuContention().start(own())  # whole run, waits included: JSON only
            rounds = []  # results of each pass over the plan's timed cases
            try:
                for cs, ns, modes, do_time in plan:
                    rs = run_cases(cs, device, ns, cfg, args, progress, modes=modes,
                                   do_time=do_time, peaks=peaks,
                                   mem_worker=None if cuda else mem_worker)
                    if do_time:
                        for r in rs:
                            r.extra["round"] = len(rounds)
                        rounds.append(rs)
                    results += rs
            finally:
                progress.close()
            all_results += results
            hw = H.hardware_line(device)
            title = (f"== {preset} on {device}: {hw} | torch {torch.__version__} | "
                     f"commit {str(meta['commit'])[:12]} | {meta['date']} | "
                     f"{args.stat} times ==")
            if peaks:
                title += (f"\n   roofline: {peaks['table_entry'] or 'unknown card'} "
                          f"{peaks['bandwidth'] / 1e12:.2f} TB/s "
                          f"(measured copy {peaks['measured_copy_bandwidth'] / 1e12:.2f} TB/s), "
                          f"fp32 {(peaks['fp32_flops'] or 0) / 1e12:.0f} TFLOP/s")
            share = contention.stop(own())
            meta.setdefault("cpu_busy_by_others", {})[device] = share
            warn = ""
            if not cuda:
                busy = [r.case.label for r in results
                        if (r.extra.get("cpu_busy_by_others") or 0.0) > BUSY]
                if busy:
                    warn = (f"WARNING: other processes used over {BUSY:.0%} of the CPUs during "
                            f"{len(set(busy))} case(s), flagged below: their timings are "
                            f"unreliable; rerun on an idle machine (or with --retry-busy N)")
            if warn:
                title += "\n   " + warn
            # the table shows the last round (all rounds are in the JSON)
            shown = rounds[-1] + [r for r in results if "round" not in r.extra] if rounds else results
            if len(rounds) > 1:
                title += f"\n   last of {len(rounds)} rounds shown; the targets use all of them"
            table = R.text_table(shown, cuda, title)
            print(table, flush=True)
            text_out.append(table)
            md = R.markdown_table(shown, cuda)
            extra["tables"][device] = md
            (outdir / f"table_{device}.md").write_text(
                f"{preset} on {hw}, torch {torch.__version__}, commit "
                f"{str(meta['commit'])[:12]}, {meta['date']}, {args.stat} times\n\n{md}\n")
            if preset == "cpu-targets":
                targets += cpu_targets(rounds, results)
            if preset == "gpu-canonical":
                targets += gpu_targets(results)
            if not args.no_plots and preset in ("default", "quick"):
                for p in R.plots(results, outdir, hw, f"{preset}_{device}"):
                    print(f"plot: {p}")
    finally:
        if mem_worker is not None:
            mem_worker.close()

    if targets:
        ttxt = "targets:\n" + R.format_targets(targets)
        print("\n" + ttxt)
        text_out.append(ttxt)
        extra["targets"] = targets
    meta["elapsed_s"] = round(time.time() - t_start, 1)
    meta["load_average_end"] = H.load_average()
    (outdir / "table.txt").write_text("\n\n".join(text_out) + "\n")
    R.write_json(json_path, meta, all_results, extra)
    print(f"\nresults: {json_path}  (tables and plots in {outdir}; "
          f"{meta['elapsed_s']:.0f} s)")
    return 0


# ---- targets ------------------------------------------------------------------------------

def cpu_targets(rounds: list[list[Result]], results: list[Result]) -> list[dict]:
    """Speed-up: the geometric mean over cases (a), (b), (c) in each round, judged by the median
    round; the detail lists every round. Memory: the memory case."""
    out = []
    for impl in ("fft", "fused"):
        # 'auto' runs the FFT path on the CPU; the fused kernel's host instance is there for
        # testing the CUDA kernel's logic, so its figures are informational
        info = impl == "fused"
        per_round = []  # (geomean or None, {tag: speed-up})
        for rs in rounds:
            parts = {}
            for tag in ("a", "b", "c"):
                ref = R.find(rs, tag=tag, impl="reference")
                r = R.find(rs, tag=tag, impl=impl)
                parts[tag] = R.speedup(r, ref, "fwd+bwd") if (r and ref and r.status == "ok") else None
            ok = all(parts.values())
            per_round.append((R.geomean(list(parts.values())) if ok else None, parts))
        done = sorted((g for g, _ in per_round if g is not None))
        gm = done[(len(done) - 1) // 2] if len(done) == len(per_round) and done else None
        rounds_txt = "; ".join(
            "-" if g is None else f"{g:.2f}x (" + ", ".join(f"{t} {v:.2f}x" for t, v in p.items()) + ")"
            for g, p in per_round)
        out.append(R.target_line(
            f"{impl} fwd+bwd speed-up over composite, geomean >= 1.5x", gm,
            None if gm is None else gm >= 1.5,
            f"median of {len(per_round)} rounds {'-' if gm is None else f'{gm:.2f}x'}; "
            f"rounds: {rounds_txt}", info))
        ref = R.find(results, tag="mem", impl="reference")
        r = R.find(results, tag="mem", impl=impl)
        ratio = None
        if r and ref and r.mem_fwdbwd and ref.mem_fwdbwd and r.status == "ok":
            ratio = r.mem_fwdbwd / ref.mem_fwdbwd
        out.append(R.target_line(
            f"{impl} fwd+bwd peak extra memory <= 0.5x composite (B=32, 7x7 maps, "
            f"C=1024x2, d=8192)", ratio, None if ratio is None else ratio <= 0.5,
            "-" if ratio is None else f"{R.fmt_bytes(r.mem_fwdbwd)} vs "
            f"{R.fmt_bytes(ref.mem_fwdbwd)} = {ratio:.2f}x", info))
    return out


def gpu_targets(results: list[Result]) -> list[dict]:
    out = []
    for dtype in ("float32", "bfloat16"):
        info = "" if dtype == "float32" else " [bf16, informational]"
        un, po = f"unpooled-{dtype}", f"pooled-{dtype}"
        fu, ff = R.find(results, un, "fused"), R.find(results, un, "fft")
        fpo = R.find(results, po, "fused")
        ok = lambda r: r is not None and r.status == "ok"  # noqa: E731

        t = R.median(fu, "fwd") if ok(fu) else None
        floor = (fu.floor or {}).get("fwd", {}).get("floor_s") if fu else None
        v = t / floor if (t and floor) else None
        out.append(R.target_line(f"fused forward unpooled <= 2x roofline floor{info}", v,
                                 None if v is None else v <= 2.0,
                                 "-" if v is None else f"{R.fmt_time(t)} vs floor "
                                 f"{R.fmt_time(floor)} = {v:.2f}x"))
        s = R.speedup(fu, ff, "fwd") if (ok(fu) and ok(ff)) else None
        out.append(R.target_line(f"fused forward >= 6x faster than fft (unpooled){info}", s,
                                 None if s is None else s >= 6,
                                 "-" if s is None else f"{s:.2f}x"))
        t = R.median(fpo, "fwd") if ok(fpo) else None
        out.append(R.target_line(f"pooled fused forward <= 40 us{info}", t,
                                 None if t is None else t <= 40e-6, R.fmt_time(t)))
        for tag in (un, po):
            a, b = R.find(results, tag, "fused"), R.find(results, tag, "fft")
            s = R.speedup(a, b, "fwd+bwd") if (ok(a) and ok(b)) else None
            out.append(R.target_line(f"fused fwd+bwd >= 5x faster than fft ({tag}){info}", s,
                                     None if s is None else s >= 5,
                                     "-" if s is None else f"{s:.2f}x"))
        for tag in (un,):  # the budget is about the output; pooled outputs are tiny
            a = R.find(results, tag, "fused")
            if not ok(a):
                continue
            case = a.case
            ob, ib = case.output_bytes(), case.input_bytes()
            if a.mem_fwd is not None:
                v = a.mem_fwd / ob
                out.append(R.target_line(
                    f"fused forward peak extra memory <= 1.1x output ({tag}){info}", v,
                    v <= 1.1, f"{R.fmt_bytes(a.mem_fwd)} vs output {R.fmt_bytes(ob)} = {v:.2f}x"))
            if a.mem_fwdbwd is not None:
                v = a.mem_fwdbwd / (ob + ib)
                out.append(R.target_line(
                    f"fused fwd+bwd peak extra memory <= 1.1x (output + input grads) "
                    f"({tag}){info}", v, v <= 1.1,
                    f"{R.fmt_bytes(a.mem_fwdbwd)} vs {R.fmt_bytes(ob + ib)} = {v:.2f}x "
                    f"(vs output alone {a.mem_fwdbwd / ob:.2f}x)"))
    return out


if __name__ == "__main__":
    sys.exit(main())
