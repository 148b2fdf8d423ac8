// The Gram path's pair sketch on the CPU (cpu/cbp_kernel.cpp gram_sketch_cpu) in two orders, side
// by side on the same M: each row's channels in channel order, whose bins jump about the d-bin
// table, against input 1's bucket order, whose bins increase (in two runs, split where the bin
// wraps past d). Both sum each bin's pairs in (a, c) order, so the sketches must be identical.
//
//   g++ -O3 -march=native -o /tmp/pair_sketch_order benchmarks/pair_sketch_order.cpp
//   /tmp/pair_sketch_order 512 512 8192      # C0 C1 d; B = 8 samples, best of 7, ns per pair
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: %s C0 C1 d\n", argv[0]), 2;
  const int64_t C0 = std::atoll(argv[1]), C1 = std::atoll(argv[2]), d = std::atoll(argv[3]), B = 8;
  std::mt19937_64 rng(1);
  std::vector<int64_t> h0(C0), h1(C1), perm(C1), sorted(C1), start(d + 1);
  for (auto& h : h0) h = static_cast<int64_t>(rng() % d);
  for (auto& h : h1) h = static_cast<int64_t>(rng() % d);
  std::vector<float> M(B * C0 * C1), by_channel(B * d), by_bucket(B * d);
  std::normal_distribution<float> normal;
  for (auto& m : M) m = normal(rng);
  // Input 1's inverse hash, as make_problem builds it: a stable sort, and each bucket's first position.
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return h1[a] < h1[b]; });
  for (int64_t q = 0; q < C1; ++q) sorted[q] = h1[perm[q]];
  for (int64_t j = 0; j <= d; ++j) start[j] = std::lower_bound(sorted.begin(), sorted.end(), j) - sorted.begin();

  auto ns_per_pair = [&](auto&& sketch) {
    double best = 1e30;
    for (int r = 0; r < 7; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      sketch();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best * 1e9 / static_cast<double>(B * C0 * C1);
  };
  const double channel_order = ns_per_pair([&] {
    for (int64_t b = 0; b < B; ++b) {
      float* ob = by_channel.data() + b * d;
      std::fill(ob, ob + d, 0.f);
      for (int64_t a = 0; a < C0; ++a) {
        const float* row = M.data() + (b * C0 + a) * C1;
        for (int64_t c = 0; c < C1; ++c) {
          const int64_t j = h0[a] + h1[c];
          ob[j >= d ? j - d : j] += row[c];
        }
      }
    }
  });
  const double bucket_order = ns_per_pair([&] {
    for (int64_t b = 0; b < B; ++b) {
      float* ob = by_bucket.data() + b * d;
      std::fill(ob, ob + d, 0.f);
      for (int64_t a = 0; a < C0; ++a) {
        const float* row = M.data() + (b * C0 + a) * C1;
        const int64_t base = h0[a], wrap = start[d - base];
        for (int64_t q = 0; q < wrap; ++q) ob[sorted[q] + base] += row[perm[q]];
        for (int64_t q = wrap; q < C1; ++q) ob[sorted[q] + base - d] += row[perm[q]];
      }
    }
  });
  const bool same = std::memcmp(by_channel.data(), by_bucket.data(), sizeof(float) * B * d) == 0;
  std::printf("C0 = %lld, C1 = %lld, d = %lld: channel order %.2f ns per pair, bucket order %.2f (%.2fx), %s\n",
              static_cast<long long>(C0), static_cast<long long>(C1), static_cast<long long>(d), channel_order,
              bucket_order, channel_order / bucket_order, same ? "identical sketches" : "SKETCHES DIFFER");
  return same ? 0 : 1;
}
