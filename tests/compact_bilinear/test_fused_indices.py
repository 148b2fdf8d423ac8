"""The fused pipeline's half-spectrum index math (common/fused.h: mirror and bins), checked directly
against its definition by bit reversal: the host instance runs the same expressions as the CUDA
kernels, so a slip here would otherwise show only as a wrong spectrum somewhere in a pipeline test.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"

SOURCE = r"""
#include <cstdio>
#include "common/fused.h"
namespace f = compact_bilinear::fused;
int main() {
  int bad = 0;
  for (int bits = 0; bits <= 14; ++bits) {
    const uint32_t n = 1u << bits;
    for (uint32_t j = 0; j < n; ++j) {  // bin f = bitrev(j); its mirror -f mod n, reversed
      const uint32_t f = f::bit_reverse(j, bits), m = f::bit_reverse((n - f) & (n - 1), bits);
      if (f::mirror(j) != m) ++bad, std::printf("mirror(%u) at n = %u: %u, not %u\n", j, n, f::mirror(j), m);
    }
    // bins(): slot t < n/2 holds bin bitrev(2t), slot n/2 bin n/2 (n = 1: slot 0, bin 0); positions in Z.
    for (uint32_t t = 0; t <= n / 2; ++t) {
      const uint32_t bin = t < n / 2 ? f::bit_reverse(2 * t, bits) : n / 2;
      const uint32_t p = f::bit_reverse(bin, bits), q = f::bit_reverse((n - bin) & (n - 1), bits);
      const f::BinPair pq = f::bins(t, n);
      if (pq.p != f::zi(static_cast<int>(p)) || pq.q != f::zi(static_cast<int>(q)))
        ++bad, std::printf("bins(%u, %u): %d %d, not %d %d\n", t, n, pq.p, pq.q, f::zi(int(p)), f::zi(int(q)));
    }
  }
  std::printf("%d wrong\n", bad);
  return bad != 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_mirror_and_bins_match_bit_reversal(tmp_path):
    from torch.utils.cpp_extension import include_paths

    src, exe = tmp_path / "indices.cpp", tmp_path / "indices"
    src.write_text(SOURCE)
    cmd = ["g++", "-std=c++17", "-O1", f"-I{CSRC}"] + [f"-I{p}" for p in include_paths()] + [str(src), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.strip().endswith("0 wrong")
