#pragma once
// Host-side description of one compact bilinear pooling call, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <array>
#include <string>
#include <vector>

#include "common/macros.h"
#include "common/spectral.h"

namespace compact_bilinear {

// One call, validated and normalised. Every input is viewed as x[b, c, l] with l over the shared
// spatial locations (L = prod(S)); a vector input has a single location that broadcasts.
struct Problem {
  int64_t K = 0, B = 0, L = 1, d = 0, F = 0;  // F = d / 2 + 1 spectrum bins
  bool sum_pool = false;
  bool out_map = false;                     // output (B, d, *S) rather than (B, d)
  std::vector<int64_t> out_shape;
  std::array<bool, kMaxInputs> is_map{};    // rows of input k are B*L (map) or B (vector)
  std::vector<at::Tensor> x;                // (B, C_k, L_k) views of the inputs
  std::vector<at::Tensor> hash, sign;       // int64 [C_k] and compute-dtype [C_k]
  // Inverse hash: channels sorted by bucket (perm), their buckets and signs in that order, and
  // where each bucket's run of sorted positions starts (int64 [d + 1]; spectral.h bucket_sketch).
  std::vector<at::Tensor> perm, sorted_hash, sorted_sign, bucket_start;
  // The same as the fused gather reads it: int32 [C_k, 2] (fused.h GatherCode), for d <= 2^14.
  std::vector<at::Tensor> gather;
  at::ScalarType in_dtype = at::kFloat, acc_dtype = at::kFloat;
  // The backward's input gradients not asked for (input_grads): returned as zeros, not computed.
  std::array<bool, kMaxInputs> skip_grad{};
  // A pooled output with a single map input is linear in that map, sum_l F(x_l, v) = F(sum_l x_l, v):
  // the map, input `summed_map`, was summed over its `summed_L` locations (make_problem), and the
  // problem is one of vectors; its gradient is the same at every location (shape_like_inputs).
  int summed_map = -1;
  int64_t summed_L = 1;

  int64_t out_rows() const { return out_map ? B * L : B; }
  int grads_wanted() const {
    int n = 0;
    for (int k = 0; k < K; ++k) n += !skip_grad[k];
    return n;
  }
};

// Validates the arguments (errors name the argument, the expected and the actual value) and
// builds the inverse hashes.
Problem make_problem(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs,
                     int64_t output_dim, bool sum_pool);

// Checks grad_out against the problem (shape and device) for the backward op, and sets which input
// gradients it computes (input_grads: their indices; none given: all).
void check_backward_args(Problem& p, const at::Tensor& grad_out, at::OptionalIntArrayRef input_grads);
// Views each input gradient (B, C_k, L_k) as its input's shape; one skipped (p.skip_grad) is a
// zero expanded to that shape, which costs no memory.
std::vector<at::Tensor> shape_like_inputs(const Problem& p, std::vector<at::Tensor> grads, at::TensorList inputs);

// Per-device building blocks of the FFT (composite) path. Spectra are complex (rows, F) tensors.
// The inverse FFTs run unnormalised: their 1/d is carried by input 0's sketch and its gradient
// (`scale`, see sketch_scale), so it costs no pass of its own over the output.
struct FftKernels {
  // cs (B*L_k, d) <- scale * count sketch of input k (every bucket written; spectral.h bucket_sketch).
  void (*sketch)(const Problem&, int k, const at::Tensor& x, double scale, at::Tensor& cs);
  // P (out spectrum rows, F) <- K-way product with vector broadcast and frequency-domain pooling.
  void (*product)(const Problem&, int64_t batch, const std::vector<at::Tensor>& spectra, at::Tensor& P);
  // Q_k (rows_k, F) <- G * conj(prod_{m != k} spectra_m), summed over locations for vectors.
  void (*product_backward)(const Problem&, int64_t batch, const at::Tensor& G,
                           const std::vector<at::Tensor>& spectra, std::vector<at::Tensor>& Q);
  // grad_x (B, C_k, L_k) <- scale * sign[i] * grad_cs[row, hash[i]].
  void (*sketch_backward)(const Problem&, int k, const at::Tensor& grad_cs, double scale, at::Tensor& grad_x);
};

// The scale of input k's sketch and of its gradient in the FFT path: the 1/d of the inverse FFT
// goes with input 0. Every output and gradient is linear in input 0's sketch or is its gradient,
// so each gets the 1/d exactly once; at powers of two d the result is bit-identical to scaling
// after the inverse transform (a power of two), where torch's irfft spent a pass over the output.
inline double sketch_scale(const Problem& p, int k) { return k == 0 ? 1.0 / static_cast<double>(p.d) : 1.0; }

// Pointers of the FFT path's spectral product for one chunk of samples.
template <typename T>
SpectralArgs<T> spectral_args(const Problem& p, const std::vector<at::Tensor>& spectra) {
  SpectralArgs<T> a;
  a.K = static_cast<int>(p.K);
  a.L = p.L;
  a.F = p.F;
  a.out_map = p.out_map;
  for (int k = 0; k < a.K; ++k) {
    a.is_map[k] = p.is_map[k];
    // A spectrum no gradient needs (fft_backward) is not computed: null.
    a.spec[k] = spectra[k].defined() ? reinterpret_cast<const c10::complex<T>*>(spectra[k].data_ptr()) : nullptr;
  }
  return a;
}
// ... with the backward's G and Q_k, null for an input whose gradient is skipped.
template <typename T>
SpectralArgs<T> spectral_args(const Problem& p, const std::vector<at::Tensor>& spectra, const at::Tensor& G,
                              const std::vector<at::Tensor>& Q) {
  auto a = spectral_args<T>(p, spectra);
  a.grad = reinterpret_cast<const c10::complex<T>*>(G.data_ptr());
  for (int k = 0; k < a.K; ++k)
    a.grad_spec[k] = Q[k].defined() ? reinterpret_cast<c10::complex<T>*>(Q[k].data_ptr()) : nullptr;
  return a;
}

// The composite path, written once: sketch, rfft, product, irfft, processed `chunk` samples at a
// time so intermediates stay small (CPU: cache-sized chunks; CUDA: the whole batch).
// Like gram_forward and gram_backward, for a problem with something to compute and, backward, a
// gradient asked for (fused_driver.h run_forward and run_backward, their only callers, see to it).
at::Tensor fft_forward(const Problem& p, const FftKernels& kern, int64_t chunk);
std::vector<at::Tensor> fft_backward(const Problem& p, const at::Tensor& grad_out, const FftKernels& kern,
                                     int64_t chunk);

// Fused path planning, shared by the host instance and the CUDA kernel.
struct FusedPlan {
  int64_t rows_per_chunk = 1, nchunks = 1;
  bool pair_rows = false;     // backward with one map input: rows in pairs (fused.h backward_rows_one_map)
  int64_t slots = 0;          // half spectra (F complex values each) kept beside the d-point buffer
  bool global_slots = false;  // the slots in global memory, where they do not fit in shared memory
  int64_t prefetch_half = 0;  // the prefetch buffer's words per half (fused.h PrefetchWord), or 0
                              // (forward; backward where stage_x)
  int64_t smem_bytes = 0;     // per thread group
  int max_pass_bits = 5;      // log2 of the FFT passes' largest radix (fused.h: Schedule)
  // Backward, rows whose locations lie next to each other (NCHW) read together (fused.h
  // stage_cluster_rows): by the blocks of a cluster of `cluster` (or 0), a row each, those of an
  // output gradient so laid out (stage_grad) and those of the two maps (stage_x, into the prefetch
  // buffer); an output gradient's also by a single map's row pairs (grad_pairs). The two maps'
  // gradients, NCHW as they are returned, written together by the same clusters (stage_dx, fused.h
  // write_cluster_rows).
  int cluster = 0;
  bool stage_grad = false, stage_x = false, stage_dx = false, grad_pairs = false;
  // Two maps and no vectors, in float, whose last FFT pass has the kernel's unit radix: the product
  // fused with the transforms' passes of span 1 (fused.h unit_product), forward and backward.
  bool unit_product = false;
};
// What the fused kernel's plan needs to know of a GPU: shared memory a block may have (opt-in), an
// SM's shared memory and what the runtime reserves of it per block, an SM's registers, blocks and
// threads, and the blocks of a cluster whose shared memory they share (1 before sm_90).
struct DeviceLimits {
  int64_t smem_per_block, smem_per_sm, smem_reserved_per_block, regs_per_sm, blocks_per_sm, threads_per_sm, sms,
      cluster_blocks;
};
// The host instance plans as for an H100 SXM (an H200's limits are the same), so the host tests run
// the plans the GPU runs; its clusters are emulated (cpu/cbp_kernel.cpp HostLaunch).
constexpr DeviceLimits kHostDeviceLimits{227 * 1024, 228 * 1024, 1024, 65536, 32, 2048, 132, 8};
// Empty if the fused kernel applies, with its plan in `plan` (for a device of these limits), else
// why not.
std::string fused_unsupported_reason(const Problem& p, bool backward, const DeviceLimits& dev, FusedPlan& plan);
// The fused FFT's twiddles (layout: fused.h tw_slot_offset), in the compute dtype, on the inputs'
// device (cached).
at::Tensor twiddles(const Problem& p);
// The output tensor in its final shape and dtype.
at::Tensor empty_output(const Problem& p);
// The input gradients, (B, C_k, L_k) each; undefined where skipped (p.skip_grad).
std::vector<at::Tensor> empty_input_grads(const Problem& p);

// The Gram path (algorithm "gram"): two inputs and an output without locations (pooled, or two
// vectors). The sum over locations of the outer products x_l y_l^T is the Gram matrix M = X Y^T,
// C_0 x C_1 per sample (a map times a vector: the map summed over its locations first), and the
// output is M's count sketch under the pair hash (h_0[a] + h_1[c]) mod d, with the signs folded
// into X and Y: no FFT, but a GEMM of C_0 C_1 L multiply-adds and C_0 C_1 values to sketch per
// sample. Per device:
struct GramKernels {
  // out (B, d) <- for each bin j, the sum of M[b, a, c] over the pairs with (h0[a] + h1[c]) mod d = j,
  // in (a, c) order (spectral.h pair_sketch_bin); M and out in the compute dtype.
  void (*sketch)(const Problem&, const at::Tensor& M, at::Tensor& out);
  // dM (B, C_0, C_1) <- g[b, (h0[a] + h1[c]) mod d], in g's dtype (the compute dtype, or 16-bit).
  void (*sketch_backward)(const Problem&, const at::Tensor& g, at::Tensor& dM);
  int64_t (*chunk)(const Problem&);  // samples per chunk (M is C_0 C_1 values per sample)
  bool gemm_16bit;                   // at::bmm takes 16-bit operands to a float32 product there
  bool in_auto;                      // whether 'auto' weighs it (the cost model was fitted there)
};
// Whether a call runs the Gram path: algorithm "gram" (an error that says why where it cannot run),
// or "auto" where the device's kernels are in 'auto' and the cost model (cbp.cpp) finds it cheaper
// than the FFT path.
bool gram_choice(const Problem& p, const std::string& algorithm, bool backward, const GramKernels& kern);
at::Tensor gram_forward(const Problem& p, const GramKernels& kern);
std::vector<at::Tensor> gram_backward(const Problem& p, const at::Tensor& grad_out, const GramKernels& kern);

}  // namespace compact_bilinear
