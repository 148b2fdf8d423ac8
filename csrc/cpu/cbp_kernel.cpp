// CPU kernels: the FFT path (ATen's CPU FFT on cache-sized chunks of samples, with the sketch and
// spectral product loops below) and the host instance of the fused pipeline.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cbp.h"
#include "common/fused_driver.h"
#include "common/spectral.h"

namespace compact_bilinear {
namespace {

// Samples per chunk of the FFT path: about 1 MiB of spectrum per input (64 rows at d = 4096),
// which keeps a chunk's working set in a core's L2 and gives several chunks per thread.
int64_t cpu_chunk(const Problem& p) {
  const int64_t bytes_per_sample = p.L * p.F * (p.acc_dtype == at::kDouble ? 16 : 8);
  return std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(bytes_per_sample, 1));
}

void sketch_cpu(const Problem& p, int k, const at::Tensor& x, at::Tensor& cs) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "compact_bilinear_sketch_cpu", [&] {
    using T = fused::acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t Lk = x.size(2), sb = x.stride(0), sc = x.stride(1), sl = x.stride(2), d = p.d, C = x.size(1);
    const int64_t* perm = p.perm[k].data_ptr<int64_t>();
    const int64_t* sorted_hash = p.sorted_hash[k].data_ptr<int64_t>();
    const T* sgn = p.sorted_sign[k].data_ptr<T>();
    T* out = cs.data_ptr<T>();
    at::parallel_for(0, x.size(0) * Lk, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = xp + (r / Lk) * sb + (r % Lk) * sl;
        T* o = out + r * d;
        std::fill(o, o + d, T(0));
        int64_t j;
        T sum;
        for (int64_t q = 0; q < C; ++q)
          if (bucket_sum(row, sc, perm, sorted_hash, sgn, C, q, j, sum)) o[j] = sum;
      }
    });
  });
}

void product_cpu(const Problem& p, int64_t batch, const std::vector<at::Tensor>& spectra, at::Tensor& P) {
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type() == at::kComplexDouble ? at::kDouble : at::kFloat,
                             "compact_bilinear_product_cpu", [&] {
    auto a = spectral_args<scalar_t>(p, spectra);
    a.out = reinterpret_cast<c10::complex<scalar_t>*>(P.data_ptr());
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) spectral_product(a, b, 0, a.F);
    });
  });
}

void product_backward_cpu(const Problem& p, int64_t batch, const at::Tensor& G, const std::vector<at::Tensor>& spectra,
                          std::vector<at::Tensor>& Q) {
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type() == at::kComplexDouble ? at::kDouble : at::kFloat,
                             "compact_bilinear_product_backward_cpu", [&] {
    auto a = spectral_args<scalar_t>(p, spectra);
    a.grad = reinterpret_cast<const c10::complex<scalar_t>*>(G.data_ptr());
    for (int k = 0; k < a.K; ++k) a.grad_spec[k] = reinterpret_cast<c10::complex<scalar_t>*>(Q[k].data_ptr());
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) spectral_product_backward(a, b, 0, a.F);
    });
  });
}

void sketch_backward_cpu(const Problem& p, int k, const at::Tensor& grad_cs, at::Tensor& grad_x) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_x.scalar_type(), "compact_bilinear_sketch_bwd_cpu",
                                  [&] {
    using T = fused::acc_t<scalar_t>;
    const T* gcs = grad_cs.data_ptr<T>();
    const int64_t* h = p.hash[k].data_ptr<int64_t>();
    const T* s = p.sign[k].data_ptr<T>();
    const int64_t B = grad_x.size(0), C = grad_x.size(1), Lk = grad_x.size(2), d = p.d;
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      // Location-outer: each d-length gradient row is read once while it sits in L1.
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t l = 0; l < Lk; ++l) {
          const T* row = gcs + (b * Lk + l) * d;
          scalar_t* g = gx + b * C * Lk + l;
          for (int64_t i = 0; i < C; ++i) g[i * Lk] = static_cast<scalar_t>(s[i] * row[h[i]]);
        }
    });
  });
}

const FftKernels kCpuKernels{sketch_cpu, product_cpu, product_backward_cpu, sketch_backward_cpu};

// Host instance of the fused pipeline: each parallel task runs whole thread groups in turn.
struct HostGroup {
  template <class F>
  void for_each(int64_t n, F&& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  void sync() const {}
};

struct HostLaunch {
  template <typename T, typename In>
  void operator()(fused::Phase ph, int64_t groups, int64_t ny, int64_t smem, const fused::Args<T, In>& a) const {
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<c10::complex<T>> buf(smem / sizeof(c10::complex<T>));
      for (int64_t i = g0; i < g1; ++i) fused::run_phase(HostGroup{}, a, ph, buf.data(), i / ny, i % ny);
    });
  }
};

// On the CPU, pocketfft through ATen beats the host instance of the fused kernel (see
// benchmarks/), so 'auto' means the FFT path here; the host instance serves algorithm='fused'.
const Backend kCpuBackend{&kCpuKernels, cpu_chunk, kHostSharedMemoryLimit, /*prefer_fused=*/false};

at::Tensor forward_cpu(const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& hash_indices,
                       const std::vector<at::Tensor>& hash_signs, int64_t output_dim, bool sum_pool,
                       c10::string_view algorithm) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  return run_forward(p, use_fused(p, std::string(algorithm), false, kCpuBackend), kCpuBackend, HostLaunch{});
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& grad_out, const std::vector<at::Tensor>& inputs,
                                     const std::vector<at::Tensor>& hash_indices,
                                     const std::vector<at::Tensor>& hash_signs, int64_t output_dim, bool sum_pool,
                                     c10::string_view algorithm) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  check_grad_out(p, grad_out);
  const bool fused = use_fused(p, std::string(algorithm), true, kCpuBackend);
  return shape_like_inputs(run_backward(p, grad_out, fused, kCpuBackend, HostLaunch{}), inputs);
}

}  // namespace

TORCH_LIBRARY_IMPL(compact_bilinear, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
}

}  // namespace compact_bilinear
