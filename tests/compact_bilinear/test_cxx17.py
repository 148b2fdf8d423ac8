"""The fused pipeline's shared source compiles as C++17.

Extensions build as C++20 with torch 2.14 (this machine) and as C++17 with earlier versions (the
GPU machines have run torch 2.11): a C++20-only construct in the code the CUDA kernels share with
the host instance would pass every test here and stop the build on a lent GPU, as `std::atomic_ref`
once did. ATen's own headers need C++20 since torch 2.14, so this checks what does not include
them: common/fused_phases.h and common/fused.h, every phase instantiated for both FFT radices.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"

SOURCE = """
#include "common/fused_phases.h"
namespace f = compact_bilinear::fused;
template <int Bits>
struct Group {  // the thread-group interface fused.h uses (cpu/cbp_kernel.cpp's HostGroup)
  static constexpr int kMaxPassBits = Bits;
  static constexpr bool kUnitProduct = true;
  template <class F> void for_each(int64_t n, F&& body) const { for (int64_t i = 0; i < n; ++i) body(i); }
  void sync() const {}
  static void max_into(int* word, int v) { *word = v > *word ? v : *word; }
  bool last_to_arrive(int*, int) const { return true; }
};
#define PHASES(T, In, Bits) \\
  template void f::run_phase<T, In, Group<Bits>>(const Group<Bits>&, const f::Args<T, In>&, f::Phase, \\
                                                 f::cplx<T>*, f::cplx<T>*, int64_t, int64_t, f::Turn);
PHASES(float, float, 3)
PHASES(float, float, 5)
PHASES(double, double, 3)
PHASES(float, c10::Half, 5)
PHASES(float, c10::BFloat16, 5)
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_fused_pipeline_compiles_as_cxx17(tmp_path):
    from torch.utils.cpp_extension import include_paths

    src = tmp_path / "cxx17.cpp"
    src.write_text(SOURCE)
    cmd = ["g++", "-std=c++17", "-fsyntax-only", f"-I{CSRC}"] + [f"-I{p}" for p in include_paths()] + [str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
