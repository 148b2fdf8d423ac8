// Op schemas, argument validation and the device-independent parts of both algorithms.
#include "cbp.h"

#include "common/fused.h"

#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <tuple>

namespace compact_bilinear {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

bool is_real_number_dtype(at::ScalarType t) {
  return (at::isFloatingType(t) || at::isIntegralType(t, /*includeBool=*/false));
}

// The inverse hash of one input, validated. Building it costs a sort and, on CUDA, a
// device sync for the range check, so tables are cached per hash/sign tensor object: an entry
// is reused only while both tensor objects are alive and their version counters are unchanged
// (any in-place write through the tensor bumps them). Writes through `.data` bypass the version
// counter; replace the tensor instead.
struct HashTables {
  at::Tensor hash, sign, perm, sorted_hash, sorted_sign, bucket_start, gather;
};

struct HashCacheEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl> h, s;
  int64_t hv, sv, d;
  at::ScalarType acc;
  HashTables t;
};

// The fused gather's codes (fused.h GatherCode) from the sorted buckets and their channels, as
// int32 pairs [C, 2]: word = bucket | kRunContinues (the next position has the same bucket) |
// kNotHead (the previous one has), channel. Only where the fused kernel can run (d <= 2^14 and
// fewer than 2^30 channels); undefined otherwise.
at::Tensor gather_codes(const at::Tensor& sorted_hash, const at::Tensor& perm, int64_t d) {
  const int64_t C = sorted_hash.numel();
  if (d > (int64_t{1} << fused::kMaxLog2d) || C >= (int64_t{1} << 30)) return at::Tensor();
  // run[q] = 1 where positions q - 1 and q share a bucket (q = 1 .. C - 1), 0 at both ends.
  auto run = at::zeros({C + 1}, sorted_hash.options().dtype(at::kInt));
  if (C > 1) run.slice(0, 1, C).copy_(sorted_hash.slice(0, 1) == sorted_hash.slice(0, 0, -1));
  // bucket < 2^30, so the sum stays in int32 with kNotHead as its sign bit.
  const auto word = sorted_hash.to(at::kInt) + run.slice(0, 1, C + 1) * static_cast<int32_t>(fused::kRunContinues) +
                    run.slice(0, 0, C) * std::numeric_limits<int32_t>::min();
  return at::stack({word, perm.to(at::kInt)}, 1).contiguous();
}

HashTables build_hash_tables(const at::Tensor& h_in, const at::Tensor& s_in, int64_t k, int64_t d,
                             at::ScalarType acc) {
  HashTables t;
  // Copies, so the cache never holds the caller's tensors alive (its weak references expire).
  t.hash = h_in.to(at::kLong, /*non_blocking=*/false, /*copy=*/true).contiguous();
  if (t.hash.numel()) {
    // Both checks in one transfer (one device sync): the hash's range, and how many signs are not
    // exactly +-1 (a 0/1 draw, a NaN), which every algorithm would otherwise take as weights.
    const auto not_unit = (s_in != 1).logical_and_(s_in != -1);
    auto b = at::stack({t.hash.min(), t.hash.max(), not_unit.sum()}).cpu();
    const int64_t lo = b[0].item<int64_t>(), hi = b[1].item<int64_t>(), bad = b[2].item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < d, "compact_bilinear: hash_indices[", k, "] must lie in [0, output_dim) = [0, ",
                      d, "), found values in [", lo, ", ", hi, "]");
    if (bad) {
      const int64_t c = not_unit.nonzero()[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, "compact_bilinear: hash_signs[", k, "] must hold only +1 and -1, found ", bad,
                        " other value(s), the first ", s_in[c].item<double>(), " at channel ", c);
    }
  }
  t.sign = s_in.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  // Stable, so each bucket sums its channels in channel order.
  auto sorted = at::sort(t.hash, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  t.sorted_hash = std::get<0>(sorted).contiguous();
  t.perm = std::get<1>(sorted).contiguous();
  t.sorted_sign = t.sign.index_select(0, t.perm).contiguous();
  // Bucket j's run of sorted positions starts at bucket_start[j] and ends at bucket_start[j + 1].
  t.bucket_start = at::searchsorted(t.sorted_hash, at::arange(d + 1, t.sorted_hash.options())).contiguous();
  t.gather = gather_codes(t.sorted_hash, t.perm, d);
  return t;
}

HashTables hash_tables(const at::Tensor& h, const at::Tensor& s, int64_t k, int64_t d, at::ScalarType acc) {
  if (h.is_inference() || s.is_inference()) return build_hash_tables(h, s, k, d, acc);
  static std::mutex mu;
  static std::list<HashCacheEntry> cache;  // most recently used first
  constexpr size_t kCapacity = 64;
  auto* hi = h.unsafeGetTensorImpl();
  auto* si = s.unsafeGetTensorImpl();
  const int64_t hv = hi->version_counter().current_version(), sv = si->version_counter().current_version();
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      auto hl = it->h.lock();
      auto sl = it->s.lock();
      if (hl.get() == hi && sl.get() == si && it->hv == hv && it->sv == sv && it->d == d && it->acc == acc) {
        cache.splice(cache.begin(), cache, it);
        return cache.front().t;
      }
    }
  }
  HashTables t = build_hash_tables(h, s, k, d, acc);
  std::lock_guard<std::mutex> lock(mu);
  cache.push_front(HashCacheEntry{c10::weak_intrusive_ptr<c10::TensorImpl>(h.getIntrusivePtr()),
                                  c10::weak_intrusive_ptr<c10::TensorImpl>(s.getIntrusivePtr()), hv, sv, d, acc, t});
  if (cache.size() > kCapacity) cache.pop_back();
  return t;
}

}  // namespace

static bool env_switch(const char* name);

Problem make_problem(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs,
                     int64_t output_dim, bool sum_pool) {
  Problem p;
  p.K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK_VALUE(p.K >= 1, "compact_bilinear: inputs must hold at least one tensor, got none");
  TORCH_CHECK_VALUE(p.K <= kMaxInputs, "compact_bilinear: at most ", kMaxInputs, " inputs are supported, got ",
                    p.K);
  TORCH_CHECK_VALUE(static_cast<int64_t>(hash_indices.size()) == p.K,
                    "compact_bilinear: hash_indices must hold one tensor per input (", p.K, "), got ",
                    hash_indices.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(hash_signs.size()) == p.K,
                    "compact_bilinear: hash_signs must hold one tensor per input (", p.K, "), got ",
                    hash_signs.size());
  TORCH_CHECK_VALUE(output_dim >= 1, "compact_bilinear: output_dim must be >= 1, got ", output_dim);
  p.d = output_dim;
  p.F = output_dim / 2 + 1;
  p.sum_pool = sum_pool;

  const auto& x0 = inputs[0];
  const auto device = x0.device();
  p.in_dtype = x0.scalar_type();
  std::vector<int64_t> spatial;
  bool have_map = false;
  for (int64_t k = 0; k < p.K; ++k) {
    const auto& x = inputs[k];
    TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "compact_bilinear: inputs[", k,
                     "] must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                     x.scalar_type());
    TORCH_CHECK_TYPE(x.scalar_type() == p.in_dtype, "compact_bilinear: all inputs must share one dtype; inputs[0] is ",
                     p.in_dtype, " but inputs[", k, "] is ", x.scalar_type());
    TORCH_CHECK_VALUE(x.dim() >= 2, "compact_bilinear: inputs[", k,
                      "] must have shape (B, C) or (B, C, *S), got shape ", shape_str(x.sizes()));
    TORCH_CHECK_VALUE(x.device() == device, "compact_bilinear: inputs[", k, "] is on ", x.device(),
                      " but inputs[0] is on ", device, "; all inputs must be on one device");
    TORCH_CHECK_VALUE(x.size(0) == x0.size(0), "compact_bilinear: batch size mismatch: inputs[", k, "] has ",
                      x.size(0), " samples but inputs[0] has ", x0.size(0));
    if (x.dim() > 2) {
      auto s = x.sizes().slice(2).vec();
      if (!have_map) {
        spatial = s;
        have_map = true;
      } else {
        TORCH_CHECK_VALUE(s == spatial, "compact_bilinear: spatial shape mismatch: inputs[", k,
                          "] has spatial shape ", shape_str(s), " but an earlier map has ", shape_str(spatial),
                          "; maps must share their spatial dims (vectors broadcast)");
      }
    }
    const auto& h = hash_indices[k];
    const auto& s = hash_signs[k];
    const int64_t C = x.size(1);
    TORCH_CHECK_TYPE(at::isIntegralType(h.scalar_type(), /*includeBool=*/false), "compact_bilinear: hash_indices[", k,
                     "] must be an integer tensor, got ", h.scalar_type());
    TORCH_CHECK_VALUE(h.dim() == 1 && h.size(0) == C, "compact_bilinear: hash_indices[", k,
                      "] must have shape (", C, ",) to match the channels of inputs[", k, "], got shape ",
                      shape_str(h.sizes()));
    TORCH_CHECK_TYPE(is_real_number_dtype(s.scalar_type()), "compact_bilinear: hash_signs[", k,
                     "] must be a real tensor of +-1, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == C, "compact_bilinear: hash_signs[", k, "] must have shape (", C,
                      ",) to match the channels of inputs[", k, "], got shape ", shape_str(s.sizes()));
    TORCH_CHECK_VALUE(h.device() == device && s.device() == device, "compact_bilinear: hash_indices[", k,
                      "] and hash_signs[", k, "] must be on the inputs' device ", device, ", got ", h.device(),
                      " and ", s.device());
  }
  p.acc_dtype = p.in_dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.B = x0.size(0);
  p.L = 1;
  for (auto s : spatial) p.L *= s;
  p.out_map = have_map && !sum_pool;
  p.out_shape = {p.B, p.d};
  if (p.out_map) p.out_shape.insert(p.out_shape.end(), spatial.begin(), spatial.end());

  for (int64_t k = 0; k < p.K; ++k) {
    const auto& x = inputs[k];
    p.is_map[k] = x.dim() > 2 || !have_map;
    p.x.push_back(x.reshape({p.B, x.size(1), x.dim() > 2 ? p.L : 1}));
    auto hi = hash_tables(hash_indices[k], hash_signs[k], k, p.d, p.acc_dtype);
    p.hash.push_back(hi.hash);
    p.sign.push_back(hi.sign);
    p.perm.push_back(hi.perm);
    p.sorted_sign.push_back(hi.sorted_sign);
    p.sorted_hash.push_back(hi.sorted_hash);
    p.bucket_start.push_back(hi.bucket_start);
    p.gather.push_back(hi.gather);
  }
  // A pooled output of one map and vectors: the map summed over its locations first (in the compute
  // dtype, rounded once to its own), L FFT rows a sample become one. Not in float16, whose range
  // (65504) the sum of a map's locations can exceed where the output's stays inside it.
  // COMPACT_BILINEAR_SUM_MAP_FIRST=0 keeps the rows, for A/B timing and to test the kernels'
  // per-location sums.
  int nmap = 0, map = -1;
  for (int k = 0; k < p.K; ++k)
    if (inputs[k].dim() > 2) ++nmap, map = k;
  if (sum_pool && nmap == 1 && p.L > 1 && p.in_dtype != at::kHalf && env_switch("COMPACT_BILINEAR_SUM_MAP_FIRST")) {
    p.x[map] = p.x[map].sum(-1, /*keepdim=*/true, p.acc_dtype).to(p.in_dtype);
    p.summed_map = map;
    p.summed_L = p.L;
    p.L = 1;
    for (int k = 0; k < p.K; ++k) p.is_map[k] = true;  // all vectors: the convention above
  }
  return p;
}

void check_backward_args(Problem& p, const at::Tensor& grad_out, at::OptionalIntArrayRef input_grads) {
  TORCH_CHECK_VALUE(grad_out.sizes().vec() == p.out_shape, "compact_bilinear: grad_out must have the output's shape ",
                    shape_str(p.out_shape), ", got ", shape_str(grad_out.sizes()));
  TORCH_CHECK_VALUE(grad_out.device() == p.x[0].device(), "compact_bilinear: grad_out must be on ", p.x[0].device(),
                    ", got ", grad_out.device());
  if (!input_grads.has_value()) return;
  p.skip_grad.fill(true);
  for (size_t i = 0; i < input_grads->size(); ++i) {
    const int64_t k = (*input_grads)[i];
    TORCH_CHECK_VALUE(k >= 0 && k < p.K, "compact_bilinear: input_grads[", i, "] must be an input index in [0, ", p.K,
                      "), got ", k);
    p.skip_grad[k] = false;
  }
}

std::vector<at::Tensor> shape_like_inputs(const Problem& p, std::vector<at::Tensor> grads, at::TensorList inputs) {
  for (int k = 0; k < static_cast<int>(grads.size()); ++k) {
    if (p.skip_grad[k])
      grads[k] = at::zeros({}, inputs[k].options()).expand(inputs[k].sizes());
    else if (k == p.summed_map)  // the summed map's gradient, at each of its locations
      grads[k] = grads[k].expand({p.B, grads[k].size(1), p.summed_L}).contiguous().view(inputs[k].sizes());
    else
      grads[k] = grads[k].view(inputs[k].sizes());
  }
  return grads;
}

// Maps are stored location-major, (B, *S, d), and returned as the (B, d, *S) view of that
// buffer (torch.channels_last for 2-D maps): every kernel then writes whole d-length rows,
// contiguous, instead of scattering each row with a stride of L elements.
at::Tensor empty_output(const Problem& p) {
  const auto opt = p.x[0].options().dtype(p.in_dtype);
  if (!p.out_map) return at::empty(p.out_shape, opt);
  std::vector<int64_t> rows_shape(p.out_shape.begin(), p.out_shape.end());
  rows_shape.erase(rows_shape.begin() + 1);
  rows_shape.push_back(p.d);
  return at::empty(rows_shape, opt).movedim(-1, 1);
}

std::vector<at::Tensor> empty_input_grads(const Problem& p) {
  std::vector<at::Tensor> g;
  for (int64_t k = 0; k < p.K; ++k)
    g.push_back(p.skip_grad[k] ? at::Tensor() : at::empty(p.x[k].sizes(), p.x[k].options()));
  return g;
}

// Runs fn(first sample, samples) over chunks of the batch in order. Each chunk's ATen ops use
// the intra-op thread pool themselves. (Running chunks in parallel, each single-threaded, was
// measured slower on 2 cores with ATen's MKL FFT: 8.7 vs 6.7 ms forward at R = 392, d = 4096.)
template <class F>
static void for_each_chunk(const Problem& p, int64_t chunk, const F& fn) {
  for (int64_t b0 = 0; b0 < p.B; b0 += chunk) fn(b0, std::min(chunk, p.B - b0));
}

// The inverse transforms' norm: "forward" puts 1/n on the forward transform, so the inverse is
// unscaled (input 0's sketch carries the 1/d: sketch_scale).
constexpr c10::string_view kUnscaled = "forward";

at::Tensor fft_forward(const Problem& p, const FftKernels& kern, int64_t chunk) {
  auto out = empty_output(p);
  const int64_t Lout = p.out_map ? p.L : 1;
  auto rows = out.movedim(1, -1).reshape({p.out_rows(), p.d});  // a view: out is location-major
  const auto copt = p.x[0].options().dtype(p.acc_dtype);
  for_each_chunk(p, chunk, [&](int64_t b0, int64_t bc) {
    std::vector<at::Tensor> spectra;
    for (int k = 0; k < p.K; ++k) {
      auto cs = at::empty({bc * (p.is_map[k] ? p.L : 1), p.d}, copt);
      {
        RECORD_FUNCTION("compact_bilinear::sketch", {});
        kern.sketch(p, k, p.x[k].narrow(0, b0, bc), sketch_scale(p, k), cs);
      }
      spectra.push_back(at::fft_rfft(cs, std::nullopt, -1));
    }
    auto P = at::empty({bc * Lout, p.F}, spectra[0].options());
    {
      RECORD_FUNCTION("compact_bilinear::spectral_product", {});
      kern.product(p, bc, spectra, P);
    }
    spectra.clear();
    auto dst = rows.narrow(0, b0 * Lout, bc * Lout);
    if (p.in_dtype == p.acc_dtype)
      at::fft_irfft_out(dst, P, p.d, -1, kUnscaled);
    else
      dst.copy_(at::fft_irfft(P, p.d, -1, kUnscaled));
  });
  return out;
}

std::vector<at::Tensor> fft_backward(const Problem& p, const at::Tensor& grad_out, const FftKernels& kern,
                                     int64_t chunk) {
  // Input k's gradient needs the spectra of the other inputs, not its own: a spectrum is computed
  // where another input's gradient is asked for. A frozen map times a trained vector thus skips the
  // map's Q (a spectrum per location) and its inverse FFTs; a trained map times a frozen vector, the
  // map's sketches and forward FFTs as well.
  auto grads = empty_input_grads(p);
  const int wanted = p.grads_wanted();
  std::array<bool, kMaxInputs> need_spectrum{};
  for (int k = 0; k < p.K; ++k) need_spectrum[k] = wanted > (p.skip_grad[k] ? 0 : 1);
  const int64_t Lout = p.out_map ? p.L : 1;
  for_each_chunk(p, chunk, [&](int64_t b0, int64_t bc) {
    // Per chunk, so an expanded or differently laid out gradient is materialised a chunk at a time.
    auto grows = grad_out.narrow(0, b0, bc).movedim(1, -1).reshape({bc * Lout, p.d}).to(p.acc_dtype).contiguous();
    auto G = at::fft_rfft(grows, std::nullopt, -1);
    std::vector<at::Tensor> spectra(p.K), Q(p.K);  // undefined where not needed
    for (int k = 0; k < p.K; ++k) {
      const int64_t rows = bc * (p.is_map[k] ? p.L : 1);
      if (need_spectrum[k]) {
        auto cs = at::empty({rows, p.d}, grows.options());
        {
          RECORD_FUNCTION("compact_bilinear::sketch", {});
          kern.sketch(p, k, p.x[k].narrow(0, b0, bc), sketch_scale(p, k), cs);
        }
        spectra[k] = at::fft_rfft(cs, std::nullopt, -1);
      }
      if (!p.skip_grad[k]) Q[k] = at::empty({rows, p.F}, G.options());
    }
    {
      RECORD_FUNCTION("compact_bilinear::spectral_product_backward", {});
      kern.product_backward(p, bc, G, spectra, Q);
    }
    spectra.clear();
    for (int k = 0; k < p.K; ++k) {
      if (p.skip_grad[k]) continue;
      auto gcs = at::fft_irfft(Q[k], p.d, -1, kUnscaled);
      auto gx = grads[k].narrow(0, b0, bc);
      RECORD_FUNCTION("compact_bilinear::sketch_backward", {});
      kern.sketch_backward(p, k, gcs, sketch_scale(p, k), gx);
    }
  });
  return grads;
}

// The Gram path (cbp.h). Why a call cannot run it, or "".
static std::string gram_unsupported_reason(const Problem& p) {
  if (p.K != 2) return "it takes exactly two inputs, got " + std::to_string(p.K);
  if (p.out_map) return "its output must have no locations (sum_pool=True, or two vectors)";
  return "";
}

// What 'auto' weighs, in nanoseconds on the development machine's two cores: the FFT path's
// transforms (each input row's sketch and forward FFT and the output's inverse; the backward adds
// the output gradient's transform and an inverse per input row), d log2 d each, against the Gram
// path's GEMM (twice in the backward) and, per pair, M's write and its sketch. Fitted to `python -m
// benchmarks.gram` (docs/benchmarks.md, "The Gram path"; kSketchPerPair refitted after the sketch
// walked input 1's channels in bucket order): on the right side of each of its 16 calls; only the
// ratios matter.
constexpr double kFftPerPointLog = 0.088, kGemmPerMac = 0.0084, kSketchPerPair = 0.85;

static bool gram_is_cheaper(const Problem& p, bool backward) {
  int64_t rows = 0;
  for (int k = 0; k < p.K; ++k) rows += p.B * (p.is_map[k] ? p.L : 1);
  const double d = static_cast<double>(p.d);
  const double transforms = backward ? static_cast<double>(p.B + 2 * rows) : static_cast<double>(rows + p.B);
  const double fft = transforms * d * std::log2(std::max(d, 2.0)) * kFftPerPointLog;
  const double gl = p.is_map[0] && p.is_map[1] ? static_cast<double>(p.L) : 1.0;  // the GEMM's inner size
  const double pairs = static_cast<double>(p.B) * static_cast<double>(p.x[0].size(1)) * static_cast<double>(p.x[1].size(1));
  const double gram = pairs * (gl * kGemmPerMac * (backward ? 2 : 1) + kSketchPerPair);
  return gram < fft;
}

bool gram_choice(const Problem& p, const std::string& algorithm, bool backward, const GramKernels& kern) {
  if (algorithm == "gram") {
    const auto why = gram_unsupported_reason(p);
    TORCH_CHECK_VALUE(why.empty(), "compact_bilinear: algorithm='gram' cannot run this call: ", why,
                      "; use algorithm='auto' or 'fft'");
    return true;
  }
  return algorithm == "auto" && kern.in_auto && gram_unsupported_reason(p).empty() && gram_is_cheaper(p, backward);
}

// Input k of the Gram product, its signs applied: (bc, C_k, L_k) in the input dtype (times +-1 is
// exact in every dtype), or summed over its locations in the compute dtype where the other input is
// a vector (a map times a vector: (sum_l x_l) v^T). make_problem has summed such a map already,
// except in float16 and with COMPACT_BILINEAR_SUM_MAP_FIRST=0; the sum here is safe in both.
static at::Tensor gram_factor(const Problem& p, int k, int64_t b0, int64_t bc) {
  const auto x = p.x[k].narrow(0, b0, bc);
  if (x.size(2) > p.x[1 - k].size(2)) return (x.to(p.acc_dtype) * p.sign[k].view({1, -1, 1})).sum(-1, true);
  return x * p.sign[k].to(x.scalar_type()).view({1, -1, 1});
}

// The batched product A B in the compute dtype. Where both are 16-bit and the device's GEMM takes
// them to a float32 product (kern.gemm_16bit: cuBLAS on the tensor cores), they go in as they are:
// their products are exact in float32 and summed there, as after a conversion. Elsewhere both are
// converted first.
static at::Tensor gram_gemm(const Problem& p, const GramKernels& kern, const at::Tensor& A, const at::Tensor& B) {
  const auto t = A.scalar_type();
  if (kern.gemm_16bit && t == B.scalar_type() && (t == at::kHalf || t == at::kBFloat16))
    return at::bmm(A, B, p.acc_dtype);
  return at::bmm(A.to(p.acc_dtype), B.to(p.acc_dtype));
}

at::Tensor gram_forward(const Problem& p, const GramKernels& kern) {
  auto out = empty_output(p);
  auto acc = p.in_dtype == p.acc_dtype ? out : at::empty(out.sizes(), out.options().dtype(p.acc_dtype));
  for_each_chunk(p, kern.chunk(p), [&](int64_t b0, int64_t bc) {
    const auto M =
        gram_gemm(p, kern, gram_factor(p, 0, b0, bc), gram_factor(p, 1, b0, bc).transpose(1, 2)).contiguous();
    auto o = acc.narrow(0, b0, bc);
    RECORD_FUNCTION("compact_bilinear::gram_sketch", {});
    kern.sketch(p, M, o);
  });
  if (!acc.is_same(out)) out.copy_(acc);
  return out;
}

std::vector<at::Tensor> gram_backward(const Problem& p, const at::Tensor& grad_out, const GramKernels& kern) {
  auto grads = empty_input_grads(p);
  // dM holds the output gradient's values, so it keeps a 16-bit gradient's dtype (for gram_gemm).
  const auto g = grad_out.reshape({p.B, p.d})
                     .to(grad_out.scalar_type() == p.in_dtype ? p.in_dtype : p.acc_dtype)
                     .contiguous();
  const int64_t C0 = p.x[0].size(1), C1 = p.x[1].size(1);
  for_each_chunk(p, kern.chunk(p), [&](int64_t b0, int64_t bc) {
    // Input 0's gradient needs Y, input 1's X.
    const auto X = p.skip_grad[1] ? at::Tensor() : gram_factor(p, 0, b0, bc);
    const auto Y = p.skip_grad[0] ? at::Tensor() : gram_factor(p, 1, b0, bc);
    auto dM = at::empty({bc, C0, C1}, g.options());
    {
      RECORD_FUNCTION("compact_bilinear::gram_sketch_backward", {});
      kern.sketch_backward(p, g.narrow(0, b0, bc), dM);
    }
    // A map summed over its locations gets the same gradient at every location.
    if (!p.skip_grad[0])
      grads[0].narrow(0, b0, bc).copy_(
          (gram_gemm(p, kern, dM, Y) * p.sign[0].view({1, -1, 1})).expand({bc, C0, p.x[0].size(2)}));
    if (!p.skip_grad[1])
      grads[1].narrow(0, b0, bc).copy_(
          (gram_gemm(p, kern, dM.transpose(1, 2), X) * p.sign[1].view({1, -1, 1})).expand({bc, C1, p.x[1].size(2)}));
  });
  return grads;
}

// An on/off switch of the fused plan for A/B timing (fused_ab.py): on unless `name` is "0"; a value
// other than "0" or "1" is an error, not silently on.
static bool env_switch(const char* name) {
  const char* env = std::getenv(name);
  const std::string value = env ? env : "1";
  TORCH_CHECK_VALUE(value == "0" || value == "1", name, " must be '0' or '1', got '", value, "'");
  return value == "1";
}

// The fused kernel's plan: rows per chunk, slots and shared memory, the FFT's largest radix.
static FusedPlan fused_plan(const Problem& p, bool backward, const DeviceLimits& dev) {
  const int64_t smem_limit = dev.smem_per_block;
  int64_t nmap = 0;
  for (int64_t k = 0; k < p.K; ++k) nmap += p.is_map[k];
  const int64_t nvec = p.K - nmap, groups = (nmap + 1) / 2;
  const int64_t L = std::max<int64_t>(p.L, 1);
  const int64_t elem = p.acc_dtype == at::kDouble ? 16 : 8;
  FusedPlan plan;
  // The FFT's largest radix. The forward takes radix 32 (d = 8192 in three passes), whose 32
  // complex values take 64 of the 128 registers a thread may have at two 256-thread blocks per SM
  // in float. The backward takes radix 8 (five passes, 512 threads of 64 registers): on an H100
  // (run 10, benchmarks/fused_ab.py, variants timed in turn) it took 8-10 % less time than with
  // radix 32, twice the warps per SM hiding its loads, while the forward took 13 % more. Double
  // would need all 128 registers for radix 32: radix 8 throughout.
  // COMPACT_BILINEAR_FFT_RADIX=8 or 32 sets both, for A/B timing on a GPU and the host tests.
  const char* radix_env = std::getenv("COMPACT_BILINEAR_FFT_RADIX");
  const std::string radix = radix_env ? radix_env : (p.acc_dtype == at::kDouble || backward ? "8" : "32");
  TORCH_CHECK_VALUE(radix == "8" || radix == "32", "COMPACT_BILINEAR_FFT_RADIX must be '8' or '32', got '", radix, "'");
  plan.max_pass_bits = radix == "8" ? 3 : 5;
  const auto size = [&] { plan.smem_bytes = elem * (fused::kCodeValues + fused::z_size(p.d) + plan.slots * p.F); };
  // Unpooled rows go in pairs whose real outputs share one inverse FFT, where the memory that takes
  // fits; COMPACT_BILINEAR_ROW_PAIRS=0 forces single rows (for A/B timing on a GPU).
  const bool pairs = env_switch("COMPACT_BILINEAR_ROW_PAIRS");
  if (!backward) {
    // Pooled: an accumulator slot. Unpooled: the first row's product of a pair waits in a slot,
    // except with a single map, whose two rows share the forward transform too; else single rows.
    plan.rows_per_chunk = p.out_map ? 2 : 1;  // pooled: sized at the end (sums over locations)
    const int64_t first_slot = p.out_map && nmap > 1 ? 1 : 0;
    plan.slots = (groups > 1 ? 1 : 0) + (p.out_map ? first_slot : 1);
    size();
    if (p.out_map && (plan.smem_bytes > smem_limit || !pairs)) {
      plan.rows_per_chunk = 1;
      plan.slots -= first_slot;
      size();
    }
  } else {
    // Slots: the gradient's spectrum, the maps' outside the last pair, an accumulator per vector.
    // A single map's rows go in pairs that share each transform (fused.h backward_rows_one_map);
    // unpooled, the second row's gradient spectrum takes one more slot, where it fits.
    // Unpooled without vectors a chunk is a row, or a pair; chunks that sum over locations are
    // sized at the end.
    const int64_t last = nmap % 2 ? 1 : 2;
    const auto plan_rows = [&](bool pair) {
      plan.pair_rows = pair;
      plan.rows_per_chunk = pair ? 2 : 1;
      plan.slots = 1 + (nmap - last) + nvec + (pair && p.out_map ? 1 : 0);
      size();
    };
    plan_rows(nmap == 1 && (pairs || !p.out_map));
    if (plan.pair_rows && plan.smem_bytes > smem_limit) plan_rows(false);
  }
  // Slots that do not fit beside Z go to global memory, a workspace of each concurrent thread
  // group's own (in L2 on a GPU: 64 KiB a slot at d = 16384): float at d = 16384 with more than
  // one slot (the backward with a vector input or more than two maps, the pooled forward of more
  // than two maps), double at d = 8192. Those kernels are compiled with radix-8 passes only.
  if (plan.smem_bytes > smem_limit) {
    plan.global_slots = true;
    plan.max_pass_bits = 3;
    plan.smem_bytes = elem * (fused::kCodeValues + fused::z_size(p.d));
  }
  // The forward's prefetch buffer (fused.h PrefetchWord): two halves of the largest map's channel
  // count, for a call with a map (a gather of two maps of a row, or of two rows of a single map),
  // where the slots are in shared memory and the buffer costs no block per SM (at d = 8192 and
  // C = 1024 floats it takes 8 KiB beside 100 KiB, and two blocks still fit an H100's SM; at
  // C = 2048 they would not). COMPACT_BILINEAR_PREFETCH=0 turns it off (fused_ab.py). The backward
  // prefetches nothing: on an H100 (run 11) a buffer filled by cp.async while the rows transform
  // made the canonical backward 2.5 % slower, the copies taking the shared-memory pipe from the
  // radix-8 passes (docs/benchmarks.md). Its buffer holds instead the values of two NCHW maps
  // (each row's channels a stride apart, a 32-byte sector per value; the rows next to each other)
  // that the clusters below read for their rows together before anything else (stage_x; its
  // chunks are a row each: unpooled, two maps, no vectors). COMPACT_BILINEAR_STAGE_INPUTS=0 turns
  // that off (fused_ab.py).
  const bool prefetch = env_switch("COMPACT_BILINEAR_PREFETCH"), stage_x = env_switch("COMPACT_BILINEAR_STAGE_INPUTS");
  // Backward chunks of a row each that clusters may take (sm_90), 8 consecutive rows (without
  // vectors: the chunks that sum over locations are sized below).
  const bool cluster_rows = backward && p.out_map && L > 1 && !plan.global_slots && plan.rows_per_chunk == 1 &&
                            dev.cluster_blocks > 1;
  // The staging's row offsets (the gradient's and each map's, 8 bytes a row) wait in Z: d >= 32.
  const bool two_maps =
      cluster_rows && nmap == 2 && nvec == 0 && 3 * dev.cluster_blocks * 8 <= elem * fused::z_size(p.d);
  bool nchw_maps = two_maps;
  for (int64_t k = 0; k < p.K; ++k) nchw_maps = nchw_maps && p.x[k].stride(2) == 1 && p.x[k].stride(1) != 1;
  const bool buffer = backward ? stage_x && nchw_maps : prefetch && nmap >= 1;
  // The plan's blocks an SM holds at once, by shared memory, registers (a kernel's cap under its
  // launch bounds, fused.h min_blocks_per_sm, not its count), threads and blocks.
  const int64_t threads = fused::group_threads(p.d, plan.max_pass_bits),
                regs = dev.regs_per_sm / (fused::kMaxGroupThreads * fused::min_blocks_per_sm(plan.max_pass_bits));
  const auto blocks_per_sm = [&](int64_t smem) {
    return std::min({dev.smem_per_sm / (smem + dev.smem_reserved_per_block), dev.regs_per_sm / (threads * regs),
                     dev.blocks_per_sm, dev.threads_per_sm / threads});
  };
  if (buffer && !plan.global_slots) {
    int64_t channels = 0;
    for (int64_t k = 0; k < p.K; ++k)
      if (p.is_map[k]) channels = std::max(channels, p.x[k].size(1));
    const int64_t word = std::max<int64_t>(c10::elementSize(p.in_dtype), 4),
                  bytes = (2 * channels * word + 15) / 16 * 16;
    const int64_t with = plan.smem_bytes + bytes;
    if (with <= smem_limit && blocks_per_sm(with) == blocks_per_sm(plan.smem_bytes)) {
      plan.prefetch_half = channels;
      plan.stage_x = backward;
      plan.smem_bytes += bytes;
    }
  }
  // Chunks run over the flat rows of all samples (fused.h forward_chunk, backward_chunk). Those
  // that sum over a sample's locations (the pooled forward and backward, the backward with vector
  // inputs) take as many rows each as make all chunks run at once in the blocks the device holds
  // (at B = 32, L = 49 on an H100: 6 rows, 262 chunks for 264 blocks; chunks of 7 of a sample's
  // 7 x 7 rows made 224, and the most rows a block took, which sets the time, was 7 where 6 would
  // do; inputs that are all vectors, L = 1, take a sample a chunk up to B = 264). Where a single
  // map's rows go in pairs (the forward's always do), an odd count is rounded up: a chunk's odd row
  // would cost a whole transform alone, as much as the pair its chunk then holds.
  // COMPACT_BILINEAR_SUM_ROWS=n sets those chunks' rows (benchmarks/fused_ab.py). nchunks bounds
  // the chunks a sample's locations span, ceil((L - 1) / rows) + 1, each leaving a partial sum.
  if (!p.out_map || (backward && nvec > 0)) {
    const char* rows_env = std::getenv("COMPACT_BILINEAR_SUM_ROWS");
    const std::string text = rows_env ? rows_env : "";
    const bool digits = text.size() <= 9 && text.find_first_not_of("0123456789") == std::string::npos;
    const int64_t forced = digits && !text.empty() ? std::stoll(text) : 0;
    TORCH_CHECK_VALUE(digits && (text.empty() || forced >= 1),
                      "COMPACT_BILINEAR_SUM_ROWS must be a positive integer below 10^9 (or empty), got '", text, "'");
    const int64_t rows = p.B * L, at_once = std::max<int64_t>(dev.sms * blocks_per_sm(plan.smem_bytes), 1);
    const bool paired = backward ? plan.pair_rows : nmap == 1;
    plan.rows_per_chunk = forced >= 1 ? forced : std::max<int64_t>((rows + at_once - 1) / at_once, 1);  // B = 0: 1
    if (forced < 1 && paired && plan.rows_per_chunk % 2) ++plan.rows_per_chunk;
  }
  plan.nchunks = (L + plan.rows_per_chunk - 2) / plan.rows_per_chunk + 1;
  // The unpooled backward reads each row of the output gradient at the gradient's stride. Where that
  // gradient is NCHW (its locations next to each other: fused_driver.h backward), every 4-byte value
  // costs a 32-byte sector, 8 times the row's bytes through L2: on an H100 (run 12, fused_ab.py)
  // forward+backward took 533 us with an NCHW gradient against 417 location-major. Rows read
  // together share the sectors (fused.h stage_cluster_rows, each thread with 8 loads in flight, so
  // d >= 8 x the slices the rows are read in): chunks of a row each in clusters of 8 blocks (sm_90),
  // 8 consecutive rows, each block reading a slice of all 8 rows' values and writing each into the
  // gradient slot of the block whose row it is, and the maps' values (stage_x, above) into its
  // buffer; a single map's row pairs, their two rows, in one slice. COMPACT_BILINEAR_STAGE_GRAD=0
  // turns the gradient's off (fused_ab.py).
  const bool staged = env_switch("COMPACT_BILINEAR_STAGE_GRAD") && backward && p.out_map && L > 1 && !plan.global_slots;
  plan.stage_grad =
      staged && plan.rows_per_chunk == 1 && dev.cluster_blocks > 1 && p.d >= dev.cluster_blocks * fused::kStageLoads;
  // The two maps' input gradients, (B, C, L) contiguous as the backward returns them, take the same
  // sector a value where a block writes its row's (scatter_grad): 2048 a row at C = 1024 x 2. The
  // same clusters write them together (fused.h write_cluster_rows): each block puts its row's values,
  // by channel, into its gradient slot, free after the product, where C_a + C_b <= 2 F values of the
  // accumulation type fit, and after a cluster barrier writes a slice of the channels of all 8 rows,
  // their offsets in Z. COMPACT_BILINEAR_STAGE_INPUT_GRADS=0 turns it off (fused_ab.py).
  const bool stage_dx = env_switch("COMPACT_BILINEAR_STAGE_INPUT_GRADS");
  int64_t map_channels = 0;
  for (int64_t k = 0; k < p.K; ++k) map_channels += p.is_map[k] ? p.x[k].size(1) : 0;
  plan.stage_dx = two_maps && stage_dx && map_channels <= 2 * p.F;
  plan.cluster = plan.stage_grad || plan.stage_x || plan.stage_dx ? static_cast<int>(dev.cluster_blocks) : 0;
  plan.grad_pairs = staged && plan.pair_rows && plan.rows_per_chunk > 1 && p.d >= fused::kStageLoads;
  // Two maps without vectors, in float, run their product (forward and backward) fused with the
  // transforms' passes of span 1 where the last pass has the kernel's unit radix (fused.h
  // unit_product, unit_bits: 16 with radix-32 passes, at d = 256, 512, 4096, 8192 and 16384; 8 with
  // radix 8, at d >= 32): a thread holds a bin's and its mirror's blocks in registers, and the
  // product skips a round trip through shared memory and a barrier on each side.
  // COMPACT_BILINEAR_UNIT_PRODUCT=0 turns it off (fused_ab.py). A single map's product (times its
  // vectors, if any) could run the same way, but took the forward kernels over their registers:
  // 88 bytes of spills instead of 40 in the one-map kernel (20 local accesses in the fused phase),
  // 484 instead of 142 in the kernel without a prefetch buffer (ptxas, sm_90, float). Double's
  // blocks would take a radix-8 kernel's 64 registers alone. The kernels with slots in global memory
  // are compiled without it (fused_kernel.cuh BlockGroup).
  const fused::Schedule sched(fused::ilog2(p.d), plan.max_pass_bits);
  plan.unit_product = env_switch("COMPACT_BILINEAR_UNIT_PRODUCT") && nmap == 2 && nvec == 0 && !plan.global_slots &&
                      p.acc_dtype == at::kFloat && sched.passes >= 2 &&
                      sched.bits(sched.passes - 1) == fused::unit_bits(plan.max_pass_bits);
  return plan;
}

std::string fused_unsupported_reason(const Problem& p, bool backward, const DeviceLimits& dev, FusedPlan& plan) {
  constexpr int64_t max_d = int64_t{1} << fused::kMaxLog2d;  // the passes compiled (fused.h's pass_used)
  if ((p.d & (p.d - 1)) != 0 || p.d > max_d)
    return "the fused kernel needs output_dim to be a power of two <= " + std::to_string(max_d) + ", got " +
           std::to_string(p.d);
  int64_t channels = 0;
  for (int64_t k = 0; k < p.K; ++k) {
    channels += p.x[k].size(1);
    const int64_t stride = p.x[k].stride(1) * static_cast<int64_t>(p.x[k].element_size());
    if (stride >= (int64_t{1} << 32))
      return "the fused kernel addresses channels with a 32-bit stride, got " + std::to_string(stride) +
             " bytes between the channels of input " + std::to_string(k);
  }
  if (channels >= (int64_t{1} << 30))
    return "the fused kernel indexes channels with 32-bit integers, got " + std::to_string(channels) + " in all";
  const int64_t rows = p.B * std::max<int64_t>(p.L, 1);  // the flat rows fused_plan chunks
  if (rows >= (int64_t{1} << 31))
    return "the fused kernel numbers rows (samples x locations) with 32-bit integers, got " + std::to_string(rows);
  plan = fused_plan(p, backward, dev);
  if (plan.smem_bytes > dev.smem_per_block)
    return std::string("the fused ") + (backward ? "backward" : "forward") + " kernel would need " +
           std::to_string(plan.smem_bytes) + " bytes of shared memory for this call (output_dim " +
           std::to_string(p.d) + ", " + std::to_string(p.K) + " inputs), above the limit of " +
           std::to_string(dev.smem_per_block);
  return {};
}

at::Tensor twiddles(const Problem& p) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int64_t, int>, at::Tensor> cache;
  const auto dev = p.x[0].device();
  const auto key = std::make_tuple(static_cast<int>(dev.type()), static_cast<int>(dev.index()), p.d,
                                   static_cast<int>(p.acc_dtype));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  // The fused FFT's table (fused.h tw_slot_offset): by sub-transform size, tw[m/2 + k] =
  // exp(-2 pi i k / m) for k < m/2, m = 2 .. d; then W_d^f for the bin f = bitrev(2t) of each
  // half-spectrum slot t < d/2. Computed in double on the host, then rounded once, so both
  // instances use identical tables.
  const int64_t n = fused::tw_slot_offset(p.d), log2d = fused::ilog2(p.d);
  auto tw = at::empty({n + p.d / 2}, at::kComplexDouble);
  auto* w = tw.data_ptr<c10::complex<double>>();
  const auto expi = [](double angle) { return c10::complex<double>(std::cos(angle), std::sin(angle)); };
  w[0] = 1.0;  // unused
  for (int64_t half = 1; half < n; half *= 2)
    for (int64_t k = 0; k < half; ++k) w[half + k] = expi(-M_PI * static_cast<double>(k) / static_cast<double>(half));
  for (int64_t t = 0; t < p.d / 2; ++t) {
    const int64_t f = fused::bit_reverse(static_cast<uint32_t>(2 * t), static_cast<int>(log2d));
    w[n + t] = expi(-2 * M_PI * static_cast<double>(f) / static_cast<double>(p.d));
  }
  tw = tw.to(p.acc_dtype == at::kDouble ? at::kComplexDouble : at::kComplexFloat).to(dev);
  cache.emplace(key, tw);
  return tw;
}

TORCH_LIBRARY(compact_bilinear, m) {
  m.def(
      "forward(Tensor[] inputs, Tensor[] hash_indices, Tensor[] hash_signs, int output_dim, bool sum_pool, "
      "str algorithm) -> Tensor");
  m.def(
      "backward(Tensor grad_out, Tensor[] inputs, Tensor[] hash_indices, Tensor[] hash_signs, int output_dim, "
      "bool sum_pool, str algorithm, int[]? input_grads=None) -> Tensor[]");
  // What forward or backward would run for these arguments: "fft", or "fused" and its plan.
  m.def(
      "plan(Tensor[] inputs, Tensor[] hash_indices, Tensor[] hash_signs, int output_dim, bool sum_pool, "
      "str algorithm, bool backward) -> str");
}

}  // namespace compact_bilinear

// `import compact_bilinear._C` loads this library, whose static initialisers register the ops.
#include <Python.h>
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "compact_bilinear kernels (torch.ops.compact_bilinear)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
