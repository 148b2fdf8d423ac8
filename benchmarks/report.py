"""Terminal and Markdown tables, the JSON record, PNG plots, and target checks."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Optional

from .measure import Result

IMPL_ORDER = ("naive", "reference", "cupy", "fft", "fused")


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b: Optional[int]) -> str:
    if b is None:
        return "-"
    if abs(b) < 1e6:
        return f"{b / 1e3:.0f} kB"
    if abs(b) < 1e9:
        return f"{b / 1e6:.1f} MB"
    return f"{b / 1e9:.2f} GB"


def fmt_err(e: Optional[float]) -> str:
    return "-" if e is None else f"{e:.1e}"


#: which statistic tables, plots and targets use: "median_s" (default) or "min_s" (--stat min,
#: steadier on a machine shared with other work)
STAT = "median_s"


def median(r: Result, mode: str) -> Optional[float]:
    t = r.fwd if mode == "fwd" else r.fwdbwd
    return t[STAT] if t else None


def speedup(r: Result, ref: Optional[Result], mode: str) -> Optional[float]:
    if ref is None or ref is r:
        return None
    a, b = median(ref, mode), median(r, mode)
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _group(results: Iterable[Result]):
    groups: dict = {}
    for r in results:
        groups.setdefault(r.case, []).append(r)
    return groups


def _cells(r: Result, ref: Optional[Result], gpu: bool) -> list[str]:
    if r.status in ("n/a", "oom", "skipped") and r.fwd is None:
        msg = {"oom": "OUT OF MEMORY", "skipped": "skipped"}.get(r.status, "n/a")
        return [msg, r.note]
    row = [fmt_time(median(r, "fwd")), fmt_time(median(r, "fwd+bwd")),
           fmt_bytes(r.mem_fwd), fmt_bytes(r.mem_fwdbwd), fmt_err(r.rel_err),
           fmt_err(r.grad_rel_err)]
    sp = [speedup(r, ref, m) for m in ("fwd", "fwd+bwd")]
    row.append(" / ".join("-" if s is None else f"{s:.2f}x" for s in sp))
    if gpu:
        fl = r.floor or {}
        f = fl.get("fwd", {}).get("floor_s")
        t = median(r, "fwd")
        row.append(fmt_time(f))
        row.append("-" if (f is None or t is None) else f"{t / f:.1f}x")
        row.append(fmt_time((r.fwd or {}).get("host_median_s")))
    if r.status not in ("ok",):
        row.append(f"[{r.status.upper()}] {r.note}")
    elif r.note:
        row.append(r.note)
    return row


HEAD = ["fwd", "fwd+bwd", "mem fwd", "mem f+b", "rel err", "grad err", "vs composite"]


def text_table(results: list[Result], gpu: bool, title: str = "") -> str:
    """Plain-text table grouped by case. Times are medians (or minima, --stat min); mem is
    peak extra memory; on a GPU 'host fwd' is the CPU time to issue one forward call;
    'vs composite' is the composite reference's time divided by this one (fwd / fwd+bwd)."""
    head = ["impl"] + HEAD + (["fwd floor", "fwd/floor", "host fwd"] if gpu else [])
    lines = [title] if title else []
    for case, rs in _group(results).items():
        ref = next((r for r in rs if r.impl == "reference"), None)
        rows = [[r.impl] + _cells(r, ref, gpu) for r in sorted(
            rs, key=lambda r: IMPL_ORDER.index(r.impl) if r.impl in IMPL_ORDER else 99)]
        normal = [x for x in rows if not (len(x) <= 3 and x[1] in ("n/a", "OUT OF MEMORY", "skipped"))]
        widths = [max([len(h)] + [len(x[i]) for x in normal if len(x) > i])
                  for i, h in enumerate(head)]
        lines.append("")
        busy = max((r.extra.get("cpu_busy_by_others") or 0.0) for r in rs)
        lines.append(f"{case.label}   [in {fmt_bytes(case.input_bytes())}, out "
                     f"{fmt_bytes(case.output_bytes())}, outer product "
                     f"{case.outer_elems() / 1e6:.1f}M elements]" + (
                         f"   ** other processes used {busy:.0%} of the CPUs: timings "
                         f"unreliable **" if busy > 0.15 else ""))
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for x in rows:
            if len(x) <= 3 and x[1] in ("n/a", "OUT OF MEMORY", "skipped"):
                lines.append("  " + x[0].ljust(widths[0]) + "  " + x[1] + (
                    f" ({x[2]})" if len(x) > 2 and x[2] else ""))
                continue
            cells = [c.ljust(w) for c, w in zip(x, widths)]
            tail = x[len(head):]
            lines.append("  " + "  ".join(cells) + ("  " + " ".join(tail) if tail else ""))
    return "\n".join(lines)


def markdown_table(results: list[Result], gpu: bool) -> str:
    head = ["case", "implementation", "forward", "fwd+bwd", "peak extra mem (fwd+bwd)",
            "max rel err", "speedup vs composite (fwd / fwd+bwd)"]
    if gpu:
        head += ["fwd floor", "fwd / floor"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, rs in _group(results).items():
        ref = next((r for r in rs if r.impl == "reference"), None)
        for r in sorted(rs, key=lambda r: IMPL_ORDER.index(r.impl)
                        if r.impl in IMPL_ORDER else 99):
            if r.status in ("n/a", "oom", "skipped") and r.fwd is None:
                msg = {"oom": "out of memory", "skipped": "skipped (memory limit)"}.get(
                    r.status, "n/a")
                cells = [case.label, r.impl, msg, msg, "-", "-", "-"] + (["-", "-"] if gpu else [])
            else:
                sp = [speedup(r, ref, m) for m in ("fwd", "fwd+bwd")]
                errs = [e for e in (r.rel_err, r.grad_rel_err) if e is not None]
                cells = [case.label, r.impl, fmt_time(median(r, "fwd")),
                         fmt_time(median(r, "fwd+bwd")), fmt_bytes(r.mem_fwdbwd),
                         fmt_err(max(errs) if errs else None),
                         " / ".join("-" if s is None else f"{s:.2f}x" for s in sp)]
                if gpu:
                    f = (r.floor or {}).get("fwd", {}).get("floor_s")
                    t = median(r, "fwd")
                    cells += [fmt_time(f), "-" if not (f and t) else f"{t / f:.1f}x"]
                if r.status != "ok":
                    cells[1] += f" ({r.status})"
            if (r.extra.get("cpu_busy_by_others") or 0.0) > 0.15:
                cells[0] += " (busy machine)"
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_json(path: Path, meta: dict, results: list[Result], extra: Optional[dict] = None):
    cases = {}
    for r in results:
        cases.setdefault(r.case.label, r.case.to_dict())
    doc = {"meta": meta, "cases": list(cases.values()),
           "results": [r.to_dict() for r in results]}
    if extra:
        doc.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


def plots(results: list[Result], outdir: Path, device_name: str, tag: str) -> list[Path]:
    """Time and memory vs d and vs rows (log-log), one line per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    for series, xattr, xlabel in (("d", "d", "sketch size d"), ("rows", "rows", "rows R")):
        rs = [r for r in results if series in r.case.series]
        if len({getattr(r.case, xattr) for r in rs}) < 2:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        panels = (("fwd", "forward time (s)"), ("fwd+bwd", "forward+backward time (s)"),
                  ("mem", "peak extra memory, fwd+bwd (bytes)"))
        for ax, (what, ylabel) in zip(axes, panels):
            for impl in IMPL_ORDER:
                pts = []
                for r in rs:
                    if r.impl != impl:
                        continue
                    y = r.mem_fwdbwd if what == "mem" else median(r, what)
                    if y:
                        pts.append((getattr(r.case, xattr), y))
                if pts:
                    pts.sort()
                    # one colour per implementation in every panel (cupy has no fwd+bwd line)
                    ax.plot(*zip(*pts), marker="o", label=impl, color=f"C{IMPL_ORDER.index(impl)}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        c0 = rs[0].case
        fixed = (f"R={c0.rows}" if series == "d" else f"d={c0.d}") + \
            f", C={'x'.join(map(str, c0.channels))}, {c0.kind}, {c0.dtype}"
        fig.suptitle(f"compact bilinear pooling on {device_name}: vs {xlabel} ({fixed})")
        for ax in axes:
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        p = outdir / f"{tag}_vs_{series}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


# ---- targets --------------------------------------------------------------------------------

def find(results, tag=None, impl=None, case=None) -> Optional[Result]:
    for r in results:
        if (tag is None or r.case.tag == tag) and (impl is None or r.impl == impl) and (
                case is None or r.case == case):
            return r
    return None


def target_line(name: str, value: Optional[float], ok: Optional[bool], detail: str,
                info: bool = False) -> dict:
    """One target; `info` marks a figure that is reported against a target it is not held to."""
    return {"target": name, "value": value, "pass": ok, "detail": detail, "informational": info}


def format_targets(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        mark = "INFO" if t.get("informational") else {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        lines.append(f"  [{mark}] {t['target']}: {t['detail']}")
    return "\n".join(lines)


def geomean(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x and x > 0]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))
