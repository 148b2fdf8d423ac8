"""Machine description, versions, git commit, and the GPU roofline floor."""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import torch

from .cases import Case

REPO = Path(__file__).resolve().parent.parent

# Peak DRAM bandwidth (bytes/s) and fp32 non-tensor-core peak (flop/s), keyed by a test on
# torch.cuda.get_device_name(). First match wins, so more specific names come first.
GPU_TABLE = [
    ("H200", lambda n: "H200" in n, 4.8e12, 60e12),
    ("H100 PCIe", lambda n: "H100" in n and "PCIE" in n.upper(), 2.0e12, 51e12),
    ("H100 NVL", lambda n: "H100" in n and "NVL" in n.upper(), 3.9e12, 60e12),
    ("H100 SXM", lambda n: "H100" in n, 3.35e12, 60e12),
    ("A100 80GB", lambda n: "A100" in n and "80GB" in n.replace(" ", ""), 2.0e12, 19.5e12),
    ("A100 40GB", lambda n: "A100" in n, 1.555e12, 19.5e12),
    ("L40S", lambda n: "L40S" in n, 0.864e12, 91.6e12),
    ("L4", lambda n: "L4" in n.split(), 0.3e12, 30.3e12),
    ("RTX 4090", lambda n: "4090" in n, 1.008e12, 82.6e12),
]


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def git_commit(repo: Path = REPO) -> Optional[str]:
    """HEAD's commit, read from the .git directory (no git binary needed). The environment
    variable COMPACT_BILINEAR_COMMIT wins (for copies of the tree without .git)."""
    env = " ".join(os.environ.get("COMPACT_BILINEAR_COMMIT", "").split())
    if env:
        return env
    git = repo / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").exists():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            p = base / ref
            if p.exists():
                return p.read_text().strip()
        for base in (git, common):
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        return f"(no commit yet on {ref})"
    except Exception:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_bytes(key: str) -> Optional[int]:
    """A /proc/meminfo entry ("MemTotal", "MemAvailable", ...) in bytes; None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ram_bytes() -> Optional[int]:
    return meminfo_bytes("MemTotal")


def l3_bytes() -> int:
    """Last-level cache size, for rotating CPU inputs (fallback 32 MiB)."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in base.glob("index*"):
            size = (idx / "size").read_text().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
            val = int(size.rstrip("KMG")) * mult
            best = max(best, val)
    except Exception:
        pass
    return best or (32 << 20)


def gpu_l2_bytes(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or (50 << 20))


def versions() -> dict:
    v = {"python": sys.version.split()[0], "torch": torch.__version__,
         "torch_cuda": torch.version.cuda}
    try:
        import numpy
        v["numpy"] = numpy.__version__
    except Exception:
        pass
    try:
        import compact_bilinear
        v["compact_bilinear"] = getattr(compact_bilinear, "__version__", "unknown")
    except Exception as e:
        v["compact_bilinear"] = f"not importable: {e}"
    try:
        import cupy
        v["cupy"] = cupy.__version__
    except Exception:
        v["cupy"] = None
    return v


def machine(devices) -> dict:
    m = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
         "torch_threads": torch.get_num_threads(), "ram_bytes": ram_bytes()}
    gpus = []
    for dev in devices:
        if torch.device(dev).type == "cuda":
            p = torch.cuda.get_device_properties(dev)
            gpus.append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                         "sm_count": p.multi_processor_count, "memory_bytes": p.total_memory,
                         "l2_bytes": gpu_l2_bytes(dev)})
    m["gpus"] = gpus
    return m


def hardware_line(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


# ---- roofline -------------------------------------------------------------------------------

def measure_copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 10."""
    n = nbytes // 4
    a = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    times.sort()
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 4 / times[len(times) // 2]


def gpu_peaks(device) -> dict:
    name = torch.cuda.get_device_name(device)
    measured = measure_copy_bandwidth(device)
    for key, match, bw, fl in GPU_TABLE:
        if match(name):
            return {"device": name, "table_entry": key, "bandwidth": bw, "fp32_flops": fl,
                    "measured_copy_bandwidth": measured, "source": "table"}
    return {"device": name, "table_entry": None, "bandwidth": measured, "fp32_flops": None,
            "measured_copy_bandwidth": measured, "source": "measured copy"}


def fft_flops(d: int) -> float:
    return 2.5 * d * math.log2(d)


def roofline(case: Case, peaks: dict) -> dict:
    """Lower bounds on the time of one call (seconds).

    Bytes: forward reads the inputs and writes the output; backward reads the inputs and the
    upstream gradient and writes the input gradients. FFTs: forward needs one real FFT per
    input row (a vector once per sample) and one inverse per output row; backward recomputes
    the forward spectra, transforms the upstream gradient and inverts once per input row.
    Each real FFT of length d is counted as 2.5 d log2 d flops at the fp32 peak.
    """
    bw, fl = peaks["bandwidth"], peaks.get("fp32_flops")
    n_fwd, n_inv = case.fft_counts()
    out = {}
    for mode, nbytes, nfft in (
        ("fwd", case.input_bytes() + case.output_bytes(), n_fwd + n_inv),
        ("fwd+bwd", 3 * case.input_bytes() + 2 * case.output_bytes(), 3 * n_fwd + 2 * n_inv),
    ):
        t_bw = nbytes / bw
        flops = nfft * fft_flops(case.d)
        t_fl = flops / fl if fl else 0.0
        out[mode] = {"bytes": nbytes, "flops": flops, "t_bandwidth_s": t_bw,
                     "t_flops_s": t_fl, "floor_s": max(t_bw, t_fl)}
    return out



def _proc_stat_cpu() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]) - idle, sum(vals[:8])


def _pid_cpu(pid) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    except (OSError, IndexError, ValueError):
        return 0


class CpuContention:
    """Share of the machine's CPU time used by *other* processes (everything busy minus this
    process and its memory worker) between start() and stop(): CPU timings mean little when
    it is high. Linux only; None elsewhere."""

    def __init__(self):
        self.t0 = None

    def start(self, own_pids=()):
        try:
            self.t0 = (_proc_stat_cpu(), sum(_pid_cpu(p) for p in ("self", *own_pids)))
        except OSError:
            self.t0 = None
        return self

    def stop(self, own_pids=(), own_start=0) -> float | None:
        if self.t0 is None:
            return None
        try:
            (b1, t1), own1 = _proc_stat_cpu(), sum(_pid_cpu(p) for p in ("self", *own_pids))
        except OSError:
            return None
        (b0, t0), own0 = self.t0
        total = t1 - t0
        if total <= 0:
            return None
        return max(0.0, ((b1 - b0) - (own1 - own0 - own_start)) / total)


def idle_check(seconds: float = 0.5) -> float | None:
    """Share of the CPUs busy with other processes over a short sample, before we start."""
    import time

    c = CpuContention().start()
    time.sleep(seconds)
    return c.stop()


def busy_warning(share: float | None) -> str:
    if share is not None and share > 0.15:
        return (f"WARNING: other processes used {share:.0%} of the CPUs "
                f"({os.cpu_count()} cores) while measuring: CPU timings are unreliable; "
                f"rerun on an idle machine")
    return ""


def load_average() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
