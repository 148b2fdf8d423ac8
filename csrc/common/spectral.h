#pragma once
// The FFT path's spectral products (per-bin forms, run by the GPU one bin per thread; the CPU
// computes the same products with vectorised block loops in cpu/cbp_kernel.cpp) and the count
// sketch's gather. A call handles one sample and a range of bins and loops over the sample's
// locations in order, so pooled sums and vector gradients are summed in a fixed order.
#include <c10/util/complex.h>

#include "common/macros.h"

namespace compact_bilinear {

template <typename T>
CB_HD c10::complex<T> conj(c10::complex<T> z) {
  return c10::complex<T>(z.real(), -z.imag());
}

template <typename T>
struct SpectralArgs {
  using C = c10::complex<T>;
  int K = 0;
  int64_t L = 1, F = 0;
  bool out_map = false;               // product rows per location (else summed per sample)
  bool is_map[kMaxInputs] = {};
  const C* spec[kMaxInputs] = {};     // (rows_k, F)
  C* out = nullptr;                   // forward: P (out rows, F)
  const C* grad = nullptr;            // backward: G (out rows, F)
  C* grad_spec[kMaxInputs] = {};      // backward: Q_k (rows_k, F)
};

// Row pointer of input k's spectrum at sample b, location l.
template <typename T>
CB_HD const c10::complex<T>* spec_row(const SpectralArgs<T>& a, int k, int64_t b, int64_t l) {
  return a.spec[k] + (a.is_map[k] ? b * a.L + l : b) * a.F;
}

// P[b, l, f] = prod_k F_k[b, l, f] for bins [f0, f1) (or its sum over l when pooling).
template <int K, typename T>
CB_HD void spectral_product_k(const SpectralArgs<T>& a, int64_t b, int64_t f0, int64_t f1) {
  using C = c10::complex<T>;
  C* out = a.out + (a.out_map ? b * a.L : b) * a.F;
  if (!a.out_map)
    for (int64_t f = f0; f < f1; ++f) out[f] = C(0, 0);
  for (int64_t l = 0; l < a.L; ++l) {
    const C* rows[K];
    for (int k = 0; k < K; ++k) rows[k] = spec_row(a, k, b, l);
    C* dst = a.out_map ? out + l * a.F : out;
    for (int64_t f = f0; f < f1; ++f) {
      C prod = rows[0][f];
      for (int k = 1; k < K; ++k) prod *= rows[k][f];
      if (a.out_map)
        dst[f] = prod;
      else
        dst[f] += prod;
    }
  }
}

// Q_k = G * conj(prod_{m != k} F_m): the spectrum of the circular cross-correlation of the output
// gradient with the other inputs' sketches, i.e. the adjoint of the circular convolution. Vector
// inputs sum Q_k over the sample's locations. Same calling convention as spectral_product. Only
// the Q_k whose grad_spec is set are written; a spectrum that none of them needs may be null
// (fft_backward), and counts as 1 in the products of the Q_k that are not written.
template <int K, typename T>
CB_HD void spectral_product_backward_k(const SpectralArgs<T>& a, int64_t b, int64_t f0, int64_t f1) {
  using C = c10::complex<T>;
  for (int k = 0; k < K; ++k)
    if (!a.is_map[k] && a.grad_spec[k])
      for (int64_t f = f0; f < f1; ++f) a.grad_spec[k][b * a.F + f] = C(0, 0);
  for (int64_t l = 0; l < a.L; ++l) {
    const C* rows[K];
    C* dst[K];
    for (int k = 0; k < K; ++k) {
      rows[k] = a.spec[k] ? spec_row(a, k, b, l) : nullptr;
      dst[k] = a.grad_spec[k] ? a.grad_spec[k] + (a.is_map[k] ? b * a.L + l : b) * a.F : nullptr;
    }
    const C* g = a.grad + (a.out_map ? b * a.L + l : b) * a.F;
    for (int64_t f = f0; f < f1; ++f) {
      C v[K], prefix[K + 1];
      prefix[0] = C(1, 0);
      for (int k = 0; k < K; ++k) {
        v[k] = rows[k] ? rows[k][f] : C(1, 0);
        prefix[k + 1] = prefix[k] * v[k];
      }
      C suffix(1, 0);
      for (int k = K - 1; k >= 0; --k) {
        const C q = g[f] * conj(prefix[k] * suffix);
        suffix *= v[k];
        if (!dst[k]) continue;
        if (a.is_map[k])
          dst[k][f] = q;
        else
          dst[k][f] += q;
      }
    }
  }
}

// The input count is a template argument so the per-bin loops over inputs unroll and the
// per-input values stay in registers.
#define CB_DISPATCH_K(K_, CALL) \
  switch (K_) {                 \
    case 1: CALL(1); break;     \
    case 2: CALL(2); break;     \
    case 3: CALL(3); break;     \
    case 4: CALL(4); break;     \
    case 5: CALL(5); break;     \
    case 6: CALL(6); break;     \
    case 7: CALL(7); break;     \
    default: CALL(8); break;    \
  }

template <typename T>
CB_HD void spectral_product(const SpectralArgs<T>& a, int64_t b, int64_t f0, int64_t f1) {
#define CB_CALL(N) spectral_product_k<N>(a, b, f0, f1)
  CB_DISPATCH_K(a.K, CB_CALL)
#undef CB_CALL
}

template <typename T>
CB_HD void spectral_product_backward(const SpectralArgs<T>& a, int64_t b, int64_t f0, int64_t f1) {
#define CB_CALL(N) spectral_product_backward_k<N>(a, b, f0, f1)
  CB_DISPATCH_K(a.K, CB_CALL)
#undef CB_CALL
}

// Bucket j of the count sketch times `scale`, cs[j] = sum_{i: h[i] = j} (scale s[i]) x[i], as a
// gather over the channels sorted by bucket (perm, with their signs in that order): bucket j's run
// is the sorted positions start[j] .. start[j + 1] - 1. The sort is stable, so each bucket sums
// its channels in channel order from 0, the order of a sequential scatter, and the fused kernel's
// gather (fused.h gather_sketches) walks the same runs in the same order: every path's sketches
// are identical. Every bucket is computed, empty ones as 0, so a sketch needs no zeroing pass, and
// consecutive buckets can go to consecutive threads (coalesced stores on the GPU). No atomics.
template <typename T, typename In>
CB_HD T bucket_sketch(const In* x, int64_t stride_c, const int64_t* perm, const T* sorted_sign, const int64_t* start,
                      T scale, int64_t j) {
  T sum(0);
  for (int64_t q = start[j], end = start[j + 1]; q < end; ++q)
    sum += scale * sorted_sign[q] * static_cast<T>(x[perm[q] * stride_c]);
  return sum;
}

// The Gram path's pair sketch (cbp.h GramKernels), bin j of one sample: the sum of M[a, c] (M is
// C0 x C1, row-major) over the pairs with (h0[a] + h1[c]) mod d = j, as a gather. For each a in
// order, the c that land in bin j are input 1's channels in bucket (j - h0[a]) mod d (perm1 and
// start1: its inverse hash, as in bucket_sketch), in channel order: the pairs in (a, c) order from
// 0, the order of the CPU's sequential scatter, so both give identical sketches of the same M. It
// costs C0 bucket look-ups per bin (on the GPU, a warp's 32 bins read 32 consecutive buckets' starts)
// besides the C0 C1 / d pairs it sums; a table of the pairs sorted by bin would need only the latter,
// but one per pair of hashes.
template <typename T>
CB_HD T pair_sketch_bin(const T* m, int64_t C0, int64_t C1, const int64_t* h0, const int64_t* perm1,
                        const int64_t* start1, int64_t d, int64_t j) {
  T sum(0);
  for (int64_t a = 0; a < C0; ++a) {
    const int64_t u = j >= h0[a] ? j - h0[a] : j - h0[a] + d;
    const T* row = m + a * C1;
    for (int64_t q = start1[u], end = start1[u + 1]; q < end; ++q) sum += row[perm1[q]];
  }
  return sum;
}

// The bin of pair (a, c), (h0[a] + h1[c]) mod d, for hashes in [0, d).
CB_HD int64_t pair_bin(int64_t h0a, int64_t h1c, int64_t d) { return h0a + h1c >= d ? h0a + h1c - d : h0a + h1c; }

}  // namespace compact_bilinear
