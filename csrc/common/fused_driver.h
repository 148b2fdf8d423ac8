#pragma once
// Host-side driver of the fused pipeline, shared by the CPU (host instance) and CUDA kernels.
// `Launch` runs one phase over a 1-D grid of thread groups: launch(phase, groups, ny, smem, args)
// where group i handles (i / ny, i % ny).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "cbp.h"
#include "common/fused_phases.h"

namespace compact_bilinear {
namespace fused {

template <typename T, typename In>
Args<T, In> make_args(const Problem& p, const FusedPlan& plan) {
  Args<T, In> a;
  a.K = static_cast<int>(p.K);
  a.B = p.B;
  a.L = p.L;
  a.d = p.d;
  a.F = p.F;
  a.log2d = ilog2(p.d);
  a.out_map = p.out_map;
  a.rows_per_chunk = plan.rows_per_chunk;
  a.pair_rows = plan.pair_rows;
  a.max_pass_bits = plan.max_pass_bits;
  a.nchunks = plan.nchunks;
  a.slots = plan.slots;
  a.global_slots = plan.global_slots;
  a.prefetch_half = plan.prefetch_half;
  a.unit_product = plan.unit_product;
  for (int k = 0; k < a.K; ++k) {
    a.is_map[k] = p.is_map[k];
    if (p.is_map[k]) {
      a.map_ids[a.nmap++] = k;
    } else {
      a.vec_ids[a.nvec++] = k;
    }
    const auto& x = p.x[k];
    a.x[k] = x.data_ptr<In>();
    a.C[k] = x.size(1);
    a.stride_b[k] = x.stride(0);
    a.stride_c[k] = x.stride(1);
    a.stride_l[k] = x.stride(2);
    TORCH_CHECK(p.gather[k].defined(), "compact_bilinear: no gather codes for the fused kernel (output_dim ", p.d, ")");
    a.gather[k] = reinterpret_cast<const GatherCode*>(p.gather[k].data_ptr<int32_t>());
    a.sorted_sign[k] = p.sorted_sign[k].data_ptr<T>();
  }
  a.tw = reinterpret_cast<const cplx<T>*>(twiddles(p).data_ptr());
  return a;
}

template <typename T>
at::ScalarType complex_of() {
  return std::is_same<T, double>::value ? at::kComplexDouble : at::kComplexFloat;
}

// Spectra of the vector inputs (present only beside maps), once per sample: [nvec][B][F].
template <typename T, typename In, class Launch>
at::Tensor launch_vector_spectra(const Problem& p, Args<T, In>& a, Launch&& launch) {
  if (!a.nvec) return {};
  auto vspec = at::empty({a.nvec, p.B, p.F}, p.x[0].options().dtype(complex_of<T>()));
  a.vspec = reinterpret_cast<cplx<T>*>(vspec.data_ptr());
  const int64_t pairs = (a.nvec + 1) / 2;
  Args<T, In> v = a;  // Z only, no slots
  v.slots = 0;
  v.global_slots = false;
  launch(Phase::VectorSpectra, p.B * pairs, pairs, (kCodeValues + z_size(p.d)) * static_cast<int64_t>(sizeof(cplx<T>)), v);
  return vspec;
}

// The chunks' spectra [n][B][nchunks][F] of n sums over each sample's locations, and the samples'
// arrival counters, where a sample's locations may span several chunks (nchunks, the most), for
// fused.h sum_chunks. Both live until the call returns, after its kernels on the GPU's stream.
template <typename T, typename In>
std::pair<at::Tensor, at::Tensor> chunk_sums(const Problem& p, Args<T, In>& a, int64_t n) {
  if (n == 0 || a.nchunks == 1) return {};
  const auto opt = p.x[0].options();
  auto partial = at::empty({n, p.B, a.nchunks, p.F}, opt.dtype(complex_of<T>()));
  auto arrivals = at::zeros({p.B}, opt.dtype(at::kInt));
  a.partial = reinterpret_cast<cplx<T>*>(partial.data_ptr());
  a.arrivals = arrivals.data_ptr<int>();
  return {partial, arrivals};
}

// The chunks of rows_per_chunk of all B * L flat rows (fused.h forward_chunk, backward_chunk).
inline int64_t flat_chunks(const Problem& p, const FusedPlan& plan) {
  return (p.B * p.L + plan.rows_per_chunk - 1) / plan.rows_per_chunk;
}

template <typename T, typename In, class Launch>
at::Tensor forward(const Problem& p, const FusedPlan& plan, Launch&& launch) {
  auto out = empty_output(p);
  auto a = make_args<T, In>(p, plan);
  a.out = out.data_ptr<In>();
  const at::Tensor vspec = launch_vector_spectra(p, a, launch);
  const auto sums = chunk_sums(p, a, a.out_map ? 0 : 1);  // pooled: the product, summed
  const int64_t chunks = flat_chunks(p, plan);
  const Phase ph = !plan.prefetch_half ? Phase::Forward
                   : a.nmap == 1      ? Phase::ForwardOneMapPrefetch
                   : a.out_map        ? Phase::ForwardPrefetch
                                      : Phase::ForwardPooledPrefetch;
  launch(ph, chunks, chunks, plan.smem_bytes, a);
  return out;
}

template <typename T, typename In, class Launch>
std::vector<at::Tensor> backward(const Problem& p, const at::Tensor& grad_out, const FusedPlan& plan,
                                 Launch&& launch) {
  auto grads = empty_input_grads(p);
  auto a = make_args<T, In>(p, plan);
  auto g3 = grad_out.to(p.in_dtype).reshape({p.B, p.d, p.out_map ? p.L : 1});
  // fused.h grad_spectrum steps through a row with a 32-bit byte stride: a gradient whose row
  // values lie 4 GiB or more apart is read from a location-major copy.
  if (g3.stride(1) * g3.element_size() >= (int64_t{1} << 32)) g3 = g3.transpose(1, 2).contiguous().transpose(1, 2);
  a.grad = g3.data_ptr<In>();
  a.grad_stride_b = g3.stride(0);
  a.grad_stride_j = g3.stride(1);
  a.grad_stride_l = g3.stride(2);
  // Gradient rows read together where the plan allows it and a row's neighbour lies next to it
  // (NCHW): a location-major row is read whole by its own block, an expanded one (stride 0) from
  // one place. Clusters where they read the gradient's rows or the maps', or write the maps'
  // gradients (the plan checked those).
  const bool nchw = g3.stride(2) == 1 && g3.stride(1) != 1;
  a.stage_grad = nchw && plan.stage_grad;
  a.grad_pairs = nchw && plan.grad_pairs;
  a.stage_x = plan.stage_x;
  a.stage_dx = plan.stage_dx;
  a.cluster = a.stage_grad || a.stage_x || a.stage_dx ? plan.cluster : 0;
  for (int k = 0; k < a.K; ++k) a.grad_x[k] = grads[k].defined() ? grads[k].data_ptr<In>() : nullptr;  // null: skipped
  const at::Tensor vspec = launch_vector_spectra(p, a, launch);
  const auto sums = chunk_sums(p, a, a.nvec);  // the vectors' gradient spectra, summed
  const int64_t chunks = flat_chunks(p, plan);
  launch(Phase::Backward, chunks, chunks, plan.smem_bytes, a);
  return grads;
}

}  // namespace fused
}  // namespace compact_bilinear

namespace compact_bilinear {

// What a device brings to the two op entry points below.
struct Backend {
  const FftKernels* fft;
  int64_t (*fft_chunk)(const Problem&);  // samples per chunk of the FFT path
  const GramKernels* gram;
  DeviceLimits limits;                   // for the fused path's plan
  bool prefer_fused;                     // what 'auto' picks where the fused kernel applies
};

// The fused kernel's plan where `algorithm` and the backend pick it for this call, else none.
inline std::optional<FusedPlan> fused_choice(const Problem& p, const std::string& algorithm, bool backward,
                                             const Backend& be) {
  if (algorithm == "fft" || algorithm == "gram") return std::nullopt;
  FusedPlan plan;
  const auto why = fused_unsupported_reason(p, backward, be.limits, plan);
  TORCH_CHECK_VALUE(algorithm == "auto" || why.empty(), "compact_bilinear: algorithm='fused' cannot run this call: ",
                    why, "; use algorithm='auto' or 'fft'");
  // 'auto' leaves to fft a backward whose half spectra live in global memory. On an H100 (run 12, d =
  // 16384, fused_ab.py) the map x vector forward+backward took 1541 us fused, 1454 us with fft and
  // 1152 us with the forward fused (230 us, against 535 with fft) and the backward with fft; a
  // forward with its slots there, the pooled forward of three maps, took 594 us fused, 707 with fft.
  const bool global_backward = backward && plan.global_slots;
  if (!why.empty() || !(algorithm == "fused" || (be.prefer_fused && !global_backward))) return std::nullopt;
  return plan;
}

// What runs a call, chosen once per call: the Gram path, the fused kernel with its plan, or else
// the FFT path.
struct Choice {
  bool gram = false;
  std::optional<FusedPlan> fused;
};

inline Choice choose(const Problem& p, const std::string& algorithm, bool backward, const Backend& be) {
  TORCH_CHECK_VALUE(algorithm == "auto" || algorithm == "fft" || algorithm == "fused" || algorithm == "gram",
                    "compact_bilinear: algorithm must be 'auto', 'fused', 'fft' or 'gram', got '", algorithm, "'");
  if (gram_choice(p, algorithm, backward, *be.gram)) return Choice{true, std::nullopt};
  return Choice{false, fused_choice(p, algorithm, backward, be)};
}

// What choose picks, in words (torch.ops.compact_bilinear.plan): "gram", "fft", or "fused" and the
// plan's fields.
inline std::string describe_choice(const Problem& p, const std::string& algorithm, bool backward, const Backend& be) {
  const auto choice = choose(p, algorithm, backward, be);
  if (choice.gram) return "gram";
  const auto& plan = choice.fused;
  if (!plan) return "fft";
  std::ostringstream s;
  s << "fused rows_per_chunk=" << plan->rows_per_chunk << " nchunks=" << plan->nchunks
    << " pair_rows=" << plan->pair_rows << " slots=" << plan->slots << " global_slots=" << plan->global_slots
    << " prefetch_half=" << plan->prefetch_half << " smem_bytes=" << plan->smem_bytes
    << " max_pass_bits=" << plan->max_pass_bits << " cluster=" << plan->cluster << " stage_grad=" << plan->stage_grad
    << " stage_x=" << plan->stage_x << " stage_dx=" << plan->stage_dx << " grad_pairs=" << plan->grad_pairs
    << " unit_product=" << plan->unit_product;
  return s.str();
}

// The algorithms for a validated problem. Validation (make_problem) happens in the callers, in
// host C++ translation units, so argument errors never unwind through nvcc-compiled frames. An
// empty batch or an empty map (a zero-size spatial dim) leaves nothing to compute: a pooled output
// sums over no locations and is zero, and so is every gradient.
inline bool nothing_to_compute(const Problem& p) { return p.B == 0 || p.L == 0; }

template <class Launch>
at::Tensor run_forward(const Problem& p, const Choice& choice, const Backend& be, Launch&& launch) {
  if (nothing_to_compute(p)) return empty_output(p).zero_();
  if (choice.gram) return gram_forward(p, *be.gram);
  if (!choice.fused) return fft_forward(p, *be.fft, be.fft_chunk(p));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.in_dtype, "compact_bilinear_fused_forward", [&] {
    out = fused::forward<fused::acc_t<scalar_t>, scalar_t>(p, *choice.fused, launch);
  });
  return out;
}

template <class Launch>
std::vector<at::Tensor> run_backward(const Problem& p, const at::Tensor& grad_out, const Choice& choice,
                                     const Backend& be, Launch&& launch) {
  std::vector<at::Tensor> grads;
  if (nothing_to_compute(p) || p.grads_wanted() == 0) {
    grads = empty_input_grads(p);
    for (auto& g : grads)
      if (g.defined()) g.zero_();
  } else if (choice.gram) {
    grads = gram_backward(p, grad_out, *be.gram);
  } else if (!choice.fused) {
    grads = fft_backward(p, grad_out, *be.fft, be.fft_chunk(p));
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.in_dtype, "compact_bilinear_fused_backward", [&] {
      grads = fused::backward<fused::acc_t<scalar_t>, scalar_t>(p, grad_out, *choice.fused, launch);
    });
  }
  return grads;
}

}  // namespace compact_bilinear
