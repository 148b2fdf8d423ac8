// CPU kernels: the FFT path (ATen's CPU FFT on cache-sized chunks of samples, with the sketch and
// spectral product loops below) and the host instance of the fused pipeline.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cbp.h"
#include "common/fused_driver.h"
#include "common/spectral.h"

namespace compact_bilinear {
namespace {

// Samples per chunk of the FFT path: about 1 MiB of spectrum per input (64 rows at d = 4096), so
// a chunk's intermediates stay in cache from one stage to the next. Chunks run in turn; each
// stage spreads its rows, bins or channels over the threads. Measured fwd+bwd on 2 cores,
// interleaved, against 1 MiB: 256 KiB 1.54x slower on R = 392 vectors, 4 MiB 1.35x slower, and
// no chunking 1.27x to 2.52x slower on the three cpu-targets cases.
int64_t cpu_chunk(const Problem& p) {
  const int64_t bytes_per_sample = p.L * p.F * (p.acc_dtype == at::kDouble ? 16 : 8);
  return std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(bytes_per_sample, 1));
}

// A map arrives as (B, C, L) with a row's channels L elements apart, so a gather straight from it
// touches a new cache line per channel. The CPU kernels work on (B, L, C) rows instead: the
// chunk is transposed once, and each row's gather then reads one contiguous C-length row.
at::Tensor channel_rows(const at::Tensor& x) {
  return x.size(2) > 1 && x.stride(1) != 1 ? x.transpose(1, 2).contiguous() : x.transpose(1, 2);
}

// cs[r, hash[i]] += (scale sign[i]) x[r, i], each row by one thread in channel order: the same
// sums, in the same order, as the GPU's gather (spectral.h bucket_sketch), so both give identical
// sketches. On the CPU the sequential scatter reads x, hash and sign contiguously and has no
// branches: on 2 cores the fft forward took up to 1.6x as long with the gather (14x14 maps pooled,
// C = 512, d = 8192; vectors, R = 392, C = 1024, d = 4096). COMPACT_BILINEAR_HOST_SKETCH=gather
// runs the gather here, so the tests check the CUDA kernel's sketch on the CPU; the Gram path's pair
// sketch likewise (gram_sketch_cpu).
static bool host_sketch_gather() {
  const char* env = std::getenv("COMPACT_BILINEAR_HOST_SKETCH");
  const std::string how = env ? env : "scatter";
  TORCH_CHECK_VALUE(how == "scatter" || how == "gather",
                    "COMPACT_BILINEAR_HOST_SKETCH must be 'scatter' or 'gather', got '", how, "'");
  return how == "gather";
}

void sketch_cpu(const Problem& p, int k, const at::Tensor& x, double scale, at::Tensor& cs) {
  const bool gather = host_sketch_gather();
  const auto xr = channel_rows(x);  // (B, L_k, C)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "compact_bilinear_sketch_cpu", [&] {
    using T = fused::acc_t<scalar_t>;
    const scalar_t* xp = xr.data_ptr<scalar_t>();
    const int64_t Lk = xr.size(1), sb = xr.stride(0), sl = xr.stride(1), sc = xr.stride(2), d = p.d, C = xr.size(2);
    const int64_t* h = p.hash[k].data_ptr<int64_t>();
    const T* s = p.sign[k].data_ptr<T>();
    const int64_t* perm = p.perm[k].data_ptr<int64_t>();
    const int64_t* start = p.bucket_start[k].data_ptr<int64_t>();
    const T* sorted_sign = p.sorted_sign[k].data_ptr<T>();
    const T scale_t = static_cast<T>(scale);
    T* out = cs.data_ptr<T>();
    at::parallel_for(0, xr.size(0) * Lk, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = xp + (r / Lk) * sb + (r % Lk) * sl;
        T* o = out + r * d;
        if (gather) {
          for (int64_t j = 0; j < d; ++j) o[j] = bucket_sketch(row, sc, perm, sorted_sign, start, scale_t, j);
        } else {
          std::fill(o, o + d, T(0));
          for (int64_t i = 0; i < C; ++i) o[h[i]] += scale_t * s[i] * static_cast<T>(row[i * sc]);
        }
      }
    });
  });
}

// The spectral products on the CPU: per sample and block of bins, chains of streaming complex
// multiplies over interleaved (re, im) values, which the compiler vectorises. (The per-bin form in
// common/spectral.h, one bin per GPU thread, does not vectorise: for a 7x7 map times a vector at
// d = 4096 its backward product took 0.37 ms per sample on one thread; this form takes about
// 0.24 ms on two, bound by the 2.4 MB of spectra it streams.) Each bin is computed by one task
// with a fixed loop order, so results do not depend on the thread count.
constexpr int64_t kBinBlock = 256;

// out (= or +=) a * b, or a * conj(b), over n complex values.
template <bool Conj, bool Accumulate, typename T>
inline void cmul(T* __restrict out, const T* __restrict a, const T* __restrict b, int64_t n) {
  for (int64_t i = 0; i < 2 * n; i += 2) {
    const T br = b[i], bi = Conj ? -b[i + 1] : b[i + 1];
    const T re = a[i] * br - a[i + 1] * bi, im = a[i] * bi + a[i + 1] * br;
    if (Accumulate) {
      out[i] += re;
      out[i + 1] += im;
    } else {
      out[i] = re;
      out[i + 1] = im;
    }
  }
}

// dst (= or +=) first * op(others[0]) * ... * op(others[m-1]), multiplied left to right, with
// op the identity or conj; intermediate products go to the two scratch blocks in turn.
template <bool Conj, typename T>
void cmul_chain(T* dst, bool accumulate, const T* first, const T* const* others, int m, T* scratch, int64_t n) {
  if (m == 0) {
    for (int64_t i = 0; i < 2 * n; ++i) dst[i] = accumulate ? dst[i] + first[i] : first[i];
    return;
  }
  const T* cur = first;
  for (int i = 0; i < m; ++i) {
    const bool last = i + 1 == m;
    T* target = last ? dst : scratch + (i % 2) * 2 * kBinBlock;
    if (last && accumulate)
      cmul<Conj, true>(target, cur, others[i], n);
    else
      cmul<Conj, false>(target, cur, others[i], n);
    cur = target;
  }
}

// Runs fn(b, f0, f1, scratch) in parallel over the chunk's samples and blocks of bins: a chunk of a
// map may be a single sample, and its bins still split across threads.
template <typename T, class Fn>
void for_each_bin_block(int64_t batch, int64_t F, const Fn& fn) {
  const int64_t blocks = (F + kBinBlock - 1) / kBinBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t t0, int64_t t1) {
    T scratch[4 * kBinBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t f0 = (t % blocks) * kBinBlock;
      fn(t / blocks, f0, std::min(F, f0 + kBinBlock), scratch);
    }
  });
}

template <typename T>
const T* bin_ptr(const c10::complex<T>* row, int64_t f0) {
  return reinterpret_cast<const T*>(row + f0);
}

// COMPACT_BILINEAR_HOST_PRODUCT=per-bin runs the GPU's per-bin forms (common/spectral.h) here, a
// sample per task, so the tests check the CUDA kernel's products on the CPU.
static bool host_product_per_bin() {
  const char* env = std::getenv("COMPACT_BILINEAR_HOST_PRODUCT");
  const std::string how = env ? env : "blocks";
  TORCH_CHECK_VALUE(how == "blocks" || how == "per-bin",
                    "COMPACT_BILINEAR_HOST_PRODUCT must be 'blocks' or 'per-bin', got '", how, "'");
  return how == "per-bin";
}

template <class Fn>
void for_each_sample(int64_t batch, const Fn& fn) {
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b);
  });
}

// P[b, l] = prod_k F_k[b, l] (vectors broadcast), or its sum over l when pooling.
void product_cpu(const Problem& p, int64_t batch, const std::vector<at::Tensor>& spectra, at::Tensor& P) {
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type() == at::kComplexDouble ? at::kDouble : at::kFloat,
                             "compact_bilinear_product_cpu", [&] {
    using T = scalar_t;
    auto a = spectral_args<T>(p, spectra);
    if (host_product_per_bin()) {
      a.out = reinterpret_cast<c10::complex<T>*>(P.data_ptr());
      return for_each_sample(batch, [&](int64_t b) { spectral_product(a, b, 0, a.F); });
    }
    auto* P0 = reinterpret_cast<T*>(P.data_ptr());
    for_each_bin_block<T>(batch, a.F, [&](int64_t b, int64_t f0, int64_t f1, T* scratch) {
      const int64_t n = f1 - f0;
      for (int64_t l = 0; l < a.L; ++l) {
        const T* rest[kMaxInputs];
        for (int k = 1; k < a.K; ++k) rest[k - 1] = bin_ptr(spec_row(a, k, b, l), f0);
        T* dst = P0 + 2 * ((a.out_map ? b * a.L + l : b) * a.F + f0);
        cmul_chain<false>(dst, !a.out_map && l > 0, bin_ptr(spec_row(a, 0, b, l), f0), rest, a.K - 1, scratch, n);
      }
    });
  });
}

// Q_k[b, l] = G[b, l] * conj(prod_{m != k} F_m[b, l]), summed over l for vector inputs, for the
// inputs whose Q_k is defined (fft_backward).
void product_backward_cpu(const Problem& p, int64_t batch, const at::Tensor& G, const std::vector<at::Tensor>& spectra,
                          std::vector<at::Tensor>& Q) {
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type() == at::kComplexDouble ? at::kDouble : at::kFloat,
                             "compact_bilinear_product_backward_cpu", [&] {
    using T = scalar_t;
    const auto a = spectral_args<T>(p, spectra, G, Q);
    if (host_product_per_bin())
      return for_each_sample(batch, [&](int64_t b) { spectral_product_backward(a, b, 0, a.F); });
    for_each_bin_block<T>(batch, a.F, [&](int64_t b, int64_t f0, int64_t f1, T* scratch) {
      const int64_t n = f1 - f0;
      for (int64_t l = 0; l < a.L; ++l) {
        const T* g = bin_ptr(a.grad + (a.out_map ? b * a.L + l : b) * a.F, f0);
        for (int k = 0; k < a.K; ++k) {
          if (!a.grad_spec[k]) continue;  // a skipped gradient (fft_backward)
          const T* others[kMaxInputs];
          int m = 0;
          for (int j = 0; j < a.K; ++j)
            if (j != k) others[m++] = bin_ptr(spec_row(a, j, b, l), f0);
          T* dst = reinterpret_cast<T*>(a.grad_spec[k] + (a.is_map[k] ? b * a.L + l : b) * a.F + f0);
          cmul_chain<true>(dst, !a.is_map[k] && l > 0, g, others, m, scratch, n);
        }
      }
    });
  });
}

// grad_x[b, i, l] = sign[i] * grad_cs[b, l, hash[i]], in blocks of channels: a block's outputs
// (kChannelBlock x L_k values) stay in L1 while every location's gradient row is gathered into it.
void sketch_backward_cpu(const Problem& p, int k, const at::Tensor& grad_cs, double scale, at::Tensor& grad_x) {
  constexpr int64_t kChannelBlock = 64;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_x.scalar_type(), "compact_bilinear_sketch_bwd_cpu",
                                  [&] {
    using T = fused::acc_t<scalar_t>;
    const T* gcs = grad_cs.data_ptr<T>();
    const int64_t* h = p.hash[k].data_ptr<int64_t>();
    const T* sign = p.sign[k].data_ptr<T>();
    const T sc = static_cast<T>(scale);
    const int64_t B = grad_x.size(0), C = grad_x.size(1), Lk = grad_x.size(2), d = p.d;
    const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, B * blocks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / blocks, i0 = (t % blocks) * kChannelBlock, i1 = std::min(C, i0 + kChannelBlock);
        for (int64_t l = 0; l < Lk; ++l) {
          const T* row = gcs + (b * Lk + l) * d;
          scalar_t* g = gx + b * C * Lk + l;
          for (int64_t i = i0; i < i1; ++i) g[i * Lk] = static_cast<scalar_t>(sc * sign[i] * row[h[i]]);
        }
      }
    });
  });
}

const FftKernels kCpuKernels{sketch_cpu, product_cpu, product_backward_cpu, sketch_backward_cpu};

// Host instance of the fused pipeline: each parallel task runs whole thread groups in turn.
//
// By default a group runs each for_each's indices in order, as if every for_each ended with a
// barrier. COMPACT_BILINEAR_HOST_ORDER selects stricter schedules, used by the tests to find a
// missing barrier (which this default hides): "threads" defers the for_each calls up to the next
// sync() and then runs them thread by thread over kHostThreads virtual threads (thread t takes
// indices t, t + kHostThreads, ..., as a CUDA thread does), so each virtual thread finishes its
// whole segment before the next starts; "threads-reverse" does the same from the last thread
// down. A kernel that is correct for every interleaving gives bit-identical results under all
// three; one that reads another thread's value without a barrier in between does not.
constexpr int64_t kHostThreads = 8;

enum class Order { Immediate, Threads, ThreadsReverse };

template <int MaxPassBits>
struct HostGroup {
  static constexpr int kMaxPassBits = MaxPassBits;
  static constexpr bool kUnitProduct = true;  // whatever the slots (fused.h product_phase)
  Order order = Order::Immediate;
  mutable std::vector<std::pair<int64_t, std::function<void(int64_t)>>> pending;  // up to the next sync

  template <class F>
  void for_each(int64_t n, F&& f) const {
    if (order == Order::Immediate) {
      for (int64_t i = 0; i < n; ++i) f(i);
    } else {
      pending.emplace_back(n, std::function<void(int64_t)>(f));  // a copy: bodies capture by value
    }
  }
  void sync() const {
    for (int64_t s = 0; s < kHostThreads; ++s) {
      const int64_t t = order == Order::ThreadsReverse ? kHostThreads - 1 - s : s;
      for (auto& [n, f] : pending)
        for (int64_t i = t; i < n; i += kHostThreads) f(i);
    }
    pending.clear();
  }
  // *word = max(*word, v), for every thread of the group (fused.h Balance); seen after sync().
  static void max_into(int* word, int v) {
    if (v > *word) *word = v;
  }
  // Thread groups run side by side on the CPU's threads (HostLaunch), so the count is atomic; the
  // group's pending bodies (its partial spectrum) run first. The GCC/Clang builtin, not C++20's
  // std::atomic_ref: torch before 2.14 builds extensions as C++17.
  bool last_to_arrive(int* counter, int n) const {
    sync();
    return __atomic_fetch_add(counter, 1, __ATOMIC_ACQ_REL) == n - 1;
  }
};

Order host_order() {
  const char* env = std::getenv("COMPACT_BILINEAR_HOST_ORDER");
  const std::string order = env ? env : "";
  if (order == "threads") return Order::Threads;
  if (order == "threads-reverse") return Order::ThreadsReverse;
  TORCH_CHECK_VALUE(order.empty() || order == "immediate", "COMPACT_BILINEAR_HOST_ORDER must be 'immediate', ",
                    "'threads' or 'threads-reverse', got '", order, "'");
  return Order::Immediate;
}

// Each group's shared memory is followed by a guard of two half spectra, and so are its slots where
// the plan keeps them in global memory, checked after every group: a plan with fewer slots than
// the kernel uses (which on the GPU would touch another block's memory or fault) is then an error
// here rather than a corrupted heap. Where the backward's blocks read their rows' values in
// clusters (a.cluster, fused.h stage_cluster_rows), a task takes whole clusters: each of their
// groups has shared memory of its own, all written by the cluster's staging before any group runs,
// and, where they write their rows' gradients together (a.stage_dx, write_cluster_rows), all
// groups run before any writes, as the GPU's cluster barriers order it.
struct HostLaunch {
  template <typename T, typename In>
  void operator()(fused::Phase ph, int64_t groups, int64_t ny, int64_t smem, const fused::Args<T, In>& a) const {
    using C = c10::complex<T>;
    const auto order = host_order();
    const C mark(std::numeric_limits<T>::max(), -std::numeric_limits<T>::max());
    const int64_t n = smem / static_cast<int64_t>(sizeof(C)), guard = 2 * a.F;
    const int64_t q = ph == fused::Phase::Backward && a.cluster > 1 ? a.cluster : 1;
    const auto intact = [&](const std::vector<C>& buf, int64_t used) {
      return std::all_of(buf.begin() + used, buf.end(), [&](C v) { return v == mark; });
    };
    fused::with_max_pass_bits(a.max_pass_bits, [&](auto bits) {
      at::parallel_for(0, (groups + q - 1) / q, 1, [&](int64_t c0, int64_t c1) {
        std::vector<std::vector<C>> shared(q, std::vector<C>(n + guard, mark));
        std::vector<C> global(a.global_slots ? a.slots * a.F + guard : 0, mark);
        const auto z_of = [&](int64_t k) { return shared[k].data() + fused::kCodeValues; };  // codes first (zi)
        const auto slots_of = [&](int64_t k) { return a.global_slots ? global.data() : z_of(k) + fused::z_size(a.d); };
        HostGroup<decltype(bits)::value> group;
        group.order = order;
        const int64_t g1 = std::min(c1 * q, groups);
        for (int64_t c = c0; c < c1; ++c) {
          if (q > 1) {
            for (int r = 0; r < q; ++r) {
              fused::stage_cluster_rows(
                  group, a, z_of(r), c * q, static_cast<int>(q), r, static_cast<int>(q),
                  [&](int k) { return reinterpret_cast<T*>(slots_of(k)); },
                  [&](int k) { return fused::prefetch_buffer(a, z_of(k)); });
              group.sync();
            }
          }
          for (int64_t k = 0; k < q && c * q + k < groups; ++k) {
            const int64_t i = c * q + k;
            // A task's groups in turn, as the prefetching forward's blocks take theirs (fused.h Turn).
            fused::run_phase(group, a, ph, z_of(k), slots_of(k), i / ny, i % ny,
                             fused::Turn{i + 1 < g1 ? (i + 1) / ny : -1, (i + 1) % ny, i == c0 * q});
            group.sync();  // the end of a kernel is a barrier
            TORCH_CHECK(intact(shared[k], n), "compact_bilinear: the fused kernel wrote past the ", smem,
                        " bytes of shared memory its plan gives a thread group");
            TORCH_CHECK(!a.global_slots || intact(global, a.slots * a.F), "compact_bilinear: the fused kernel ",
                        "wrote past the ", a.slots, " half spectra its plan gives a thread group in global memory");
          }
          if (q > 1 && a.stage_dx) {
            for (int r = 0; r < q; ++r) {
              fused::write_cluster_rows(group, a, z_of(r), c * q, static_cast<int>(q), r, static_cast<int>(q),
                                        [&](int k) { return reinterpret_cast<const T*>(slots_of(k)); });
              group.sync();
            }
          }
        }
      });
    });
  }
};

// The Gram path's pair sketch (cbp.h GramKernels): a sample per task, each row a of M added into
// the d bins at (h0[a] + h1[c]) mod d. The row's channels go in input 1's bucket order (its inverse
// hash: perm1, and the sorted buckets), so the bins are written in increasing order, in two runs
// split where (h0[a] + h1) passes d: 1.3-2.5x less time than channel order, whose bins jump about
// the d-bin table (benchmarks/pair_sketch_order.cpp, one core, 256-2048 channels, d = 4096-16000).
// A bin still sums its pairs in (a, c) order, the channels of one bucket being in channel order (a
// stable sort), as the GPU's gather does (spectral.h pair_sketch_bin), which looks up C_0 buckets
// per bin: with d = 8192 and 512 x 512 channels, 16 per pair. COMPACT_BILINEAR_HOST_SKETCH=gather
// runs it here.
void gram_sketch_cpu(const Problem& p, const at::Tensor& M, at::Tensor& out) {
  const bool gather = host_sketch_gather();
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "compact_bilinear_gram_sketch_cpu", [&] {
    const int64_t B = M.size(0), C0 = M.size(1), C1 = M.size(2), d = out.size(1), so = out.stride(0);
    const scalar_t* m = M.data_ptr<scalar_t>();
    const int64_t* ha = p.hash[0].data_ptr<int64_t>();
    const int64_t* perm1 = p.perm[1].data_ptr<int64_t>();
    const int64_t* start1 = p.bucket_start[1].data_ptr<int64_t>();
    const int64_t* h1s = p.sorted_hash[1].data_ptr<int64_t>();  // input 1's buckets, in bucket order
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* ob = o + b * so;
        const scalar_t* mb = m + b * C0 * C1;
        if (gather) {
          for (int64_t j = 0; j < d; ++j) ob[j] = pair_sketch_bin(mb, C0, C1, ha, perm1, start1, d, j);
          continue;
        }
        std::fill(ob, ob + d, scalar_t(0));
        for (int64_t a = 0; a < C0; ++a) {
          const scalar_t* row = mb + a * C1;
          const int64_t base = ha[a], wrap = start1[d - base];  // h1s[q] + base >= d from q = wrap on
          for (int64_t q = 0; q < wrap; ++q) ob[h1s[q] + base] += row[perm1[q]];
          for (int64_t q = wrap; q < C1; ++q) ob[h1s[q] + base - d] += row[perm1[q]];
        }
      }
    });
  });
}

// Its adjoint: dM[b, a, c] = g[b, (h0[a] + h1[c]) mod d], a row (b, a) per task.
void gram_sketch_backward_cpu(const Problem& p, const at::Tensor& g, at::Tensor& dM) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dM.scalar_type(),
                                  "compact_bilinear_gram_sketch_backward_cpu", [&] {
    const int64_t C0 = dM.size(1), C1 = dM.size(2), d = g.size(1), sg = g.stride(0);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* ha = p.hash[0].data_ptr<int64_t>();
    const int64_t* hc = p.hash[1].data_ptr<int64_t>();
    scalar_t* out = dM.data_ptr<scalar_t>();
    at::parallel_for(0, dM.size(0) * C0, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* gb = gp + (r / C0) * sg;
        const int64_t base = ha[r % C0];
        scalar_t* row = out + r * C1;
        for (int64_t c = 0; c < C1; ++c) row[c] = gb[pair_bin(base, hc[c], d)];
      }
    });
  });
}

// Samples per chunk: M (and the backward's dM) at most 2^21 values, 8 MiB in float, but a sample per
// thread at least (the sketch's tasks). glibc maps an allocation over 32 MiB afresh each time, and
// its pages are then faulted in on every call: with 16 MiB per thread (before), the pooled 7x7 call
// of 32 samples of 1024 x 1024 channels took about 33k page faults and 108 ms forward, now 2k and
// 59 ms; backward 151 -> 88 ms; with 8 samples, 1.5x and 1.7x (2 cores, side by side in one process).
int64_t gram_chunk_cpu(const Problem& p) {
  const int64_t pairs = std::max<int64_t>(1, p.x[0].size(1) * p.x[1].size(1));
  return std::max<int64_t>(at::get_num_threads(), (int64_t{1} << 21) / pairs);
}

// ATen's CPU bmm has no 16-bit operands with a float32 product: they are converted first.
const GramKernels kCpuGram{gram_sketch_cpu, gram_sketch_backward_cpu, gram_chunk_cpu, /*gemm_16bit=*/false,
                           /*in_auto=*/true};

// On the CPU, pocketfft through ATen beats the host instance of the fused kernel (see
// benchmarks/), so 'auto' means the FFT path here, or the Gram path where its cost model says it
// is cheaper; the host instance serves algorithm='fused'.
const Backend kCpuBackend{&kCpuKernels, cpu_chunk, &kCpuGram, kHostDeviceLimits, /*prefer_fused=*/false};

at::Tensor forward_cpu(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs,
                       int64_t output_dim, bool sum_pool, c10::string_view algorithm) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  return run_forward(p, choose(p, std::string(algorithm), false, kCpuBackend), kCpuBackend, HostLaunch{});
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& grad_out, at::TensorList inputs, at::TensorList hash_indices,
                                     at::TensorList hash_signs, int64_t output_dim, bool sum_pool,
                                     c10::string_view algorithm, at::OptionalIntArrayRef input_grads) {
  Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  check_backward_args(p, grad_out, input_grads);
  const auto choice = choose(p, std::string(algorithm), true, kCpuBackend);
  return shape_like_inputs(p, run_backward(p, grad_out, choice, kCpuBackend, HostLaunch{}), inputs);
}

std::string plan_cpu(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs, int64_t output_dim,
                     bool sum_pool, c10::string_view algorithm, bool backward) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  return describe_choice(p, std::string(algorithm), backward, kCpuBackend);
}

}  // namespace

TORCH_LIBRARY_IMPL(compact_bilinear, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
  m.impl("plan", &plan_cpu);
}

}  // namespace compact_bilinear
