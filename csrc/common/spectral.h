#pragma once
// Per-frequency math of the K-way spectral product, shared by the CPU and CUDA FFT paths.
// One call handles one (sample b, bin f) pair and loops over the sample's locations, so vector
// spectra are read once per sample and pooled sums run in a fixed order (deterministic).
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

template <typename T>
CB_HD c10::complex<T> spec_at(const SpectralArgs<T>& a, int k, int64_t b, int64_t l, int64_t f) {
  return a.spec[k][((a.is_map[k] ? b * a.L + l : b)) * a.F + f];
}

template <typename T>
CB_HD void spectral_product_at(const SpectralArgs<T>& a, int64_t b, int64_t f) {
  using C = c10::complex<T>;
  C vec(1, 0);
  for (int k = 0; k < a.K; ++k)
    if (!a.is_map[k]) vec *= spec_at(a, k, b, 0, f);
  C acc(0, 0);
  for (int64_t l = 0; l < a.L; ++l) {
    C prod = vec;
    for (int k = 0; k < a.K; ++k)
      if (a.is_map[k]) prod *= spec_at(a, k, b, l, f);
    if (a.out_map)
      a.out[(b * a.L + l) * a.F + f] = prod;
    else
      acc += prod;
  }
  if (!a.out_map) a.out[b * a.F + f] = acc;
}

// Q_k = G * conj(prod_{m != k} F_m): the spectrum of the circular cross-correlation of the output
// gradient with the other inputs' sketches, i.e. the adjoint of the circular convolution.
template <typename T>
CB_HD void spectral_product_backward_at(const SpectralArgs<T>& a, int64_t b, int64_t f) {
  using C = c10::complex<T>;
  C vacc[kMaxInputs];
  for (int k = 0; k < a.K; ++k) vacc[k] = C(0, 0);
  for (int64_t l = 0; l < a.L; ++l) {
    C v[kMaxInputs], prefix[kMaxInputs + 1];
    prefix[0] = C(1, 0);
    for (int k = 0; k < a.K; ++k) {
      v[k] = spec_at(a, k, b, l, f);
      prefix[k + 1] = prefix[k] * v[k];
    }
    const C g = a.grad[(a.out_map ? b * a.L + l : b) * a.F + f];
    C suffix(1, 0);
    for (int k = a.K - 1; k >= 0; --k) {
      const C q = g * conj(prefix[k] * suffix);
      suffix *= v[k];
      if (a.is_map[k])
        a.grad_spec[k][(b * a.L + l) * a.F + f] = q;
      else
        vacc[k] += q;
    }
  }
  for (int k = 0; k < a.K; ++k)
    if (!a.is_map[k]) a.grad_spec[k][b * a.F + f] = vacc[k];
}

// Count sketch as a gather over the inverse hash: cs[j] = sum_{i: h[i] = j} s[i] x[i].
template <typename T, typename In>
CB_HD T sketch_at(const In* x, int64_t stride_c, const int64_t* perm, const int64_t* ptr, const T* sorted_sign,
                  int64_t j) {
  T acc = 0;
  for (int64_t q = ptr[j]; q < ptr[j + 1]; ++q) acc += sorted_sign[q] * static_cast<T>(x[perm[q] * stride_c]);
  return acc;
}

}  // namespace compact_bilinear
