// CUDA kernels: the FFT path (gather sketch, K-way spectral product, cuFFT through ATen), the Gram
// path's pair sketch and its adjoint (its GEMMs are ATen's), and the launches of the fused pipeline,
// whose kernels are compiled two files per input dtype (fused_kernel.cuh, fused_<dtype>_*.cu).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <limits>

#include "cbp.h"
#include "common/fused_driver.h"
#include "common/spectral.h"
#include "cuda/fused_launch.h"

namespace compact_bilinear {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// A thread per bucket: every bucket written once (no zeroing pass), in coalesced stores, where a
// scatter from each channel's thread stored a sector per value. Blocks take rows in turn (x) and,
// where the rows are too few to fill the device, a share of each row's buckets (y): a call of a
// few rows (a vector at d = 16000) still spreads over the SMs, and a block works out its row's
// address (two 64-bit divisions) once per row, not once per bucket.
template <typename T, typename In>
__global__ void sketch_kernel(const In* __restrict__ x, int64_t rows, int64_t Lk, int64_t sb, int64_t sc, int64_t sl,
                              const int64_t* __restrict__ perm, const T* __restrict__ sgn,
                              const int64_t* __restrict__ start, T scale, int64_t d, T* __restrict__ out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const In* row = x + (r / Lk) * sb + (r % Lk) * sl;
    T* o = out + r * d;
    for (int64_t j = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < d;
         j += static_cast<int64_t>(gridDim.y) * blockDim.x)
      o[j] = bucket_sketch(row, sc, perm, sgn, start, scale, j);
  }
}

void sketch_cuda(const Problem& p, int k, const at::Tensor& x, double scale, at::Tensor& cs) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "compact_bilinear_sketch_cuda", [&] {
    using T = fused::acc_t<scalar_t>;
    const int64_t rows = x.size(0) * x.size(2);
    if (rows == 0) return;
    // About 8 blocks per SM in all, in rows first.
    const int64_t want = 8 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
    const int64_t shares = std::min({blocks_for(p.d), (want + rows - 1) / rows, int64_t{65535}});
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(rows, std::numeric_limits<int32_t>::max())),
                    static_cast<unsigned>(shares));
    sketch_kernel<T, scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), rows, x.size(2), x.stride(0), x.stride(1), x.stride(2), p.perm[k].data_ptr<int64_t>(),
        p.sorted_sign[k].data_ptr<T>(), p.bucket_start[k].data_ptr<int64_t>(), static_cast<T>(scale), p.d,
        cs.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename T, bool Backward>
__global__ void product_kernel(SpectralArgs<T> a, int64_t batch) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * a.F) return;
  const int64_t b = i / a.F, f = i % a.F;
  if (Backward)
    spectral_product_backward(a, b, f, f + 1);
  else
    spectral_product(a, b, f, f + 1);
}

void product_cuda(const Problem& p, int64_t batch, const std::vector<at::Tensor>& spectra, at::Tensor& P) {
  AT_DISPATCH_FLOATING_TYPES(p.acc_dtype, "compact_bilinear_product_cuda", [&] {
    auto a = spectral_args<scalar_t>(p, spectra);
    a.out = reinterpret_cast<c10::complex<scalar_t>*>(P.data_ptr());
    product_kernel<scalar_t, false><<<blocks_for(batch * p.F), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a, batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void product_backward_cuda(const Problem& p, int64_t batch, const at::Tensor& G, const std::vector<at::Tensor>& spectra,
                           std::vector<at::Tensor>& Q) {
  AT_DISPATCH_FLOATING_TYPES(p.acc_dtype, "compact_bilinear_product_backward_cuda", [&] {
    const auto a = spectral_args<scalar_t>(p, spectra, G, Q);
    product_kernel<scalar_t, true><<<blocks_for(batch * p.F), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a, batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename T, typename In>
__global__ void sketch_backward_kernel(const T* __restrict__ gcs, const int64_t* __restrict__ h, const T* __restrict__ s,
                                       T scale, int64_t B, int64_t C, int64_t Lk, int64_t d, In* __restrict__ gx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * C * Lk) return;
  const int64_t l = i % Lk, c = (i / Lk) % C, b = i / (Lk * C);
  gx[i] = static_cast<In>(scale * s[c] * gcs[(b * Lk + l) * d + h[c]]);
}

void sketch_backward_cuda(const Problem& p, int k, const at::Tensor& grad_cs, double scale, at::Tensor& grad_x) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_x.scalar_type(), "compact_bilinear_sketch_bwd_cuda",
                                  [&] {
    using T = fused::acc_t<scalar_t>;
    const int64_t n = grad_x.numel();
    if (n == 0) return;
    sketch_backward_kernel<T, scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_cs.data_ptr<T>(), p.hash[k].data_ptr<int64_t>(), p.sign[k].data_ptr<T>(), static_cast<T>(scale),
        grad_x.size(0), grad_x.size(1), grad_x.size(2), p.d, grad_x.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const FftKernels kCudaKernels{sketch_cuda, product_cuda, product_backward_cuda, sketch_backward_cuda};

// The Gram path (cbp.h GramKernels): a thread per bin of a sample, gathering its pairs in (a, c)
// order (spectral.h pair_sketch_bin), so the sketch of a given M is the CPU's to the bit.
template <typename T>
__global__ void gram_sketch_kernel(const T* __restrict__ M, int64_t B, int64_t C0, int64_t C1,
                                   const int64_t* __restrict__ h0, const int64_t* __restrict__ perm1,
                                   const int64_t* __restrict__ start1, int64_t d, int64_t so, T* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * d) return;
  const int64_t b = i / d, j = i % d;
  out[b * so + j] = pair_sketch_bin(M + b * C0 * C1, C0, C1, h0, perm1, start1, d, j);
}

void gram_sketch_cuda(const Problem& p, const at::Tensor& M, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "compact_bilinear_gram_sketch_cuda", [&] {
    const int64_t n = M.size(0) * p.d;
    if (n == 0) return;
    gram_sketch_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        M.data_ptr<scalar_t>(), M.size(0), M.size(1), M.size(2), p.hash[0].data_ptr<int64_t>(),
        p.perm[1].data_ptr<int64_t>(), p.bucket_start[1].data_ptr<int64_t>(), p.d, out.stride(0),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Its adjoint, a thread per value of dM (coalesced stores along c).
template <typename T>
__global__ void gram_sketch_backward_kernel(const T* __restrict__ g, int64_t sg, const int64_t* __restrict__ h0,
                                            const int64_t* __restrict__ h1, int64_t B, int64_t C0, int64_t C1,
                                            int64_t d, T* __restrict__ dM) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * C0 * C1) return;
  const int64_t c = i % C1, a = (i / C1) % C0, b = i / (C0 * C1);
  dM[i] = g[b * sg + pair_bin(h0[a], h1[c], d)];
}

void gram_sketch_backward_cuda(const Problem& p, const at::Tensor& g, at::Tensor& dM) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dM.scalar_type(),
                                  "compact_bilinear_gram_sketch_backward_cuda", [&] {
    const int64_t n = dM.numel();
    if (n == 0) return;
    gram_sketch_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), g.stride(0), p.hash[0].data_ptr<int64_t>(), p.hash[1].data_ptr<int64_t>(), dM.size(0),
        dM.size(1), dM.size(2), p.d, dM.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Samples per chunk: M holds at most 2^25 values (128 MiB in float), at least one sample.
int64_t gram_chunk_cuda(const Problem& p) {
  const int64_t pairs = std::max<int64_t>(1, p.x[0].size(1) * p.x[1].size(1));
  return std::max<int64_t>(1, (int64_t{1} << 25) / pairs);
}

// 16-bit GEMM operands go to cuBLAS as they are (at::bmm with a float32 out_dtype: the tensor cores).
// Not in 'auto' until a GPU has timed it against the fused kernel (docs/benchmarks.md, "What the
// next GPU run has to answer"): the cost model's constants were fitted on a CPU.
const GramKernels kCudaGram{gram_sketch_cuda, gram_sketch_backward_cuda, gram_chunk_cuda, /*gemm_16bit=*/true,
                            /*in_auto=*/false};

// ---------------------------------------------------------------------------------------------
// Fused kernel.

struct DeviceLaunch {
  template <typename T, typename In>
  void operator()(fused::Phase ph, int64_t groups, int64_t ny, int64_t smem, const fused::Args<T, In>& a) const {
    if (groups == 0) return;
    using P = fused::Phase;
    switch (ph) {
      case P::VectorSpectra: return launch_phase<T, In, P::VectorSpectra>(groups, ny, smem, a);
      case P::Forward: return launch_phase<T, In, P::Forward>(groups, ny, smem, a);
      case P::Backward: return launch_phase<T, In, P::Backward>(groups, ny, smem, a);
      case P::ForwardPrefetch: return launch_phase<T, In, P::ForwardPrefetch>(groups, ny, smem, a);
      case P::ForwardOneMapPrefetch: return launch_phase<T, In, P::ForwardOneMapPrefetch>(groups, ny, smem, a);
      case P::ForwardPooledPrefetch: return launch_phase<T, In, P::ForwardPooledPrefetch>(groups, ny, smem, a);
    }
  }
};

int64_t whole_batch(const Problem& p) { return std::max<int64_t>(p.B, 1); }

}  // namespace

Backend cuda_backend() {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const DeviceLimits limits{static_cast<int64_t>(prop->sharedMemPerBlockOptin),
                            static_cast<int64_t>(prop->sharedMemPerMultiprocessor),
                            static_cast<int64_t>(prop->reservedSharedMemPerBlock),
                            prop->regsPerMultiprocessor,
                            prop->maxBlocksPerMultiProcessor,
                            prop->maxThreadsPerMultiProcessor,
                            prop->multiProcessorCount,
                            prop->major >= 9 ? 8 : 1};  // 8: the portable cluster size
  return Backend{&kCudaKernels, whole_batch, &kCudaGram, limits, /*prefer_fused=*/true};
}

at::Tensor cuda_forward(const Problem& p, const Choice& choice) {
  return run_forward(p, choice, cuda_backend(), DeviceLaunch{});
}

std::vector<at::Tensor> cuda_backward(const Problem& p, const at::Tensor& grad_out, const Choice& choice) {
  return run_backward(p, grad_out, choice, cuda_backend(), DeviceLaunch{});
}

}  // namespace compact_bilinear
