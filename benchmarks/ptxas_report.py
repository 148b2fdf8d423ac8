"""Registers, stack and spills of every fused kernel, as ptxas reports them: a measurement that needs
nvcc but no GPU.

    CUDA_HOME=/usr/local/cuda python -m benchmarks.ptxas_report [--arch 90] [--all-dtypes]

Compiles the fused kernels' sources (csrc/cuda/fused_<dtype>_*.cu, two per input dtype, as many at
once as there are cores) for sm_<arch> with `-Xptxas -v` and the flags of the extension build
(about 4 minutes on 2 cores; the float64 files only with --all-dtypes) and prints one line per
fused kernel: compute type, input type, phase, the FFT's largest radix, where the slots are (shared memory, or global memory
where they do not fit beside Z), registers per thread, stack frame and spill stores in bytes. At
two blocks per SM (the canonical d = 8192 plan) a thread may have 64 registers at 512 threads
(radix 8) and 128 at 256 threads (radix 32); spills are local-memory traffic that shares the L1's
data path with shared memory. Float64 kernels are left out unless --all-dtypes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# fused_phases.h Phase
PHASES = ["vector spectra", "forward", "backward", "forward, prefetch", "forward 1 map, prefetch",
          "forward pooled, prefetch"]
KERNEL = re.compile(r"fused_kernel<(\w+), ([\w:]+), \(compact_bilinear::fused::Phase\)(\d), (\d), (true|false)>")


def nvcc_command(arch: str, obj: str, source: str, output: str = "-c") -> list:
    """nvcc with the extension build's flags and -Xptxas -v: `source` into `obj` (output "-c" for
    an object, "-cubin" for a cubin)."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    os.environ["CUDA_HOME"] = cuda_home  # torch.utils.cpp_extension reads it at import
    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    includes = [str(REPO / "csrc")] + include_paths(device_type="cuda") + sorted(
        glob.glob(str(nvidia / "*" / "include")))
    return ([os.path.join(cuda_home, "bin", "nvcc")] + [f"-I{i}" for i in includes] + COMMON_NVCC_FLAGS
            + ["-O3", "-lineinfo", "-std=c++20", f"-gencode=arch=compute_{arch},code=sm_{arch}",
               "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-Xptxas", "-v",
               output, source, "-o", obj]
            + (["-DCOMPACT_BILINEAR_OUTLINE_FFT_PASSES"] if os.environ.get("COMPACT_BILINEAR_OUTLINE_FFT_PASSES") == "1"
               else []))


def cuda_tool(name: str) -> str:
    """A CUDA binary tool (cuobjdump, nvdisasm) from CUDA_HOME, or the copy that ships with triton
    (torch's dependency)."""
    cand = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name
    if cand.exists():
        return str(cand)
    try:
        import triton
        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    sys.exit(f"{name} not found: set CUDA_HOME to a CUDA toolkit that has it")


def demangle(names: list) -> list:
    if not shutil.which("c++filt"):
        sys.exit("c++filt (binutils) is needed to read the kernels' names")
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def parse(log: str) -> list:
    """(compute type, input type, phase, radix, slots (shared or global memory), registers, stack bytes,
    spill-store bytes) per kernel."""
    entries, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = {"name": m.group(1)}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
        if m:
            current["stack"], current["spill"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            entries.append(current)
            current = None
    rows = []
    for e, name in zip(entries, demangle([e["name"] for e in entries])):
        m = KERNEL.search(name)
        if m:
            rows.append((m.group(1), m.group(2).split("::")[-1], PHASES[int(m.group(3))], 2 ** int(m.group(4)),
                         "global" if m.group(5) == "true" else "shared", e["regs"], e.get("stack", 0),
                         e.get("spill", 0)))
    return sorted(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ptxas_report", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="90", help="compute capability without the dot (default 90, H100/H200)")
    ap.add_argument("--all-dtypes", action="store_true", help="include the float64 kernels")
    args = ap.parse_args(argv)
    sources = [s for s in sorted(glob.glob(str(REPO / "csrc" / "cuda" / "fused_*.cu")))
               if args.all_dtypes or "_f64_" not in os.path.basename(s)]
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        def compile_one(i):
            return subprocess.run(nvcc_command(args.arch, os.path.join(tmp, f"k{i}.o"), sources[i]), cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        procs = list(pool.map(compile_one, range(len(sources))))
    logs = [p.stdout for p in procs]
    for p in procs:
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-4000:])
            return p.returncode
    rows = [r for r in parse("\n".join(logs)) if args.all_dtypes or r[0] != "double"]
    print(f"fused kernels, ptxas sm_{args.arch}")
    print(f"{'compute':8s} {'input':9s} {'phase':23s} {'radix':>5s} {'slots':>6s} {'registers':>9s} {'stack B':>8s} "
          f"{'spill B':>8s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:9s} {r[2]:23s} {r[3]:5d} {r[4]:>6s} {r[5]:9d} {r[6]:8d} {r[7]:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
