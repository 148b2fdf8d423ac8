#pragma once
// The fused STCB pipeline, written once for a "thread group": a CUDA block on the device and a
// loop over virtual threads on the host (see DESIGN.md section 5). Every phase is a
// group.for_each(n, body) followed by group.sync(); on the host the loop runs each body in turn,
// which is a valid schedule of the same parallel program, so host tests exercise the kernel's
// indexing and arithmetic. Bodies capture by value (only the kernel's Args by reference): the
// host's strict schedules (cpu/cbp_kernel.cpp) run a body at the next sync(), by which time the
// scope that issued it may have ended.
//
// A thread group takes a chunk of one sample's rows (a pair unpooled, up to 8 pooled); per row
// everything lives in one d-point complex buffer Z plus a few half-spectrum slots (F = d/2 + 1
// complex values each):
//   sketch two inputs into Re/Im of Z -> forward FFT (DIF: natural in, bit-reversed out) ->
//   split the two real spectra and multiply -> Hermitian-filled product back into Z ->
//   inverse FFT (DIT: bit-reversed in, natural out), whose last pass writes the output.
// Working in bit-reversed order between the two transforms means no permutation pass at all.
//
// Shared-memory layout, chosen against bank conflicts (8-byte complex values, 32 four-byte banks):
// Z is padded with one spare value after every 16 (element i lives at i + i/16), which spreads
// the FFT passes of small span over the banks; half spectra are kept in "slot" order (slot
// t < d/2 holds bin bitrev(2t), whose position in the bit-reversed Z is 2t), so neighbouring
// threads touch neighbouring values where natural order put them d/32 apart, all in one bank.
// Unpooled rows go in pairs whose real outputs share one inverse transform (forward_chunk); with
// a single map input (map x vector) two rows' sketches share each forward transform as well.
// Sums over a sample's locations (pooled outputs, vector inputs' gradients) are finished by the
// last of the sample's chunks to end, in the same kernel, with a half-length inverse transform
// (sum_chunks, inverse_real).
// benchmarks/smem_model.py counts the wavefronts: per row of the canonical forward (d = 8192)
// 6.2k with passes up to radix 32 and the output written by the inverse's last pass, 9.7k with
// radix-8 passes, 14.3k with radix-4, 18.4k for single rows and 44.0k for single rows unpadded in
// natural order (Nsight Compute on an H100: 11.7k with radix-8, 17.9k with radix-4).
#include <c10/util/complex.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common/macros.h"
#include "common/spectral.h"

namespace compact_bilinear {
namespace fused {

template <typename T>
using cplx = c10::complex<T>;

CB_HD uint32_t bit_reverse(uint32_t x, int bits) {
  if (bits == 0) return 0;
#if defined(__CUDA_ARCH__)
  return __brev(x) >> (32 - bits);
#else
  uint32_t r = 0;
  for (int i = 0; i < bits; ++i, x >>= 1) r = (r << 1) | (x & 1u);
  return r;
#endif
}

// Where bin -f mod n sits in bit-reversed order when bin f sits at j = bitrev(f), for any n: -f is
// ~f + 1, f with the bits above its lowest set bit flipped, and reversed those are the bits of j
// below its highest. So j ^ (highest bit of j - 1), and 0 stays 0: four instructions on the GPU
// (or, count leading zeros, shift, xor) where two bit reversals and a subtraction took about ten.
CB_HD uint32_t mirror(uint32_t j) {
#if defined(__CUDA_ARCH__)
  const int lz = __clz(j | 1u);
#else
  const int lz = __builtin_clz(j | 1u);
#endif
  return j ^ (0x7fffffffu >> lz);
}

template <typename T>
CB_HD cplx<T> mul_neg_i(cplx<T> z) { return cplx<T>(z.imag(), -z.real()); }
template <typename T>
CB_HD cplx<T> mul_pos_i(cplx<T> z) { return cplx<T>(-z.imag(), z.real()); }

// One position of an input's inverse hash (its channels sorted by bucket, stably), as the fused
// gather reads it: one 8-byte load gives the channel, the bucket and where the bucket's run of
// channels starts and ends. Built with the hash tables (cbp.cpp, gather_codes) when d <= 2^14.
struct alignas(8) GatherCode {
  uint32_t word;  // the bucket, | kRunContinues if the next position has the same bucket,
                  // | kNotHead if the previous one has
  int32_t channel;
};
constexpr uint32_t kRunContinues = 1u << 30, kNotHead = 1u << 31, kBucketMask = kRunContinues - 1;

// Arguments of every fused kernel. Pointers are raw so the struct can be a kernel argument.
template <typename T, typename In>
struct Args {
  int K = 0, log2d = 0;
  int max_pass_bits = 5;           // the plan's largest FFT radix (the group type's kMaxPassBits)
  int64_t B = 0, L = 1, d = 0, F = 0;
  bool out_map = false;
  int64_t rows_per_chunk = 1, nchunks = 1;
  bool pair_rows = false;          // backward, one map: a chunk's rows in pairs (backward_rows_one_map)
  int64_t slots = 0;               // half spectra per thread group beside Z
  bool global_slots = false;       // ... in a workspace in global memory (the launch's), where
                                   // they do not fit in shared memory
  int64_t prefetch_half = 0;       // words per half of the prefetch buffer (PrefetchWord), in shared
                                   // memory after Z and the slots (forward; backward where stage_x); 0: none
  int nmap = 0, nvec = 0;
  int map_ids[kMaxInputs] = {}, vec_ids[kMaxInputs] = {};  // inputs by kind, in input order
  bool is_map[kMaxInputs] = {};
  const In* x[kMaxInputs] = {};
  int64_t C[kMaxInputs] = {}, stride_b[kMaxInputs] = {}, stride_c[kMaxInputs] = {}, stride_l[kMaxInputs] = {};
  const GatherCode* gather[kMaxInputs] = {};  // the inverse hash, one code per sorted position
  const T* sorted_sign[kMaxInputs] = {};
  const cplx<T>* tw = nullptr;   // twiddles: by transform size, then in slot order (tw_slot_offset)
  cplx<T>* vspec = nullptr;      // vector spectra [nvec][B][F] (when maps are present)
  cplx<T>* partial = nullptr;    // per-chunk spectra: forward [B][nchunks][F]; backward [nvec][B][nchunks][F]
  int* arrivals = nullptr;       // per sample, its chunks done so far (zeroed per call; see sum_chunks)
  In* out = nullptr;             // (B, L, d) rows (returned as a (B, d, *S) view) or (B, d)
  const In* grad = nullptr;      // gradient of out, same layout
  int64_t grad_stride_b = 0, grad_stride_j = 0, grad_stride_l = 0;
  int cluster = 0;               // backward: blocks per cluster, a row each, that read their rows'
                                 // values together (stage_cluster_rows), or write them, or 0
  bool stage_grad = false;       // ... the output gradient's, into each group's first slot
  bool stage_x = false;          // ... the two maps' input values, into each group's prefetch buffer
  bool stage_dx = false;         // ... the two maps' gradients, from each group's first slot
                                 // (write_cluster_rows)
  bool grad_pairs = false;       // backward, one map: a row pair's two rows staged together in G0 and G1
  bool unit_product = false;     // two maps, no vectors, float: the product fused with the passes of
                                 // span 1 (unit_product)
  In* grad_x[kMaxInputs] = {};   // (B, C_k, L_k) contiguous; null for a gradient not asked for
};

// ---------------------------------------------------------------------------------------------
// Transforms. z has n = 2^log2n points in the group's buffer; tw is the table for n == d.
//
// A transform is a few passes, each a radix-R butterfly per virtual thread: R values loaded into
// registers, an R-point DFT there (log2(R) radix-2 stages with constant rotations), one twiddle
// per value, R values stored, one barrier. The thread group's type
// sets the largest radix (G::kMaxPassBits = log2 of it): 8 (three stages per pass, five passes
// at d = 8192, as measured on an H100 since commit 033ab34) or 32 (passes of 32, 16 and 16).
// Fewer passes mean fewer trips of Z through shared memory and fewer barriers; more registers per
// thread. The first pass may read its values from anywhere (a `Load`, e.g. a gradient row in
// global memory) and the last may write them anywhere (a `Store`, e.g. the output row), which
// saves a trip through Z each.
//
// Twiddles are grouped by the size m of the sub-transform they serve: tw[m/2 + k] =
// exp(-2 pi i k / m) for k < m/2 and m = 2, 4, ..., n (n values in all). A pass reads tw[s + k]
// for each span s of its stages at consecutive k, so a warp's twiddle loads are coalesced. Indexing one
// n-point table at k << s instead put each thread's load in its own 32-byte sector: measured on
// an H100 (ncu, canonical forward), those loads kept the L1 at 80 % of its throughput.

// The largest transform of the fused kernels: d <= 2^14.
constexpr int kMaxLog2d = 14;

CB_HD constexpr int ilog2(int64_t n) {
  int r = 0;
  while ((int64_t{1} << r) < n) ++r;
  return r;
}

// The twiddle table (cbp.cpp twiddles): tw[m/2 + k] = exp(-2 pi i k / m) for k < m/2 and m = 2,
// 4, .., d (d values, at least 2), then from tw_slot_offset(d) on, W_d^f = exp(-2 pi i f / d) for
// the bin f = bitrev(2t) of each half-spectrum slot t < d/2 (grad_spectrum).
CB_HD constexpr int64_t tw_slot_offset(int64_t d) { return d > 1 ? d : 2; }

// Value i of a strided row at p, its stride in bytes below 2^32 (the plan's and the driver's
// checks): one 32 x 32 -> 64-bit multiply-add on the GPU (IMAD.WIDE.U32), where an index times a
// 64-bit element stride took seven or eight instructions, sign extensions among them (SASS, sm_90).
CB_HD const char* byte_at(const char* p, uint32_t i, uint32_t stride) { return p + uint64_t{i} * stride; }

// Position of element i of Z in the padded buffer, and the buffer's size in complex values. Just
// before Z, kCodeValues more values hold the group's magnitude codes (codes_of): a thread group's
// shared memory is kCodeValues + z_size(d) values, then its slots. Before Z rather than after it,
// their address is Z's with a constant offset: after it, the compiler kept it in two registers
// through the transforms, and the single map's forward spilled in its FFT passes (ptxas, sm_90).
CB_HD int zi(int i) { return i + (i >> 4); }
CB_HD int64_t zi(int64_t i) { return i + (i >> 4); }
CB_HD int64_t z_size(int64_t n) { return n + (n >> 4); }
constexpr int64_t kCodeValues = 2;

// The passes of an n = 2^log2n point transform: as few as the largest radix 2^max_bits allows,
// of balanced sizes (q or q + 1 stages), ordered against bank conflicts. In the padded layout a
// pass of radix 8 or 16 is conflict-free at every span, radix 2 and 4 conflict at spans 4 and 8,
// radix 32 below span 16 (benchmarks/smem_model.py), so radix-8 and radix-16 passes take the
// smallest spans, which come last in the forward (DIF) transform. d = 8192: [2, 2, 3, 3, 3]
// stages with radix 8, [5, 4, 4] with radix 32; each pass then costs n/16 wavefronts per trip.
struct Schedule {
  int passes = 0, q = 0, big = 0;  // `big` passes of q + 1 stages, the others q
  bool small_first = false;
  CB_HD constexpr Schedule() = default;
  CB_HD constexpr Schedule(int log2n, int max_bits) {
    // At n = 1, one pass of radix 1: no stages, but the pass still loads and stores.
    passes = log2n == 0 ? 1 : (log2n + max_bits - 1) / max_bits;
    q = log2n / passes;
    big = log2n % passes;
    small_first = (q + 1 == 3 || q + 1 == 4) && q != 3 && q != 4;
  }
  // Stages of the forward transform's i-th pass (the inverse runs them in reverse order).
  CB_HD constexpr int bits(int i) const {
    return small_first ? (i < passes - big ? q : q + 1) : (i < big ? q + 1 : q);
  }
  CB_HD constexpr int max_bits() const { return big > 0 ? q + 1 : q; }
};

// Schedule(log2n, MaxBits) for a transform of the kernel, without the constructor's division and
// remainder by `passes`, which a run-time log2n made about 25 SASS instructions each (sm_90; a
// transform's set-up took 57-84): each field for every log2n <= kMaxLog2d sits in 4 bits of a
// compile-time 64-bit word, so a field is a shift and a mask.
template <int MaxBits>
struct PackedSchedule {
  enum Field { kPasses, kQ, kBig, kSmallFirst };
  CB_HD static constexpr uint64_t pack(Field f) {
    uint64_t w = 0;
    for (int l = kMaxLog2d; l >= 0; --l) {
      const Schedule s(l, MaxBits);
      const int v = f == kPasses ? s.passes : f == kQ ? s.q : f == kBig ? s.big : s.small_first;
      w = w << 4 | static_cast<uint64_t>(v);
    }
    return w;
  }
  static_assert(Schedule(kMaxLog2d, 1).passes < 16, "a field must fit in 4 bits");
  CB_HD static constexpr Schedule of(int log2n) {
    constexpr uint64_t passes = pack(kPasses), q = pack(kQ), big = pack(kBig), small_first = pack(kSmallFirst);
    const int at = 4 * log2n;
    Schedule s;
    s.passes = static_cast<int>(passes >> at & 15);
    s.q = static_cast<int>(q >> at & 15);
    s.big = static_cast<int>(big >> at & 15);
    s.small_first = (small_first >> at & 1) != 0;
    return s;
  }
  CB_HD static constexpr bool exact() {
    for (int l = 0; l <= kMaxLog2d; ++l) {
      const Schedule a = of(l), b(l, MaxBits);
      if (a.passes != b.passes || a.q != b.q || a.big != b.big || a.small_first != b.small_first) return false;
    }
    return true;
  }
};
static_assert(PackedSchedule<1>::exact() && PackedSchedule<2>::exact() && PackedSchedule<3>::exact() &&
                  PackedSchedule<4>::exact() && PackedSchedule<5>::exact(),
              "the packed schedule must be the constructor's");

// A thread group on the GPU (fused_kernel.cuh): one butterfly of the FFT's largest radix per
// thread, at least a warp and at most kMaxGroupThreads, under launch bounds of kMaxGroupThreads
// and min_blocks_per_sm blocks: 128 registers a thread with radix-32 passes, 64 with radix 8.
// The plan (cbp.cpp) reads them to tell what an SM holds.
constexpr int kMaxGroupThreads = 512;
CB_HD constexpr int min_blocks_per_sm(int max_pass_bits) { return max_pass_bits >= 5 ? 1 : 2; }
// The radix of the passes of span 1 that a product phase runs with (unit_product): 16 in kernels
// of radix-32 passes (d = 8192: 32, 16, 16), 8 in those of radix 8 (d = 8192: 4, 4, 8, 8, 8). The
// plan (cbp.cpp) engages it where a transform's last pass has this radix.
CB_HD constexpr int unit_bits(int max_pass_bits) { return max_pass_bits >= 4 ? 4 : 3; }
CB_HD constexpr int group_threads(int64_t d, int max_pass_bits) {
  const int64_t n = d >> Schedule(ilog2(d), max_pass_bits).max_bits();
  return static_cast<int>(n < 32 ? 32 : n > kMaxGroupThreads ? kMaxGroupThreads : n);
}

// cos(pi m / 16) for m = 0 .. 8.
CB_HD constexpr double cos_pi16(int m) {
  constexpr double c[9] = {1.0,
                           0.98078528040323044913,
                           0.92387953251128675613,
                           0.83146961230254523708,
                           0.70710678118654752440,
                           0.55557023301960222474,
                           0.38268343236508977173,
                           0.19509032201612826785,
                           0.0};
  return c[m];
}

// z times W_{2S}^J = exp(-i pi J / S) (its conjugate when Inv), the constant twiddles inside a
// pass: S <= 16, J < S.
template <int S, int J, bool Inv, typename T>
CB_HD cplx<T> rotate(cplx<T> z) {
  static_assert(S >= 1 && S <= 16 && 16 % S == 0 && J < S, "spans inside a pass are 1 .. 16");
  constexpr int m = J * (16 / S);  // the angle is pi m / 16
  if constexpr (m == 0) {
    return z;
  } else if constexpr (m == 8) {  // -i (forward) or +i (inverse)
    return Inv ? mul_pos_i(z) : mul_neg_i(z);
  } else {
    constexpr T c = static_cast<T>(m < 8 ? cos_pi16(m) : -cos_pi16(16 - m));
    constexpr T s = static_cast<T>(m < 8 ? cos_pi16(8 - m) : cos_pi16(m - 8));
    const T x = z.real(), y = z.imag();
    return Inv ? cplx<T>(x * c - y * s, y * c + x * s) : cplx<T>(x * c + y * s, y * c - x * s);
  }
}

// One radix-2 stage of span S inside a pass's R-point DFT, on a thread's R values: pairs
// (m, m + S) with m mod 2S < S, rotated by the constant W_{2S}^(m mod 2S). Forward (DIF):
// (x, y) -> (x + y, (x - y) w). Inverse (DIT, conjugate rotations): y <- y conj(w), then
// (x + y, x - y).
template <int R, int S, bool Inv, int M = 0, typename T>
CB_HD void stage(cplx<T>* a) {
  if constexpr (M < R) {
    if constexpr (M % (2 * S) < S) {
      const cplx<T> x = a[M];
      if constexpr (Inv) {
        const cplx<T> y = rotate<S, M % (2 * S), true>(a[M + S]);
        a[M] = x + y;
        a[M + S] = x - y;
      } else {
        const cplx<T> y = a[M + S];
        a[M] = x + y;
        a[M + S] = rotate<S, M % (2 * S), false>(x - y);
      }
    }
    stage<R, S, Inv, M + 1>(a);
  }
}

// The R-point DFT of a pass in log2(R) stages: forward spans R/2 down to 1 (natural in,
// bit-reversed out), inverse 1 up to R/2.
template <int R, bool Inv, int S = Inv ? 1 : R / 2, typename T>
CB_HD void dft(cplx<T>* a) {
  if constexpr (S >= 1 && S < R) {
    stage<R, S, Inv>(a);
    dft<R, Inv, Inv ? 2 * S : S / 2>(a);
  }
}

// The twiddles of a pass of smallest span h, for the thread's k < h: value m is multiplied by
// W_{R h}^(k bitrev(m)), after the DFT in the forward (DIF) pass and, conjugated, before it in the
// inverse. That factor is the product, over the set bits j of m, of c[j] = tw[2^j h + k] =
// W_{2^(j+1) h}^k, the twiddle a radix-2 stage of span 2^j h applies to the values it sends to
// bit j (each stage's scalar commutes with the later stages, which mix only values that share
// bit j). Walking the subsets depth first forms each product once from its parent's: R - 1
// multiplies of a value and R - 1 - log2(R) of twiddles (radix 32: 57), where twiddles applied
// stage by stage cost log2(R) R / 2 (80), and no more than log2(R) products are live at once.
template <int M, int J, typename T>
CB_HD void twiddle_subsets(cplx<T>* a, const cplx<T>* c, cplx<T> w) {
  // Node M with product w: the values M + (any subset of bits below J).
  if constexpr (J > 0) {
    twiddle_subsets<M, J - 1>(a, c, w);
    constexpr int child = M + (1 << (J - 1));
    cplx<T> wc = c[J - 1];
    if constexpr (M != 0) wc = w * wc;
    a[child] *= wc;
    twiddle_subsets<child, J - 1>(a, c, wc);
  }
}

template <int R, bool Inv, typename T>
CB_HD void twiddle(cplx<T>* a, const cplx<T>* tw, int h, int k) {
  constexpr int r = ilog2(R);
  cplx<T> c[r > 0 ? r : 1];
  CB_UNROLL
  for (int j = 0; j < r; ++j) c[j] = Inv ? conj(tw[(h << j) + k]) : tw[(h << j) + k];
  twiddle_subsets<0, r>(a, c, cplx<T>(1, 0));
}

// A pass's values: a thread's R values are elements base + m h (m < R) of the transform. Z's own
// access splits the padded position as zi(base + m h) = zi(base) + zi(m h), exact in every pass:
// base is a multiple of R h plus k < h, m h a multiple of h below R h, so base mod 16 + m h mod 16
// < 16 (R and h are powers of two). zi(m h) is the same for every thread, and how it is computed
// depends on the pass's span, so each pass is compiled for one of three kinds:
//   Unit (h = 1: the forward's last pass, the inverse's first): m and zi(m) are constants, and
//     every twiddle is 1, so the pass is the bare DFT;
//   Wide (16 divides h): zi(m h) = m zi(h), a multiply-add per value;
//   Narrow (h = 2, 4 or 8): zi(m h) as it is.
// Compiled as one kind for every span, a pass spent five instructions per value on zi(m h) and
// multiplied by twiddles of 1 at span 1: a radix-16 pass was 443 SASS instructions (sm_90), now
// 362 wide and 216 unit with the twiddles above (python -m benchmarks.sass_passes).
enum class Span { Unit, Wide, Narrow };
CB_HD constexpr Span span_of(int lh) { return lh == 0 ? Span::Unit : lh >= 4 ? Span::Wide : Span::Narrow; }

// Whether a transform of 2^0 to 2^kMaxLog2d points, in passes up to 2^max_bits points, has a pass
// of 2^bits points and kind sp (the same passes in the forward and the inverse). Only those are
// compiled: radix-32 passes, for one, are never narrow.
CB_HD constexpr bool pass_used(int max_bits, int bits, Span sp) {
  for (int log2n = 0; log2n <= kMaxLog2d; ++log2n) {
    const Schedule s(log2n, max_bits);
    int lh = log2n;
    for (int i = 0; i < s.passes; ++i) {
      lh -= s.bits(i);
      if (s.bits(i) == bits && span_of(lh) == sp) return true;
    }
  }
  return false;
}

// Element base + off of a transform; its padded position in Z is zi(base) + zoff.
struct Elem {
  int base, off, zoff;
};

template <typename T>
struct ZLoad {
  const cplx<T>* z;
  CB_HD cplx<T> operator()(Elem e) const { return z[zi(e.base) + e.zoff]; }
};
template <typename T>
struct ZStore {
  cplx<T>* z;
  CB_HD void operator()(Elem e, cplx<T> v) const { z[zi(e.base) + e.zoff] = v; }
};

// A pass stores its values through bound(store): the store itself, or, where it has a bind(), what
// that returns, once per trip: a store that reads something of its own (inverse_to_rows' row
// factors, in shared memory) reads it there once, where a value read in operator() was read again
// for each of the R values, after each global store that might have changed it.
template <class S, class = void>
struct HasBind : std::false_type {};
template <class S>
struct HasBind<S, std::void_t<decltype(std::declval<const S&>().bind())>> : std::true_type {};
template <class S>
CB_HD auto bound(const S& s) {
  if constexpr (HasBind<S>::value) {
    return s.bind();
  } else {
    return s;
  }
}

// One pass of radix R whose smallest span is h = 2^lh (lh = 0 for Span::Unit): R values per
// virtual thread, at base + m h. Index math is 32-bit shifts and masks (n <= 2^14): 64-bit
// division would cost more than the butterfly itself on the GPU.
template <int R, bool Inv, Span Sp, typename T, class G, class Load, class Store>
CB_HD_PASS void fft_pass(const G& g, int n, int lh, const cplx<T>* tw, Load load, Store store) {
  constexpr int r = ilog2(R);
  constexpr bool unit = Sp == Span::Unit;
  g.for_each(n / R, [=](int64_t t64) {
    const int t = static_cast<int>(t64), h = unit ? 1 : 1 << lh, k = unit ? 0 : t & (h - 1),
              base = unit ? t << r : ((t >> lh) << (lh + r)) + k, zh = h + (h >> 4);
    const auto elem = [=](int m) {
      return Elem{base, m * h, unit ? zi(m) : Sp == Span::Wide ? m * zh : zi(m * h)};
    };
    cplx<T> a[R];
    CB_UNROLL
    for (int m = 0; m < R; ++m) a[m] = load(elem(m));
    if constexpr (Inv && !unit) twiddle<R, true>(a, tw, h, k);
    dft<R, Inv>(a);
    if constexpr (!Inv && !unit) twiddle<R, false>(a, tw, h, k);
    const auto st = bound(store);
    CB_UNROLL
    for (int m = 0; m < R; ++m) st(elem(m), a[m]);
  });
  g.sync();
}

template <int R, bool Inv, Span Sp, typename T, class G, class Load, class Store>
CB_HD void fft_pass_if_used(const G& g, int n, int lh, const cplx<T>* tw, Load load, Store store) {
  if constexpr (pass_used(G::kMaxPassBits, ilog2(R), Sp)) fft_pass<R, Inv, Sp>(g, n, lh, tw, load, store);
}

template <int R, bool Inv, typename T, class G, class Load, class Store>
CB_HD void fft_pass_span(const G& g, int n, int lh, const cplx<T>* tw, Load load, Store store) {
  switch (span_of(lh)) {
    case Span::Unit: return fft_pass_if_used<R, Inv, Span::Unit>(g, n, lh, tw, load, store);
    case Span::Wide: return fft_pass_if_used<R, Inv, Span::Wide>(g, n, lh, tw, load, store);
    case Span::Narrow: return fft_pass_if_used<R, Inv, Span::Narrow>(g, n, lh, tw, load, store);
  }
}

// A pass of 2^bits points, up to the group's largest radix.
template <bool Inv, typename T, class G, class Load, class Store>
CB_HD void fft_pass_bits(const G& g, int n, int lh, int bits, const cplx<T>* tw, Load load, Store store) {
  constexpr int mb = G::kMaxPassBits;
  static_assert(mb >= 1 && mb <= 5, "passes are radix 2 to 32 (radix 1 at n = 1)");
  if constexpr (mb >= 5) {
    if (bits == 5) return fft_pass_span<32, Inv>(g, n, lh, tw, load, store);
  }
  if constexpr (mb >= 4) {
    if (bits == 4) return fft_pass_span<16, Inv>(g, n, lh, tw, load, store);
  }
  if constexpr (mb >= 3) {
    if (bits == 3) return fft_pass_span<8, Inv>(g, n, lh, tw, load, store);
  }
  if constexpr (mb >= 2) {
    if (bits == 2) return fft_pass_span<4, Inv>(g, n, lh, tw, load, store);
  }
  if (bits == 1) return fft_pass_span<2, Inv>(g, n, lh, tw, load, store);
  fft_pass_span<1, Inv>(g, n, lh, tw, load, store);
}

// Forward transform (DIF: natural in, bit-reversed out), the first pass reading through `load`.
// Without its last pass, the one of span 1, where `unit_left` (unit_product runs it).
template <typename T, class G, class Load>
CB_HD void fft_forward_dif(const G& g, cplx<T>* z, int64_t n64, int log2n, const cplx<T>* tw, Load load,
                           bool unit_left = false) {
  const int n = static_cast<int>(n64);
  const Schedule s = PackedSchedule<G::kMaxPassBits>::of(log2n);
  int top = log2n;  // stages left; the next pass's largest span is 2^(top - 1)
  for (int i = 0; i < s.passes - (unit_left ? 1 : 0); ++i) {
    top -= s.bits(i);
    if (i == 0)
      fft_pass_bits<false>(g, n, top, s.bits(i), tw, load, ZStore<T>{z});
    else
      fft_pass_bits<false>(g, n, top, s.bits(i), tw, ZLoad<T>{z}, ZStore<T>{z});
  }
}

template <typename T, class G>
CB_HD void fft_forward_dif(const G& g, cplx<T>* z, int64_t n, int log2n, const cplx<T>* tw) {
  fft_forward_dif(g, z, n, log2n, tw, ZLoad<T>{z});
}

// Unnormalised inverse transform (DIT, conjugate twiddles): bit-reversed input, natural output,
// the forward's passes in reverse order, the last writing through `store`. In the last pass
// consecutive threads hold consecutive outputs, so a store to a global row is coalesced.
// Without its first pass, the one of span 1, where `unit_done` (unit_product ran it).
template <typename T, class G, class Store>
CB_HD void fft_inverse_dit(const G& g, cplx<T>* z, int64_t n64, int log2n, const cplx<T>* tw, Store store,
                           bool unit_done = false) {
  const int n = static_cast<int>(n64);
  const Schedule s = PackedSchedule<G::kMaxPassBits>::of(log2n);
  int lh = unit_done ? s.bits(s.passes - 1) : 0;
  for (int i = s.passes - (unit_done ? 2 : 1); i >= 0; --i) {
    if (i == 0)
      fft_pass_bits<true>(g, n, lh, s.bits(i), tw, ZLoad<T>{z}, store);
    else
      fft_pass_bits<true>(g, n, lh, s.bits(i), tw, ZLoad<T>{z}, ZStore<T>{z});
    lh += s.bits(i);
  }
}

template <typename T, class G>
CB_HD void fft_inverse_dit(const G& g, cplx<T>* z, int64_t n, int log2n, const cplx<T>* tw) {
  fft_inverse_dit(g, z, n, log2n, tw, ZStore<T>{z});
}

// Half-spectrum slot t (0 <= t <= d/2) holds bin f = bitrev(2t) for t < d/2 and f = d/2 for
// t = d/2; every half spectrum (slots, vector spectra, partial sums) uses this order. Returns the
// padded positions in Z of bin f and of its mirror d - f: f sits at j = 2t (t < d/2) or 1
// (f = d/2), and d - f at mirror(j).
// In 32 bits (d <= 2^14): 64-bit index math and a third bit reversal had cost 9 of the forward
// product phase's 51 instructions per bin (SASS, sm_90); two bit reversals, a subtraction and the
// selects around them about 11 more than mirror() takes (48 and 39 a bin, now 42 and 34).
struct BinPair {
  int p, q;
};
CB_HD BinPair bins(int64_t t64, int64_t d64) {
  const uint32_t t = static_cast<uint32_t>(t64), j = 2 * t < static_cast<uint32_t>(d64) ? 2 * t : 1;
  return {zi(static_cast<int>(j)), zi(static_cast<int>(mirror(j)))};
}

// Z = a + i b: the spectra of the two real signals at bin f.
template <typename T>
CB_HD void split(cplx<T> zf, cplx<T> zmf, cplx<T>& A, cplx<T>& B) {
  const cplx<T> c = conj(zmf);
  A = (zf + c) * T(0.5);
  B = mul_neg_i(zf - c) * T(0.5);
}

// The inverse of split: Z at bin f and at its mirror from the spectra A, B of two real signals,
// so one inverse transform returns the first signal in Re and the second in Im.
// merge_into works on a bin's value p and its mirror's q wherever they are (`self`: the bin is its
// own mirror, bin 0 or d/2); merge on Z's.
template <typename T>
CB_HD void merge_into(cplx<T>& p, cplx<T>& q, bool self, cplx<T> A, cplx<T> B) {
  const cplx<T> mp = A + mul_pos_i(B), mq = conj(A) + mul_pos_i(conj(B));
  p = mp;
  if (!self) q = mq;
}
template <typename T>
CB_HD void merge(cplx<T>* z, BinPair pq, cplx<T> A, cplx<T> B) {
  merge_into(z[pq.p], z[pq.q], pq.q == pq.p, A, B);
}

// A product phase's work on bin f of a transform in Z: bin(p, q, self, f) with the bin's value p
// and its mirror's q (read both before writing either: at bins 0 and d/2 they are the same value),
// which it may overwrite. unit_product runs the same on registers.
template <typename T, class G, class Bin>
CB_HD void each_bin(const G& g, cplx<T>* z, int64_t F, int64_t d, Bin bin) {
  g.for_each(F, [=](int64_t f) {
    const BinPair pq = bins(f, d);
    bin(z[pq.p], z[pq.q], pq.q == pq.p, f);
  });
  g.sync();
}

// ---------------------------------------------------------------------------------------------
// Balance. Two real signals that share a complex transform (x in Re, y in Im) both take rounding
// error in proportion to the larger, so the smaller one's error, relative to itself, is float's
// times the ratio of their magnitudes: unbalanced, 10^4 cost 8.5e-4 (two 3x3 maps, d = 1024), and
// a signal that is exactly 0 came out as the other's rounding error. So each gather measures the
// largest value of each of its sketches as a code (mag_code: its binary exponent), y goes into the
// transform times up = 2^(code x - code y), exact, which makes the two about equal, and the spectra
// split() returns are multiplied back by `re` and `im` (Balance): 1 and 1 / up, or 0 for a signal
// that is exactly 0, whose spectrum then is exactly 0 as well. The code of a product of spectra is
// the sum of its factors' codes, which balances two products that share an inverse transform the
// same way: two rows' outputs (forward_chunk), or two inputs' gradients, where input a's is the
// output gradient times b's spectrum and b's times a's (backward_rows_maps).

// A value's magnitude as a small integer, in the order of |v|: 0 for 0, else its biased binary
// exponent plus one (subnormals 1); inf and NaN kNonFiniteCode, above every finite value's.
template <typename T>
constexpr int kNonFiniteCode = sizeof(T) == 4 ? 256 : 2048;
// |v|'s bits, ordered as |v| (NaN above inf): a loop over values takes their largest in two
// instructions each, and its code once (code_of_bits).
template <typename T>
using MagBits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
template <typename T>
CB_HD MagBits<T> mag_bits(T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "float or double inside");
  MagBits<T> b;
  memcpy(&b, &v, sizeof(T));
  return b & (~MagBits<T>{0} >> 1);
}
template <typename T>
CB_HD int code_of_bits(MagBits<T> b) {
  constexpr int kMantissa = sizeof(T) == 4 ? 23 : 52;
  return b ? static_cast<int>(b >> kMantissa) + 1 : 0;
}
template <typename T>
CB_HD int mag_code(T v) {
  return code_of_bits<T>(mag_bits(v));
}
template <typename T>
CB_HD int mag_code(cplx<T> v) {
  const int a = mag_code(v.real()), b = mag_code(v.imag());
  return a > b ? a : b;
}

// 2^k, for |k| up to kMaxShift<T> (normal numbers both ways, so scaling by it is exact).
template <typename T>
constexpr int kMaxShift = sizeof(T) == 4 ? 126 : 1022;
template <typename T>
CB_HD T pow2(int k) {
  if constexpr (sizeof(T) == 4) {
    const uint32_t b = static_cast<uint32_t>(k + 127) << 23;
    T r;
    memcpy(&r, &b, 4);
    return r;
  } else {
    const uint64_t b = static_cast<uint64_t>(k + 1023) << 52;
    T r;
    memcpy(&r, &b, 8);
    return r;
  }
}

// A signal's magnitude as a code or a sum of codes (a product's), with whether one of them was 0
// (then the signal is 0) or not finite (then nothing is balanced).
struct Mag {
  int log2 = 0;
  bool zero = false, finite = true;
  template <typename T>
  CB_HD static Mag of(int code) {
    return Mag{code, code == 0, code < kNonFiniteCode<T>};
  }
  CB_HD Mag operator*(Mag o) const { return Mag{log2 + o.log2, zero || o.zero, finite && o.finite}; }
};

// Balance of x (Re) and y (Im) in one transform: y goes in times `up`, and the two come out times
// `re` and `im`.
template <typename T>
struct Balance {
  T up = 1, re = 1, im = 1;
  CB_HD static Balance of(Mag x, Mag y) {
    const bool both = !x.zero && !y.zero && x.finite && y.finite;
    int k = both ? x.log2 - y.log2 : 0;
    k = k < -kMaxShift<T> ? -kMaxShift<T> : k > kMaxShift<T> ? kMaxShift<T> : k;
    return Balance{pow2<T>(k), x.zero ? T(0) : T(1), y.zero ? T(0) : pow2<T>(-k)};
  }
};

// The group's codes, two in each of the kCodeValues values before Z (zi): the last gather's (its
// Re and Im sketch), zeroed with Z (load_sketches), and, `kept` across gathers, two output gradient
// spectra's (grad_spectrum).
template <typename T>
CB_HD int* codes_of(const cplx<T>* z, bool kept = false) {
  return reinterpret_cast<int*>(const_cast<cplx<T>*>(z) - (kept ? 2 : 1));
}
template <typename T>
CB_HD Mag mag_of(const cplx<T>* z, int i, bool kept = false) {
  return Mag::of<T>(codes_of(z, kept)[i]);
}

// The factors of the rows an inverse transform writes (inverse_to_rows), `re` and `im` of their
// Balance: in Z's kept value, where the forward kernels keep no codes, set in the phase before the
// transform and read in its last pass (held in registers through the transform, they had made the
// forward kernels spill: ptxas, sm_90, radix 32).
template <typename T>
CB_HD T* row_factors(cplx<T>* z) {
  return reinterpret_cast<T*>(codes_of(z, true));
}
template <typename T, class G>
CB_HD void set_row_factors(const G& g, cplx<T>* z, Balance<T> out) {
  T* f = row_factors(z);
  const T re = out.re, im = out.im;
  g.for_each(1, [=](int64_t) {
    f[0] = re;
    f[1] = im;
  });
}

// The last gather's balance, from its codes: read where it is used, rather than kept in registers
// through the transforms (where it had made the backward kernel spill: ptxas, sm_90, radix 8).
template <typename T>
CB_HD Balance<T> gathered(const cplx<T>* z) {
  return Balance<T>::of(mag_of(z, 0), mag_of(z, 1));
}

// The forward transform of the last gather's sketches (d points), Im scaled by their balance's up
// on its way into the first pass.
template <typename T, class G>
CB_HD void fft_forward_sketches(const G& g, cplx<T>* z, int64_t d, int log2d, const cplx<T>* tw,
                                bool unit_left = false) {
  const T up = gathered(z).up;
  fft_forward_dif(
      g, z, d, log2d, tw,
      [=](Elem e) {
        const cplx<T> v = z[zi(e.base) + e.zoff];
        return cplx<T>(v.real(), v.imag() * up);
      },
      unit_left);
}

// ---------------------------------------------------------------------------------------------
// Phases.

// Count sketches into Re (part 0) and Im (part 1) of Z from each input's GatherCodes. The position
// that starts a bucket's run of sorted channels sums the run in channel order, as the FFT path's
// gather (spectral.h bucket_sketch) does, so every path's sketches are identical; other positions
// do nothing, and buckets no channel hits keep their 0. The loads form a chain (code and sign, then
// the input value), so a virtual thread takes U consecutive positions of each of its N inputs,
// i U .. i U + U - 1, and issues each step's loads for all of them before it uses any: one chain's
// latency for N sketches (a second loop's loads could not pass the first's stores to Z).
// A run's second channel joins the same chain: a thread also loads the code and sign of the
// position after its last, so each of its positions has the next one's, and a head whose run
// continues loads that channel's value beside its own. Walking the run instead cost a warp two
// more dependent loads (code, then value) for each of its U x N slots where any of its 32
// positions heads a run of two or more channels: with random hashes, C = 1024 and d = 8192, 59 of
// an input's 1024 positions do, and 87 % of the slots waited, one after another. Runs of three or
// more (2.4 per input there) still walk the rest.
// Consecutive positions per thread, rather than positions i + u * C / U, give one address per
// thread and input, U + 1 codes and signs where 2 U were loaded (each position's and its
// neighbour's), and on the GPU 16-byte loads of them (the tables are tensors of their own, so
// aligned); a warp's loads of a table still cover whole sectors, 32 U + 1 consecutive positions.
// With the input values' 32-bit addressing (Sketch::value), SASS, sm_90, radix-32 forward: about
// 259 instructions per loop trip (4 positions of each of 2 inputs, no run walked) where there were
// about 453, 10 loads of codes and signs where there were 32, and 12-13 per step of a walk
// instead of 16-20.

// The forward's prefetch (in calls with a map, where the plan has one: cbp.cpp fused_plan). A
// thread group gathers several sketches in turn (a pooled chunk's rows, an unpooled pair's two
// rows, a row's pairs of maps, a single map's pairs of rows), and each waited on its input values,
// scattered loads from L2 or DRAM, one dependent step after loading its codes. With a prefetch
// buffer in shared memory after Z and the slots, the values of a chunk's next gather are copied
// there (cp.async on the GPU: no registers, no waiting) as soon as the current gather is done,
// while its transform runs; the next gather then waits on its codes alone (the same for every row,
// so L1 or L2 hits) and reads the values from shared memory. The buffer has two halves of
// a.prefetch_half words, the inputs that go to Re and to Im, each indexed by channel. A 16-bit
// value travels in the aligned 4-byte word that holds it (cp.async copies 4, 8 or 16 bytes), at its
// byte offset in memory.
template <typename In>
using PrefetchWord = std::conditional_t<(sizeof(In) >= 4), In, uint32_t>;

// *dst = the word of the value at src, without waiting for it: prefetch_wait() and a barrier
// make it visible to the group.
template <typename In>
CB_HD void copy_async(PrefetchWord<In>* dst, const char* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int kBytes = sizeof(PrefetchWord<In>);
  // A 16-bit value's word starts at the 4-byte boundary below it; a wider value is its own word.
  const uintptr_t from = reinterpret_cast<uintptr_t>(src) & ~uintptr_t{sizeof(In) < 4 ? kBytes - 1 : 0};
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(to), "l"(from), "n"(kBytes));
#else
  if constexpr (sizeof(In) >= 4) {
    memcpy(dst, src, sizeof(In));
  } else {  // the value alone, where the GPU's word has it (little-endian on both)
    uint32_t w = 0;
    memcpy(reinterpret_cast<char*>(&w) + (reinterpret_cast<uintptr_t>(src) & 2), src, sizeof(In));
    *dst = w;
  }
#endif
}

CB_HD void prefetch_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::);
#endif
}

// One sketch to gather: input k at sample b, location l, into `part` of Z.
template <typename T, typename In>
struct Sketch {
  const char* x;        // channel 0's value
  uint32_t sc;          // the channel stride in bytes (below 2^32: fused_unsupported_reason)
  const GatherCode* code;
  const T* sign;
  int C, part;                    // channels; Re or Im
  const PrefetchWord<In>* v;      // the values, prefetched by channel (nullptr: none)
  // Channel `ch`'s value (byte_at). Prefetched, a 16-bit value's address says which half of its
  // word it is.
  template <bool Prefetched>
  CB_HD T value(int32_t ch) const {
    const char* p = byte_at(x, static_cast<uint32_t>(ch), sc);
    if constexpr (!Prefetched) {
      return static_cast<T>(*reinterpret_cast<const In*>(p));
    } else if constexpr (sizeof(In) >= 4) {
      return static_cast<T>(v[ch]);
    } else {
      const uint16_t bits = static_cast<uint16_t>(v[ch] >> (8 * (reinterpret_cast<uintptr_t>(p) & 2)));
      In r;
      memcpy(&r, &bits, sizeof(In));
      return static_cast<T>(r);
    }
  }
};

template <typename T, typename In>
CB_HD Sketch<T, In> sketch_of(const Args<T, In>& a, int k, int part, int64_t b, int64_t l,
                              const PrefetchWord<In>* pv = nullptr) {
  // 32-bit positions: channel counts are below 2^30 (fused_unsupported_reason).
  const In* x = a.x[k] + b * a.stride_b[k] + (a.is_map[k] ? l * a.stride_l[k] : 0);
  return {reinterpret_cast<const char*>(x), static_cast<uint32_t>(a.stride_c[k] * static_cast<int64_t>(sizeof(In))),
          a.gather[k], a.sorted_sign[k], static_cast<int>(a.C[k]), part,
          pv ? pv + part * a.prefetch_half : nullptr};
}

template <typename T, typename In, int N>
struct Sketches {
  Sketch<T, In> s[N];
};

// Codes and signs of positions q0 .. q0 + U of one input (U a power of two, q0 a multiple of U);
// past its C channels, a code that heads nothing. Where all are in range, on the GPU, the first U
// in vector loads (16 bytes; 8 for a radix-8 thread's two float signs; the tables' own tensors
// are aligned), the last alone.
template <int U, typename T, typename In>
CB_HD void load_codes(const Sketch<T, In>& sk, int q0, GatherCode* c, T* v) {
  const GatherCode* code = sk.code + q0;
  const T* sign = sk.sign + q0;
  if (q0 + U < sk.C) {
#if defined(__CUDA_ARCH__)
    static_assert(sizeof(GatherCode) == 8 && (U * sizeof(T)) % 8 == 0, "16- and 8-byte vector loads");
    CB_UNROLL
    for (int u = 0; u < U; u += 2) {
      const uint4 w = *reinterpret_cast<const uint4*>(code + u);
      c[u] = GatherCode{w.x, static_cast<int32_t>(w.y)};
      c[u + 1] = GatherCode{w.z, static_cast<int32_t>(w.w)};
    }
    constexpr int kSignsPerLoad = 16 / sizeof(T) < U ? 16 / sizeof(T) : U;
    CB_UNROLL
    for (int u = 0; u < U; u += kSignsPerLoad) {
      if constexpr (kSignsPerLoad * sizeof(T) == 16) {
        const uint4 w = *reinterpret_cast<const uint4*>(sign + u);
        memcpy(v + u, &w, 16);
      } else {
        const uint2 w = *reinterpret_cast<const uint2*>(sign + u);
        memcpy(v + u, &w, 8);
      }
    }
#else
    for (int u = 0; u < U; ++u) c[u] = code[u], v[u] = sign[u];
#endif
    c[U] = code[U];
    v[U] = sign[U];
  } else {
    CB_UNROLL
    for (int u = 0; u <= U; ++u) {
      const bool in = q0 + u < sk.C;
      c[u] = in ? code[u] : GatherCode{kNotHead, 0};
      v[u] = in ? sign[u] : T(0);
    }
  }
}

template <int U, bool Prefetched, typename T, typename In, int N, class G>
CB_HD void gather_sketches(const G& g, T* zr, int* codes, const Sketches<T, In, N> all) {
  int per = 0;  // threads: U positions of every input each
  for (int s = 0; s < N; ++s) {
    const int n = (all.s[s].C + U - 1) / U;
    per = n > per ? n : per;
  }
  g.for_each(per, [=](int64_t i64) {
    const Sketch<T, In>* sk = all.s;
    const int q0 = static_cast<int>(i64) * U;
    GatherCode c[N][U + 1];  // positions q0 .. q0 + U: the thread's and the next one
    T v[N][U + 1];           // their signs
    CB_UNROLL
    for (int s = 0; s < N; ++s) load_codes<U>(sk[s], q0, c[s], v[s]);
    // The input value of every position, a head's or not (past C, channel 0's, times a sign of 0:
    // every input here has a channel, gather_pair), and the next thread's first: no branch per
    // position. Loading only the heads' values and the second channels of runs made a branch with
    // its convergence barrier of each (SASS, sm_90: 103 of the canonical forward's 447
    // instructions a trip were branches and BSSY/BSYNC).
    T x[N][U + 1];
    CB_UNROLL
    for (int s = 0; s < N; ++s)
      CB_UNROLL
      for (int u = 0; u <= U; ++u) x[s][u] = sk[s].template value<Prefetched>(c[s][u].channel);
    CB_UNROLL
    for (int s = 0; s < N; ++s) {
      MagBits<T> largest = 0;  // of the thread's values of sketch s (Balance)
      CB_UNROLL
      for (int u = 0; u < U; ++u) {
        const uint32_t w = c[s][u].word;
        const bool head = !(w & kNotHead), two = head && (w & kRunContinues);
        const T one = T(0) + v[s][u] * x[s][u];
        // Position u + 1 continues the run, so heads none: v holds its sign.
        T sum = two ? one + v[s][u + 1] * x[s][u + 1] : one;
        if (two && (c[s][u + 1].word & kRunContinues)) {  // the rest of a run of three or more
          int q = q0 + u + 1;
          for (uint32_t wq = c[s][u + 1].word; wq & kRunContinues;) {
            const GatherCode next = sk[s].code[++q];
            sum += sk[s].sign[q] * sk[s].template value<Prefetched>(next.channel);
            wq = next.word;
          }
        }
        if (head) {
          zr[2 * zi(static_cast<int>(w & kBucketMask)) + sk[s].part] = sum;
          const MagBits<T> m = mag_bits(sum);
          largest = m > largest ? m : largest;
        }
      }
      G::max_into(codes + sk[s].part, code_of_bits<T>(largest));
    }
  });
}

// z[0 .. n) = 0. On the GPU two float values per 16-byte store: the loop's 5 instructions per trip
// cover two values instead of one (per row of the canonical forward, 1.36k warp instructions ->
// 0.68k; sass_passes).
template <typename T, class G>
CB_HD void zero(const G& g, cplx<T>* z, int64_t n) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    g.for_each(n / 2, [=](int64_t j) { reinterpret_cast<float4*>(z)[j] = make_float4(0, 0, 0, 0); });
    if (n % 2) g.for_each(1, [=](int64_t) { z[n - 1] = cplx<T>(0, 0); });
    return;
  }
#endif
  g.for_each(n, [=](int64_t j) { z[j] = cplx<T>(0, 0); });
}

// A gather: Z = sketch(input ka at sample b, location l) + i sketch(input kb at sample bb,
// location lb) (kb < 0: imaginary part 0), two inputs of one row or one map input of two rows.
struct GatherAt {
  int ka;
  int64_t b, l;
  int kb;
  int64_t bb, lb;
};

// A thread group's place among those one block takes in turn (the prefetching forward's blocks
// take several, fused_kernel.cuh): whether it is the block's first, and the group (bx, by) it
// takes next (next_bx < 0: none), whose first gather it may prefetch.
struct Turn {
  int64_t next_bx = -1, next_by = 0;
  bool first = true;
};

// A row as (sample, location); the flat rows r = sample * L + location run sample by sample.
struct Row {
  int64_t b, l;
  CB_HD Row next(int64_t L) const { return l + 1 < L ? Row{b, l + 1} : Row{b + 1, 0}; }
};

// Flat rows r0 .. r1 (sample * L + location).
struct RowRange {
  int64_t r0, r1;
};

// The gather of the gi-th pair of maps of row (b, l): its first map in Re, its second, if any, in Im.
template <typename T, typename In>
CB_HD GatherAt maps_of_row(const Args<T, In>& a, int64_t b, int64_t l, int gi) {
  const int kb = 2 * gi + 1 < a.nmap ? a.map_ids[2 * gi + 1] : -1;
  return GatherAt{a.map_ids[2 * gi], b, l, kb, b, l};
}

// Starts copying the input values of gather `at` into the prefetch buffer pv (see PrefetchWord).
template <typename T, typename In, class G>
CB_HD void prefetch_values(const G& g, const Args<T, In>& a, PrefetchWord<In>* pv, GatherAt at) {
  // A loop for each input: one loop over both chose the input's pointers, stride and channel per
  // channel (SASS, sm_90: 20 instructions a channel, of them 5 selects; now about half).
  const auto copy = [&](const Sketch<T, In>& sk, PrefetchWord<In>* dst) {
    const char* x = sk.x;
    const uint32_t sc = sk.sc;
    g.for_each(sk.C, [=](int64_t i) {
      const uint32_t ch = static_cast<uint32_t>(i);
      copy_async<In>(dst + ch, byte_at(x, ch, sc));
    });
  };
  copy(sketch_of(a, at.ka, 0, at.b, at.l, pv), pv);
  if (at.kb >= 0) copy(sketch_of(a, at.kb, 1, at.bb, at.lb, pv), pv + a.prefetch_half);
}

// The sketches of gather `at` into Z (zeroed), their values read from global memory or, where
// Prefetched, from the prefetch buffer pv.
template <bool Prefetched, typename T, typename In, class G>
CB_HD void gather_pair(const G& g, const Args<T, In>& a, cplx<T>* z, GatherAt at, const PrefetchWord<In>* pv) {
  T* zr = reinterpret_cast<T*>(z);
  // The positions a thread takes at once are set by its registers (fused_kernel.cuh BlockGroup).
  // With 128 (radix-32 passes, 256 threads at d = 8192): both sketches in one loop, four positions
  // of each. With 64 (radix 8, 512 threads): two positions of one input per loop. There, two
  // inputs in one loop spilled the backward's loop state (ptxas, sm_90: 56 to 104 bytes), and so
  // did four positions of one (56 to 60 bytes, with each position's 7 registers of values and
  // codes); two positions keep every thread of 512 busy at C = 1024.
  constexpr bool wide = G::kMaxPassBits >= 5;  // 128 registers a thread
  constexpr int U = wide ? 4 : 2;
  // An input without channels sketches to zero and is not gathered at all: the gather reads a
  // value at every position of a thread's, channel 0's past C, and such an input's row may have no
  // memory (an empty tensor's data pointer is null).
  int* codes = codes_of(z);
  const Sketch<T, In> sa = sketch_of(a, at.ka, 0, at.b, at.l, pv);
  const bool has_a = sa.C > 0, has_b = at.kb >= 0 && a.C[at.kb] > 0;
  if (has_a && has_b && wide) {
    gather_sketches<U, Prefetched>(g, zr, codes, Sketches<T, In, 2>{{sa, sketch_of(a, at.kb, 1, at.bb, at.lb, pv)}});
  } else {
    if (has_a) gather_sketches<U, Prefetched>(g, zr, codes, Sketches<T, In, 1>{{sa}});
    if (has_b)
      gather_sketches<U, Prefetched>(g, zr, codes, Sketches<T, In, 1>{{sketch_of(a, at.kb, 1, at.bb, at.lb, pv)}});
  }
}

// The prefetch buffer: after Z and the slots in shared memory (the plan keeps no slots in global
// memory where it has a buffer).
template <typename T, typename In>
CB_HD PrefetchWord<In>* prefetch_buffer(const Args<T, In>& a, cplx<T>* z) {
  return reinterpret_cast<PrefetchWord<In>*>(z + z_size(a.d) + a.slots * a.F);
}

// Gather `at` into Z, and its sketches' codes (zeroed with Z; with a single sketch, Im's stays 0)
// into codes_of(z), for fft_forward_sketches and gathered(). In the prefetching kernels
// (Prefetch: the plan has a buffer), at's values are in the buffer already (prefetch_values), and
// once they have been read the next gather's, next() if `more`, start on their way; in the
// backward, which has no next, where its cluster staged them (stage_cluster_rows).
template <bool Prefetch, typename T, typename In, class G, class Next = std::nullptr_t>
CB_HD void load_sketches(const G& g, const Args<T, In>& a, cplx<T>* z, GatherAt at, bool more = false,
                         Next next = nullptr) {
  zero(g, z, z_size(a.d));
  int* codes = codes_of(z);
  g.for_each(1, [=](int64_t) { codes[0] = codes[1] = 0; });
  if constexpr (Prefetch) prefetch_wait();
  g.sync();
  gather_pair<Prefetch>(g, a, z, at, Prefetch ? prefetch_buffer(a, z) : nullptr);
  g.sync();
  if constexpr (Prefetch && !std::is_same_v<Next, std::nullptr_t>) {
    if (more) prefetch_values(g, a, prefetch_buffer(a, z), next());
  }
}

// A value another thread group wrote in this kernel, read past the L1 (not coherent across SMs):
// on the GPU a 128-byte line of it may sit in the L1 from an earlier read of a neighbour's values.
template <typename T>
CB_HD cplx<T> load_l2(const cplx<T>* p) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    const float2 v = __ldcg(reinterpret_cast<const float2*>(p));
    return cplx<T>(v.x, v.y);
  } else {
    const double2 v = __ldcg(reinterpret_cast<const double2*>(p));
    return cplx<T>(v.x, v.y);
  }
#else
  return *p;
#endif
}

// The n chunks that hold a sample's locations run in separate thread groups, each leaving its half
// spectrum in `src` [n][F]; the last to finish (G::last_to_arrive on the sample's arrival counter)
// sums them, in chunk order whichever group that is, into S, which holds its own (the c-th of the
// n) already (n > 1: hand_on_sums keeps a sample of one chunk to itself). The other chunks' values
// of a bin are loaded kInFlight at a time, all before the first add: written as one loop over the
// chunks, the compiler unrolled it by 4 and loaded the remainder one at a time, so at 7 chunks a
// sample (16 bins a thread) the canonical pooled forward's last chunk waited on about 64 round
// trips to L2 one after another, where batches of 8 take 16 (run 12: the kernel 2.8 % faster).
template <typename T, typename In, class G>
CB_HD void sum_chunks(const G& g, const Args<T, In>& a, cplx<T>* S, const cplx<T>* src, int64_t n, int64_t c) {
  constexpr int kInFlight = 8;
  g.for_each(a.F, [=, &a](int64_t f) {
    cplx<T> s(0, 0);
    for (int64_t i0 = 0; i0 < n; i0 += kInFlight) {
      cplx<T> v[kInFlight];
      CB_UNROLL
      for (int j = 0; j < kInFlight; ++j) {
        const int64_t i = i0 + j;
        v[j] = i < n && i != c ? load_l2(src + i * a.F + f) : S[f];
      }
      CB_UNROLL
      for (int j = 0; j < kInFlight; ++j)
        if (i0 + j < n) s += v[j];
    }
    S[f] = s;
  });
  g.sync();
}

// The real signal x of d points whose half spectrum (slot order) is S, by a d/2-point inverse
// transform instead of a d-point one: with m = d/2, the spectra E and O of the even and odd
// samples are E[k] = (S[k] + S[k + m]) / 2 and O[k] = (S[k] - S[k + m]) W_d^-k / 2 for k < m, and
// S[k + m] = conj(S[m - k]) for a real signal. So Y = 2 (E + i O) in bit-reversed order gives,
// through the unnormalised m-point inverse, d x[2n] in Re and d x[2n + 1] in Im of its element n:
// `store` gets those (the full inverse's scale, then). Position t holds Y[k], k = bitrev(t) (log2 m
// bits), which combines slot t (bin k) and the slot of bin m - k, and W_d^k is the twiddle
// table's slot-order part at t (grad_spectrum's split, run backwards). Pooled outputs and the
// vectors' gradients are real signals of one spectrum each: half the transform they took.
template <typename T, typename In, class G, class Store>
CB_HD void inverse_real(const G& g, const Args<T, In>& a, cplx<T>* z, const cplx<T>* S, Store store) {
  const int d = static_cast<int>(a.d), m = d > 1 ? d / 2 : 1, log2m = a.log2d > 0 ? a.log2d - 1 : 0;
  const cplx<T>* slot_tw = a.tw + tw_slot_offset(a.d);
  g.for_each(m, [=](int64_t t64) {
    const uint32_t t = static_cast<uint32_t>(t64);
    if (d == 1) {  // x[0] = S[0]
      z[0] = S[0];
      return;
    }
    const uint32_t tm = t == 0 ? m : mirror(t);  // bin m - k
    const cplx<T> s = S[t], c = conj(S[tm]);
    z[zi(static_cast<int>(t))] = (s + c) + mul_pos_i(conj(slot_tw[t]) * (s - c));
  });
  g.sync();
  fft_inverse_dit(g, z, m, log2m, a.tw, store);
}

// Forward of the vector inputs' spectra when maps are present: one group per (sample, pair).
template <typename T, typename In, class G>
CB_HD void vector_spectra(const G& g, const Args<T, In>& a, cplx<T>* z, int64_t b, int64_t pair) {
  const int ia = static_cast<int>(2 * pair), ib = ia + 1 < a.nvec ? ia + 1 : -1;
  const GatherAt at{a.vec_ids[ia], b, 0, ib >= 0 ? a.vec_ids[ib] : -1, b, 0};
  load_sketches<false>(g, a, z, at);
  fft_forward_sketches(g, z, a.d, a.log2d, a.tw);
  const Balance<T> bal = gathered(z);
  g.for_each(a.F, [=, &a](int64_t f) {
    const BinPair pq = bins(f, a.d);
    cplx<T> A, B;
    split(z[pq.p], z[pq.q], A, B);
    a.vspec[(ia * a.B + b) * a.F + f] = A * bal.re;
    if (ib >= 0) a.vspec[(ib * a.B + b) * a.F + f] = B * bal.im;
  });
  g.sync();
}

// The product of the vector inputs' spectra at bin f of sample b (a.nvec >= 1).
template <typename T, typename In>
CB_HD cplx<T> vector_product(const Args<T, In>& a, int64_t b, int64_t f) {
  cplx<T> v = a.vspec[b * a.F + f];
  for (int i = 1; i < a.nvec; ++i) v *= a.vspec[(i * a.B + b) * a.F + f];
  return v;
}

// The inverse transform of Z, whose last pass writes output rows from `out` on (location-major
// output: whole contiguous rows): Re as the first row and, for a pair, Im as the second, each
// times its row factor (set_row_factors) and 1 / d.
// A value's address is its row's plus base and off in bytes, unsigned 32-bit (a row pair is at
// most 2^15 values), which ptxas walks as one 64-bit add per value; the int index base + off took
// a shift, a sign extension and two LEAs (sm_90). And Im goes first, to row1, which without a pair
// is row 0 itself: Re's store then overwrites it (one thread, one address: in program order), so
// there is no branch per value on `pair`.
template <typename T, typename In>
struct RowStore {
  char *row0, *row1;
  T s0, s1;  // the row factors over d
  CB_HD void operator()(Elem e, cplx<T> v) const {
    constexpr uint32_t S = sizeof(In);
    const uint64_t at = uint64_t{static_cast<uint32_t>(e.off)} * S;
    *reinterpret_cast<In*>(row1 + static_cast<uint32_t>(e.base) * S + at) = static_cast<In>(v.imag() * s1);
    *reinterpret_cast<In*>(row0 + static_cast<uint32_t>(e.base) * S + at) = static_cast<In>(v.real() * s0);
  }
};
template <typename T, typename In>
struct RowStoreAt {
  In* out;
  int d, log2d;
  bool pair;
  const T* f;
  CB_HD RowStore<T, In> bind() const {
    const T inv_d = pow2<T>(-log2d);  // exactly, without a division
    char* row0 = reinterpret_cast<char*>(out);
    return RowStore<T, In>{row0, pair ? reinterpret_cast<char*>(out + d) : row0, f[0] * inv_d, f[1] * inv_d};
  }
};
template <typename T, typename In, class G>
CB_HD void inverse_to_rows(const G& g, const Args<T, In>& a, cplx<T>* z, In* out, bool pair, bool unit_done = false) {
  const RowStoreAt<T, In> store{out, static_cast<int>(a.d), a.log2d, pair, row_factors(z)};
  fft_inverse_dit(g, z, a.d, a.log2d, a.tw, store, unit_done);
}

// A product phase (each_bin's bin) fused with the transforms' passes of span 1 (a.unit_product,
// where a transform's last pass has radix R = 2^unit_bits): the last pass of the transform the
// product reads and, where the product is merged into Z for the inverse (Merged), the inverse's
// first. Both are R-point DFTs, without twiddles, of
// blocks of R consecutive positions, and a bin's position and its mirror's (bins) lie in mirror
// blocks: for j = R t + r with t >= 1, mirror(j) = R mirror(t) + (r ^ (R - 1)), and blocks 0 and 1
// are their own. So virtual thread u holds blocks t0 = u + (u's highest bit) and t1 = mirror(t0)
// (u = 0: blocks 0 and 1) in registers and finds all the bins of its 2R positions there: the bin
// at each even position and, in block 0, the one at 1 (bin d/2). It runs the forward's last pass on
// both blocks, `bin` on each bin and, Merged, the inverse's first pass, and stores only what the
// inverse reads on: no round trip through Z between the three, and one barrier where there were
// two (three for a merged product). The arithmetic is that of the passes and of each_bin, in the
// same order: the results are bit-identical.
template <bool Merged, typename T, class G, class Bin>
CB_HD void unit_product(const G& g, cplx<T>* z, int d, Bin bin) {
  constexpr int R = 1 << unit_bits(G::kMaxPassBits);
  g.for_each(d / (2 * R), [=](int64_t u64) {
    const uint32_t u = static_cast<uint32_t>(u64);
    const bool u0 = u == 0;
    const uint32_t t0 = u0 ? 0 : u + (u ^ mirror(u)) + 1, t1 = u0 ? 1 : mirror(t0);
    const int b0 = zi(static_cast<int>(R * t0)), b1 = zi(static_cast<int>(R * t1));
    cplx<T> x[R], y[R];
    CB_UNROLL
    for (int m = 0; m < R; ++m) {
      x[m] = z[b0 + zi(m)];
      y[m] = z[b1 + zi(m)];
    }
    dft<R, false>(x);
    dft<R, false>(y);
    const int64_t f0 = R / 2 * static_cast<int64_t>(t0), f1 = R / 2 * static_cast<int64_t>(t1);
    CB_UNROLL
    for (int r = 0; r < R; r += 2) {
      // x[r]'s mirror: x[mirror(r)] in block 0 (itself at r = 0), else y[r ^ (R - 1)]; y[r]'s: in block
      // 1 y[r ^ (R - 1)], else x[r ^ (R - 1)]. Selected by value: a register array indexed at run
      // time would live in local memory.
      const int rm = r ^ (R - 1), r0 = static_cast<int>(mirror(r));  // constants once unrolled
      cplx<T> q = u0 ? x[r0] : y[rm];
      bin(x[r], q, u0 && r == 0, f0 + r / 2);
      if constexpr (Merged) {
        if (u0) {
          if (r != 0) x[r0] = q;
        } else {
          y[rm] = q;
        }
      }
      q = u0 ? y[rm] : x[rm];
      bin(y[r], q, false, f1 + r / 2);
      if constexpr (Merged) {
        if (u0)
          y[rm] = q;
        else
          x[rm] = q;
      }
    }
    if (u0) bin(x[1], x[1], true, d / 2);  // bin d/2
    if constexpr (Merged) {
      dft<R, true>(x);
      dft<R, true>(y);
      CB_UNROLL
      for (int m = 0; m < R; ++m) {
        z[b0 + zi(m)] = x[m];
        z[b1 + zi(m)] = y[m];
      }
    }
  });
  g.sync();
}

// each_bin(bin), or, where `unit` (the plan's unit_product: two maps' product, in float),
// unit_product(bin). A group type without G::kUnitProduct (the kernels with slots in global
// memory, which the plan never gives it) compiles only each_bin.
template <bool Merged, typename T, typename In, class G, class Bin>
CB_HD void product_phase(const G& g, const Args<T, In>& a, cplx<T>* z, bool unit, Bin bin) {
  if constexpr (sizeof(T) == 4 && G::kUnitProduct) {
    if (unit) return unit_product<Merged>(g, z, static_cast<int>(a.d), bin);
  }
  each_bin(g, z, a.F, a.d, bin);
}

// The gather of a single map's rows r and r + 1 (flat, sample * L + location) of a chunk that
// ends at r1: row r in Re, row r + 1, if the chunk has it, in Im.
template <typename T, typename In>
CB_HD GatherAt rows_of_one_map(const Args<T, In>& a, int64_t r, int64_t r1) {
  const int k = a.map_ids[0];
  return GatherAt{k, r / a.L, r % a.L, r + 1 < r1 ? k : -1, (r + 1) / a.L, (r + 1) % a.L};
}

// Forward of rows r0 .. r1 (flat, sample * L + location) when a single input is a map (the others,
// if any, are vectors): two rows' sketches of that map share each forward transform, in Re and Im,
// so a row costs half a forward transform instead of a whole one with Im empty. Unpooled, the
// pair's two products go straight into the inverse that the pair shares, with no slot (shared
// memory: Z alone); pooled, both are added to `acc` in row order. Prefetch: as forward_chunk's,
// the next pair's values, or after the chunk's last pair those of next_chunk(), if `more_chunks`.
template <bool Prefetch, typename T, typename In, class G, class NextChunk>
CB_HD void forward_rows_one_map(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* acc, int64_t r0, int64_t r1,
                                bool more_chunks, NextChunk next_chunk) {
  for (int64_t r = r0; r < r1; r += 2) {
    const bool two = r + 1 < r1;
    const int64_t rb = r / a.L;  // both rows' sample (r1 ends a sample at the latest)
    const auto next = [=, &a] { return r + 2 < r1 ? rows_of_one_map(a, r + 2, r1) : next_chunk(); };
    load_sketches<Prefetch>(g, a, z, rows_of_one_map(a, r, r1), r + 2 < r1 || more_chunks, next);
    fft_forward_sketches(g, z, a.d, a.log2d, a.tw);
    const Balance<T> bal = gathered(z);
    if (!acc) set_row_factors(g, z, bal);
    const T im = bal.im;
    const auto bin = [=, &a](cplx<T>& p, cplx<T>& q, bool self, int64_t f) {
      cplx<T> A, B;
      split(p, q, A, B);
      if (a.nvec) {  // the vectors' product
        const cplx<T> v = vector_product(a, rb, f);
        A *= v;
        B *= v;
      }
      if (acc) {  // A's factor is 1, or 0 where x is 0, and then A is rounding error of B's size
        cplx<T> sum = acc[f] + A;
        if (two) sum += B * im;
        acc[f] = sum;
      } else {  // the two rows' outputs, balanced as their sketches were (same vectors): B as it is
        merge_into(p, q, self, A, two ? B : cplx<T>(0, 0));
      }
    };
    each_bin(g, z, a.F, a.d, bin);
    if (!acc) inverse_to_rows(g, a, z, a.out + r * a.d, two);
  }
}

// The chunks c0 .. c0 + n - 1 of a.rows_per_chunk flat rows that hold sample b's locations.
struct ChunkSpan {
  int64_t c0, n;
};
template <typename T, typename In>
CB_HD ChunkSpan chunks_of_sample(const Args<T, In>& a, int64_t b) {
  const int64_t c0 = b * a.L / a.rows_per_chunk;
  return ChunkSpan{c0, ((b + 1) * a.L - 1) / a.rows_per_chunk - c0 + 1};
}

// Chunk c's `count` sums over its locations of sample b (acc, [count][F]: the pooled product, or
// the vectors' gradient spectra), handed on. Chunks of flat rows may start and end inside a
// sample, so where its locations span several chunks, each leaves its sums in the sample's part of
// a.partial [count][B][nchunks][F] (a.nchunks: the most chunks a sample spans), and the last to
// finish adds the others' to its own in chunk order (sum_chunks). Returns whether this group now
// holds the sample's whole sums: its only chunk, or the last to finish.
template <typename T, typename In, class G>
CB_HD bool hand_on_sums(const G& g, const Args<T, In>& a, cplx<T>* acc, int count, int64_t b, int64_t c) {
  const ChunkSpan s = chunks_of_sample(a, b);
  if (s.n == 1) return true;
  for (int i = 0; i < count; ++i) {
    cplx<T>* dst = a.partial + ((i * a.B + b) * a.nchunks + c - s.c0) * a.F;
    const cplx<T>* src = acc + i * a.F;
    g.for_each(a.F, [=](int64_t f) { dst[f] = src[f]; });
  }
  if (!g.last_to_arrive(a.arrivals + b, static_cast<int>(s.n))) return false;
  for (int i = 0; i < count; ++i)
    sum_chunks(g, a, acc + i * a.F, a.partial + (i * a.B + b) * a.nchunks * a.F, s.n, c - s.c0);
  return true;
}

// Pooled forward: `acc` holds chunk c's sum over its locations of sample b; the group that ends
// with the sample's whole sum (hand_on_sums) writes its output row by one real inverse transform.
template <typename T, typename In, class G>
CB_HD void forward_pooled_sample(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* acc, int64_t b, int64_t c) {
  if (!hand_on_sums(g, a, acc, 1, b, c)) return;
  const T scale = T(1) / static_cast<T>(a.d);
  const bool odd = a.d > 1;  // the odd samples (none at d = 1)
  In* out = a.out + b * a.d;
  inverse_real(g, a, z, acc, [=](Elem e, cplx<T> v) {
    In* x = out + 2 * e.base;  // per thread; `e.off` is the same for the whole warp
    x[2 * e.off] = static_cast<In>(v.real() * scale);
    if (odd) x[2 * e.off + 1] = static_cast<In>(v.imag() * scale);
  });
}

// Where forward_chunk puts the product of a row's last pair of maps, bin by bin: added to the
// pooled accumulator, held for the second row of a pair, or merged into Z for the inverse transform
// with the held one (a pair) or alone.
enum class Sink { Acc, Hold, Merge, MergePair };

// The product phase of pair gi of a row's maps (their spectra in Z; kb < 0: a single map): the
// pairs before it in P (gi > 0), this one's product into P unless it is the last, else times the
// vectors' product into `dst` as S says. The pair's product is taken times `c`: its Balance's re
// and im (the true spectra's product) and, merged as a pair's second row, the rows' balance. With
// Plain (one pair of maps, no vectors: K = 2 maps, the common case) and the sink fixed at compile
// time, the loop does only its own case's work: with them as run-time conditions, the others'
// work was predicated off but still issued: 77 instructions per bin where a pair's product is
// merged and 62 where it is held (SASS, sm_90), now 42 and 34; with the unit passes (`unit`, the
// plan's unit_product, for Plain only) the loop is gone.
template <bool Plain, Sink S, typename T, typename In, class G>
CB_HD void map_product(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* P, cplx<T>* dst, int64_t rb, int gi,
                       int kb, bool last, T c, bool unit) {
  const auto bin = [=, &a](cplx<T>& p, cplx<T>& q, bool self, int64_t f) {
    cplx<T> A, B;
    split(p, q, A, B);
    cplx<T> prod = (Plain || kb >= 0 ? A * B : A) * c;
    if constexpr (!Plain) {
      if (gi > 0) prod *= P[f];
      if (!last) {
        P[f] = prod;
        return;
      }
      if (a.nvec) prod *= vector_product(a, rb, f);
    }
    if constexpr (S == Sink::Acc) {
      dst[f] += prod;
    } else if constexpr (S == Sink::Hold) {
      dst[f] = prod;
    } else if constexpr (S == Sink::MergePair) {
      merge_into(p, q, self, dst[f], prod);
    } else {
      merge_into(p, q, self, prod, cplx<T>(0, 0));
    }
  };
  // Only the plain product runs with the unit passes (the plan's unit_product): compiled for it alone.
  if constexpr (Plain)
    product_phase<S == Sink::Merge || S == Sink::MergePair>(g, a, z, unit, bin);
  else
    each_bin(g, z, a.F, a.d, bin);
}

template <bool Plain, typename T, typename In, class G>
CB_HD void map_product(const G& g, const Args<T, In>& a, Sink sink, cplx<T>* z, cplx<T>* P, cplx<T>* dst, int64_t rb,
                       int gi, int kb, bool last, T c, bool unit = false) {
  switch (sink) {
    case Sink::Acc: return map_product<Plain, Sink::Acc>(g, a, z, P, dst, rb, gi, kb, last, c, unit);
    case Sink::Hold: return map_product<Plain, Sink::Hold>(g, a, z, P, dst, rb, gi, kb, last, c, unit);
    case Sink::MergePair: return map_product<Plain, Sink::MergePair>(g, a, z, P, dst, rb, gi, kb, last, c, unit);
    case Sink::Merge: return map_product<Plain, Sink::Merge>(g, a, z, P, dst, rb, gi, kb, last, c, unit);
  }
}

// Forward for chunk c of the B * L flat rows (b is 0), pooled or not. Unpooled, a pair may end one
// sample and start the next, and no sample's odd row count leaves a block with a single row (at
// B = 32, L = 49: 784 blocks, 3 full waves on an H100, instead of 800, whose last 8 blocks made a
// fourth wave of their own). Pooled, the chunk's rows go sample by sample, each sample's sum
// handed on after its last row in the chunk (forward_pooled_sample), so chunks need not align
// with samples: the plan sizes them so that all run at once (cbp.cpp fused_plan; at B = 32, L = 49
// on an H100, 262 chunks of 6 rows for its 264 blocks, where chunks of 7 of a sample's rows made
// 224 and left 40 idle). Smem: z + [P slot if > 1 map pair] + [acc slot if pooled, or, for
// unpooled rows in pairs of more than one map, the first row's product]. A pair's real outputs
// share one inverse transform: Z = P_first + i P_second gives the first row in Re, the second in Im.
//
// Prefetch: the kernels that copy each gather's input values into the prefetch buffer while the
// gather before it transforms (PrefetchWord), where the plan has a buffer (cbp.cpp fused_plan).
// Kernels of their own, so the others compile as they did: their code in the loops over rows had
// made the radix-32 forward spill 240 bytes instead of 36, in paths that do not prefetch; and one
// for a single map (Maps::One) and one for several (Maps::Several): together, at radix 32, they
// spilled 128 bytes, apart 20 and none (ptxas, sm_90, float). The several maps' kernel is split
// again into unpooled (Out::Rows) and pooled (Out::Pooled): with a sample's sum handed on inside
// the loop over rows, one kernel for both spilled 96 bytes at radix 32 in the unpooled path.
enum class Maps { Any, One, Several };
enum class Out { Any, Rows, Pooled };
template <bool Prefetch, Maps M, Out O, typename T, typename In, class G>
CB_HD void forward_chunk(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* slots, int64_t /*b = 0*/,
                         int64_t c, Turn turn = {}) {
  const int groups = (a.nmap + 1) / 2;
  cplx<T>* P = groups > 1 ? slots : nullptr;
  cplx<T>* spare = slots + (groups > 1 ? a.F : 0);  // the plan's second kind of slot, if any
  const bool pooled = O == Out::Any ? !a.out_map : O == Out::Pooled;  // known at compile time but in Out::Any
  cplx<T>* acc = pooled ? spare : nullptr;
  cplx<T>* first = a.out_map && a.rows_per_chunk == 2 && a.nmap > 1 ? spare : nullptr;
  const bool one_map = M == Maps::Any ? a.nmap == 1 : M == Maps::One;
  // Chunk c as flat row indices r = sample * L + location, r0 .. r1.
  const auto rows_of = [&a](int64_t c) {
    const int64_t r0 = c * a.rows_per_chunk, rows = a.B * a.L;
    return RowRange{r0, r0 + a.rows_per_chunk < rows ? r0 + a.rows_per_chunk : rows};
  };
  // Where the rows from r on stop, in a chunk that ends at r1: at the end of r's sample. Pooled,
  // the sums are a sample's; unpooled, rows that share a transform (a single map's two rows, a
  // pair's outputs) must be of one sample, so that a NaN or inf stays in its sample as on the FFT
  // path: at an odd L, a flat pair can hold a sample's last location and the next one's first,
  // and then runs as two single rows (at B = 32, L = 49: 16 of the 784 pairs).
  const auto sample_end = [&a](int64_t r, int64_t r1) {
    const int64_t e = (r / a.L + 1) * a.L;
    return r1 < e ? r1 : e;
  };
  const RowRange own = rows_of(c);
  const int64_t r0 = own.r0, r1 = own.r1;
  const auto at = [&a](Row rl, int gi) { return maps_of_row(a, rl.b, rl.l, gi); };
  // The first gather of chunk c: prefetched by the group before, if this block had one.
  const auto first_of = [&a, &at, &rows_of, &sample_end, one_map](int64_t c) {
    const RowRange rr = rows_of(c);
    return one_map ? rows_of_one_map(a, rr.r0, sample_end(rr.r0, rr.r1)) : at(Row{rr.r0 / a.L, rr.r0 % a.L}, 0);
  };
  const auto next_chunk = [=] { return first_of(turn.next_by); };
  if constexpr (Prefetch) {
    if (turn.first) prefetch_values(g, a, prefetch_buffer(a, z), first_of(c));
  }
  const auto zero_acc = [=, &a, &g] {
    g.for_each(a.F, [=, &a](int64_t f) { acc[f] = cplx<T>(0, 0); });
    g.sync();
  };
  if (one_map) {
    for (int64_t s0 = r0; s0 < r1;) {  // a sample's rows at a time
      const int64_t s1 = sample_end(s0, r1);
      if (pooled) zero_acc();
      forward_rows_one_map<Prefetch>(g, a, z, acc, s0, s1, s1 < r1 || turn.next_bx >= 0, [=, &a] {
        return s1 < r1 ? rows_of_one_map(a, s1, sample_end(s1, r1)) : next_chunk();
      });
      if (pooled) forward_pooled_sample(g, a, z, acc, s0 / a.L, c);
      s0 = s1;
    }
  } else {
    const bool pair = first != nullptr && r1 - r0 == 2 && sample_end(r0, r1) == r1;
    const bool plain = groups == 1 && a.nvec == 0;  // two maps (groups == 1 and nmap > 1)
    const bool unit = plain && a.unit_product;  // the product fused with the unit passes (unit_product)
    if (pooled) zero_acc();
    Mag held;  // the magnitude of a pair's first row (its maps' product; the vectors are the second's)
    for (int64_t r = r0; r < r1; ++r) {
      const Row rl{r / a.L, r % a.L};
      const bool hold = pair && r == r0;  // the first row of a pair: keep its product in `first`
      const Sink sink = pooled ? Sink::Acc : hold ? Sink::Hold : pair ? Sink::MergePair : Sink::Merge;
      cplx<T>* dst = pooled ? acc : first;
      Mag row;  // the maps' product so far
      for (int gi = 0; gi < groups; ++gi) {
        const GatherAt cur = at(rl, gi);
        // The next gather: this row's next pair of maps, the next row's first, or the block's next chunk's first.
        const auto next = [=, &a] {
          if (gi + 1 < groups) return at(rl, gi + 1);
          return r + 1 < r1 ? at(rl.next(a.L), 0) : next_chunk();
        };
        const bool more = gi + 1 < groups || r + 1 < r1 || turn.next_bx >= 0;
        load_sketches<Prefetch>(g, a, z, cur, more, next);
        fft_forward_sketches(g, z, a.d, a.log2d, a.tw, unit);
        const int kb = cur.kb;
        const int64_t rb = rl.b;
        const Mag x = mag_of(z, 0), y = mag_of(z, 1);
        const Balance<T> in = Balance<T>::of(x, y);
        row = row * x * (kb >= 0 ? y : Mag{});
        const bool last = gi == groups - 1;
        T c = kb >= 0 ? in.re * in.im : in.re;
        if (last && !pooled && !hold) {  // the output's balance: a row alone, or a pair's second against `held`
          const Balance<T> out = Balance<T>::of(pair ? held : row, row);
          set_row_factors(g, z, out);
          c *= out.up;  // 1 for a row alone
        }
        if (plain)
          map_product<true>(g, a, sink, z, P, dst, rb, gi, kb, last, c, unit);
        else
          map_product<false>(g, a, sink, z, P, dst, rb, gi, kb, last, c);
      }
      held = row;
      if (!pooled && !hold) inverse_to_rows(g, a, z, a.out + (pair ? r0 : r) * a.d, pair, unit);
      // Pooled: the sample's last row in this chunk hands its sum on.
      if (pooled && (rl.l + 1 == a.L || r + 1 == r1)) {
        forward_pooled_sample(g, a, z, acc, rl.b, c);
        if (r + 1 < r1) zero_acc();
      }
    }
  }
}

// grad_x[k][b, i, l] = sign[i] * grad_cs[h[i]] for input k, with grad_cs = part `part` (0: Re,
// 1: Im) of Z times f / d (f: a Balance's factor). Like the gather, one input per loop and its
// channels in sorted order from the GatherCodes: a map's gradient values lie L apart, so its
// stores take a sector each in either order, and a vector's (once per sample) are few. SASS,
// sm_90: 26 instructions per channel, 47 while each channel chose its input and read a 64-bit
// hash (sass_passes).
// With Half, grad_cs is inverse_real's output: value j in part j % 2 of Z's element j / 2.
// With a slot (the cluster's blocks writing their rows together, a.stage_dx), the values go to
// slot[channel] instead, in T, and write_cluster_rows writes them. Nothing for an input whose
// gradient is not asked for (a null grad_x).
template <bool Half = false, typename T, typename In, class G>
CB_HD void scatter_grad(const G& g, const Args<T, In>& a, const T* zr, int k, int part, int64_t b, int64_t l,
                        T f = 1, T* slot = nullptr) {
  if (!a.grad_x[k]) return;
  const T scale = f * pow2<T>(-a.log2d);
  const int64_t Lk = a.is_map[k] ? a.L : 1;
  In* gx = a.grad_x[k] + b * a.C[k] * Lk + (a.is_map[k] ? l : 0);
  const GatherCode* code = a.gather[k];
  const T* sign = a.sorted_sign[k];
  const auto value = [=](int64_t q, GatherCode c) {
    const int j = static_cast<int>(c.word & kBucketMask);
    return sign[q] * zr[Half ? 2 * zi(j >> 1) + (j & 1) : 2 * zi(j) + part] * scale;
  };
  if (slot) {
    g.for_each(a.C[k], [=](int64_t q) {
      const GatherCode c = code[q];
      slot[c.channel] = value(q, c);
    });
  } else {
    g.for_each(a.C[k], [=](int64_t q) {
      const GatherCode c = code[q];
      gx[c.channel * Lk] = static_cast<In>(value(q, c));
    });
  }
}

// The gradients of input ka at (b, l) from Re of Z and, if kb >= 0, of input kb at (bb, lb) from
// Im (load_sketches' counterpart: two inputs of one row, or one map input of two rows), times the
// factors re and im of their Balance. With a slot, ka's C values go there by channel, then kb's.
template <typename T, typename In, class G>
CB_HD void scatter_grads(const G& g, const Args<T, In>& a, const cplx<T>* z, int ka, int64_t b, int64_t l, int kb,
                         int64_t bb, int64_t lb, Balance<T> bal, T* slot = nullptr) {
  const T* zr = reinterpret_cast<const T*>(z);
  scatter_grad(g, a, zr, ka, 0, b, l, bal.re, slot);
  if (kb >= 0) scatter_grad(g, a, zr, kb, 1, bb, lb, bal.im, slot ? slot + a.C[ka] : nullptr);
  g.sync();
}

// Values j0 .. j0 + len - 1 of q rows (q a power of two), row k's value j at src(k, row[k]) + j step
// (row[k] < 0: past the last row, none), each handed to put(k, row[k], j, value, its address). Thread e of
// the group takes row k = e mod q and kStageLoads of its values a fixed step apart, all loads in
// flight before their stores (one at a time, a thread waited for each): where the rows lie next to
// each other, a warp's 32 loads then cover the q rows at 32 / q consecutive j, the q values of each
// j in one or two 32-byte sectors, where a row's own loads took a sector per value. Every load has
// its bound, also where len is a multiple of kStageLoads (a gradient row's slice): without them
// there (59 SASS instructions a trip of 8 float values on sm_90 instead of 164), the radix-8
// backward spilled 52 bytes, 38 local accesses, some in its product and scatter loops; with
// them, none.
constexpr int kStageLoads = 8;
template <class G, class Src, class Put>
CB_HD void stage_rows(const G& g, const int64_t* row, int q, int j0, int len, Src src, int64_t step, Put put) {
  using V = std::remove_cv_t<std::remove_reference_t<decltype(*src(0, int64_t{0}))>>;
  const int lq = ilog2(q), jn = (len + kStageLoads - 1) / kStageLoads;
  g.for_each(static_cast<int64_t>(jn) << lq, [=](int64_t e) {
    const int k = static_cast<int>(e) & (q - 1), j = static_cast<int>(e) >> lq;
    const int64_t at = row[k];
    if (at < 0) return;
    const V* p = src(k, at) + (j0 + j) * step;
    V v[kStageLoads] = {};
    CB_UNROLL
    for (int i = 0; i < kStageLoads; ++i)
      if (j + i * jn < len) v[i] = p[i * jn * step];
    CB_UNROLL
    for (int i = 0; i < kStageLoads; ++i)
      if (j + i * jn < len) put(k, at, j0 + j + i * jn, v[i], p + i * jn * step);
  });
}

// row[k] = the offset of flat row first + k (sample * L + location) in a tensor of sample stride sb
// and location stride sl, for k < q; -1 past the last row. Rows in 32 bits (the plan keeps B * L
// below 2^31): a 64-bit division is a call on the GPU, and with a second one in the kernel (the
// gradients' writes, write_cluster_rows) the radix-8 backward spilled 84 bytes (ptxas, sm_90).
template <typename T, typename In, class G>
CB_HD void row_offsets(const G& g, const Args<T, In>& a, int64_t* row, int first, int q, int64_t sb, int64_t sl) {
  g.for_each(q, [=, &a](int64_t k) {
    const int r = first + static_cast<int>(k), L = static_cast<int>(a.L);
    row[k] = r < static_cast<int>(a.B * a.L) ? r / L * sb + r % L * sl : -1;
  });
}

// Channels c0 .. c1 - 1 of C, slice `slice` of `slices` (their sizes differ by one at most, and some
// are empty where C < slices): what a cluster's block reads or writes of each map's rows.
struct ChannelSlice {
  int c0, c1;
};
CB_HD ChannelSlice channel_slice(int64_t C, int slice, int slices) {
  return {static_cast<int>(C * slice / slices), static_cast<int>(C * (slice + 1) / slices)};
}

// The output gradient's flat rows `first` .. `first` + q - 1, slice `slice` of `slices` of their d
// values, each row's values in T into dst(k), a gradient slot where grad_spectrum reads it: of group
// first + k, where a cluster's q groups read their rows together, a slice each (stage_cluster_rows),
// or of the one group whose row pair it is (a.grad_pairs, q = 2, one slice). The rows' offsets wait
// in Z, which the group is not using; the plan stages rows only where d >= kStageLoads slices
// (cbp.cpp fused_plan).
template <typename T, typename In, class G, class Dst>
CB_HD void stage_grad_values(const G& g, const Args<T, In>& a, const int64_t* row, int q, int slice, int slices,
                             Dst dst) {
  const int len = static_cast<int>(a.d) / slices;
  const In* const src = a.grad;
  stage_rows(g, row, q, slice * len, len, [=](int, int64_t at) { return src + at; }, a.grad_stride_j,
             [=](int k, int64_t, int j, In v, const In*) { dst(k)[j] = static_cast<T>(v); });
}
template <typename T, typename In, class G, class Dst>
CB_HD void stage_grad_rows(const G& g, const Args<T, In>& a, cplx<T>* z, int first, int q, int slice, int slices,
                           Dst dst) {
  int64_t* const row = reinterpret_cast<int64_t*>(z);
  row_offsets(g, a, row, first, q, a.grad_stride_b, a.grad_stride_l);
  g.sync();
  stage_grad_values(g, a, row, q, slice, slices, dst);
}

// The values of a cluster's q rows, flat rows `first` .. `first` + q - 1, a row each of its groups,
// that the backward reads together, slice `slice` of `slices` of them: the output gradient's rows
// (a.stage_grad) into grad(k), group first + k's first slot, and the input values of the two maps
// (a.stage_x: channels at a stride, rows next to each other, as in an NCHW map), slice `slice` of
// their channels, into the halves of x(k), group first + k's prefetch buffer, where its gather
// reads them (gather_pair, Prefetched) as the forward's reads what cp.async copied there: a 16-bit
// value at its place in the 4-byte word that holds it in memory. On the GPU a cluster's groups are
// its blocks, grad(k) and x(k) block k's shared memory (fused_kernel.cuh); the host emulates them
// (cpu/cbp_kernel.cpp HostLaunch).
template <typename T, typename In, class G, class GradDst, class XDst>
CB_HD void stage_cluster_rows(const G& g, const Args<T, In>& a, cplx<T>* z, int first, int q, int slice,
                              int slices, GradDst grad, XDst x) {
  int64_t* const row = reinterpret_cast<int64_t*>(z);  // offsets: the gradient's rows, then each map's
  if (a.stage_grad) row_offsets(g, a, row, first, q, a.grad_stride_b, a.grad_stride_l);
  for (int m = 0; m < (a.stage_x ? 2 : 0); ++m) {
    const int k = a.map_ids[m];
    row_offsets(g, a, row + (1 + m) * q, first, q, a.stride_b[k], a.stride_l[k]);
  }
  g.sync();
  if (a.stage_grad) stage_grad_values(g, a, row, q, slice, slices, grad);
  for (int m = 0; m < (a.stage_x ? 2 : 0); ++m) {
    const int k = a.map_ids[m];
    const int64_t half = m * a.prefetch_half;
    const ChannelSlice cs = channel_slice(a.C[k], slice, slices);
    const In* const src = a.x[k];
    stage_rows(g, row + (1 + m) * q, q, cs.c0, cs.c1 - cs.c0, [=](int, int64_t at) { return src + at; }, a.stride_c[k],
               [=](int r, int64_t, int c, In v, const In* from) {
      PrefetchWord<In>* w = x(r) + half + c;
      if constexpr (sizeof(In) >= 4) {
        *w = v;
      } else {  // where Sketch::value<true> looks for it
        memcpy(reinterpret_cast<char*>(w) + (reinterpret_cast<uintptr_t>(from) & 2), &v, sizeof(In));
      }
    });
  }
}

// The two maps' input gradients of a cluster's q rows, flat rows `first` .. `first` + q - 1, a row
// each of its groups, whose values group first + k left in src(k), its gradient slot, by channel
// (scatter_grads with a slot: map 0's C_0 values, then map 1's): slice `slice` of `slices` of each
// map's channels, for all q rows. The gradients are (B, C, L) contiguous, so a warp's stores cover
// 8 rows at 4 channels, the 8 values of a channel next to each other, in one or two 32-byte
// sectors where a group writing its own row took a sector per value. The rows' offsets wait in Z,
// which the group is done with. On the GPU src(k) is block k's shared memory, read between two
// cluster barriers (fused_kernel.cuh); the host emulates it (cpu/cbp_kernel.cpp HostLaunch).
template <typename T, typename In, class G, class Src>
CB_HD void write_cluster_rows(const G& g, const Args<T, In>& a, cplx<T>* z, int first, int q, int slice,
                              int slices, Src src) {
  int64_t* const row = reinterpret_cast<int64_t*>(z);  // each map's gradient's offsets
  for (int m = 0; m < 2; ++m) {
    const int k = a.map_ids[m];
    row_offsets(g, a, row + m * q, first, q, a.C[k] * a.L, 1);
  }
  g.sync();
  for (int m = 0; m < 2; ++m) {
    const int k = a.map_ids[m];
    if (!a.grad_x[k]) continue;  // not asked for: scatter_grad left no values
    const int64_t L = a.L, off = m ? a.C[a.map_ids[0]] : 0;
    const ChannelSlice cs = channel_slice(a.C[k], slice, slices);
    In* const gx = a.grad_x[k];
    stage_rows(g, row + m * q, q, cs.c0, cs.c1 - cs.c0, [=](int r, int64_t) -> const T* { return src(r) + off; }, 1,
               [=](int, int64_t at, int c, T v, const T*) { gx[at + c * L] = static_cast<In>(v); });
  }
}

// Spectrum of the output gradient at (b, l) into slot G. The gradient row g is real, so it takes a
// d/2-point transform instead of a d-point one: z[n] = g[2n] + i g[2n + 1] has the spectrum
// E + i O of the even and odd samples (split, as for two real signals), and G[f] = E[f] + W_d^f O[f]
// for f < d/2, G[d/2] = E[0] - O[0]. Slot t < d/2 holds bin f = bitrev(2t) (log2 d bits) =
// bitrev(t) (log2 d - 1 bits), which the half transform leaves at position t itself, and W_d^f
// comes from the twiddle table's slot-order part, read at consecutive t. The first pass reads the
// gradient row from global memory. (At d = 8192, radix 32: a 4096-point transform of 7.5k warp
// instructions instead of 15.8k, per row of the backward; sass_passes.)
// With `code` (one of codes_of(z)), also the code of G's largest value there, reset (to 0) in the
// first pass: after the last barrier, *code is G's. Where `staged`, the row is in G already
// (stage_grad_rows), read from there by the first pass before G is written.
template <typename T, typename In, class G>
CB_HD void grad_spectrum(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* Gs, int64_t b, int64_t l,
                         bool staged, int* code = nullptr) {
  const char* src = reinterpret_cast<const char*>(a.grad + b * a.grad_stride_b + l * a.grad_stride_l);
  // The stride in bytes, below 2^32 (fused_driver.h backward), for byte_at.
  const uint32_t sjb = static_cast<uint32_t>(a.grad_stride_j * static_cast<int64_t>(sizeof(In)));
  const int d = static_cast<int>(a.d), m = d > 1 ? d / 2 : 1, log2m = a.log2d > 0 ? a.log2d - 1 : 0;
  if (code) g.for_each(1, [=](int64_t) { *code = 0; });
  const cplx<T>* row = staged ? Gs : nullptr;  // g[2n] + i g[2n + 1] at n
  fft_forward_dif(g, z, m, log2m, a.tw, [=](Elem e) {
    if (row) return row[e.base + e.off];
    const char* p = byte_at(src, 2 * static_cast<uint32_t>(e.base + e.off), sjb);
    return cplx<T>(static_cast<T>(*reinterpret_cast<const In*>(p)),
                   d > 1 ? static_cast<T>(*reinterpret_cast<const In*>(p + sjb)) : T(0));
  });
  const cplx<T>* slot_tw = a.tw + tw_slot_offset(a.d);
  g.for_each(a.F, [=](int64_t t64) {
    const uint32_t t = static_cast<uint32_t>(t64);
    cplx<T> v;
    if (t == static_cast<uint32_t>(d / 2)) {  // bin d/2 (at d = 1 the only bin, g[0])
      v = cplx<T>(z[0].real() - z[0].imag(), T(0));
    } else {
      cplx<T> E, O;
      split(z[zi(static_cast<int>(t))], z[zi(static_cast<int>(mirror(t)))], E, O);
      v = E + slot_tw[t] * O;
    }
    Gs[t] = v;
    if (code) G::max_into(code, mag_code(v));
  });
  g.sync();
}

// Vector input u's gradient spectrum at bin f is h conj(W_u), with h = G conj(the maps' product) and
// W_u the other vectors' product, which does not change with the location: adds it to each
// vector's accumulator and returns the product of all the vectors' spectra (1 without vectors).
template <typename T, typename In>
CB_HD cplx<T> add_vector_grads(const Args<T, In>& a, cplx<T>* vslot, int64_t b, int64_t f, cplx<T> h) {
  const auto vspec = [&](int u) { return a.vspec[(u * a.B + b) * a.F + f]; };
  if (a.nvec == 1) {
    vslot[f] += h;
    return vspec(0);
  }
  cplx<T> V(1, 0);  // the vectors before u, then all of them
  for (int u = 0; u < a.nvec; ++u) {
    cplx<T> W = V;  // the vectors other than u
    for (int w = u + 1; w < a.nvec; ++w) W *= vspec(w);
    vslot[u * a.F + f] += h * conj(W);
    V *= vspec(u);
  }
  return V;
}

// Backward of locations l0 .. l1 of sample b when a single input is a map (the others, if any, are
// vectors), two rows at a time where the plan pairs them (a.pair_rows), as forward_rows_one_map
// does: the pair's map sketches share one forward transform, in Re and Im, and its two real
// gradients one inverse. A row then costs one transform plus its gradient's spectrum (half a
// transform, unpooled; pooled, one per chunk) instead of two. Unpooled, the second row's gradient
// spectrum takes slot G1. The vectors' gradients take the rows' G conj(S) summed, with S the map's
// spectrum (add_vector_grads). Where the map's gradient is not asked for (a frozen image feature
// map), the rows need only their forward transform: no inverse, no scatter. (Their product still
// goes into Z, a store per bin: skipped too, it made the radix-32 backward spill 76 bytes instead of
// 40; ptxas, sm_90.)
template <typename T, typename In, class G>
CB_HD void backward_rows_one_map(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* G0, cplx<T>* G1,
                                 cplx<T>* vslot, int64_t b, int64_t l0, int64_t l1) {
  const int k = a.map_ids[0];
  const bool map_grad = a.grad_x[k] != nullptr;
  for (int64_t l = l0; l < l1; l += a.pair_rows ? 2 : 1) {
    const bool two = a.pair_rows && l + 1 < l1;
    // An NCHW gradient's two rows side by side, read together into G0 and G1: a sector serves both.
    const bool pair = two && a.grad_pairs;
    if (pair) {
      stage_grad_rows(g, a, z, b * a.L + l, 2, 0, 1, [=](int i) { return reinterpret_cast<T*>(i ? G1 : G0); });
      g.sync();
    }
    // One call site: each call's transform is inlined, all its pass kinds.
    for (int i = 0; i < (a.out_map ? 1 + two : 0); ++i)
      grad_spectrum(g, a, z, i ? G1 : G0, b, l + i, pair || a.stage_grad, codes_of(z, true) + i);
    // The rows' gradients, G times the vectors' product V, share the inverse transform: balanced
    // by the codes of their G (one G for all rows where the output is pooled: no balance).
    const auto out = [=, &a] {
      const Mag m0 = mag_of(z, 0, true);
      return a.out_map ? Balance<T>::of(m0, two ? mag_of(z, 1, true) : m0) : Balance<T>{};
    };
    load_sketches<false>(g, a, z, GatherAt{k, b, l, two ? k : -1, b, l + 1});
    fft_forward_sketches(g, z, a.d, a.log2d, a.tw);
    const Balance<T> bal = gathered(z);
    const T up = out().up;
    each_bin(g, z, a.F, a.d, [=, &a](cplx<T>& p, cplx<T>& q, bool self, int64_t f) {
      cplx<T> A, B;
      split(p, q, A, B);
      const cplx<T> g0 = G0[f], g1 = a.out_map ? (two ? G1[f] : cplx<T>(0, 0)) : g0;
      cplx<T> h = g0 * conj(A * bal.re);
      if (two) h += g1 * conj(B * bal.im);
      const cplx<T> V = add_vector_grads(a, vslot, b, f, h);
      merge_into(p, q, self, g0 * conj(V), g1 * conj(V) * up);
    });
    if (!map_grad) continue;
    fft_inverse_dit(g, z, a.d, a.log2d, a.tw);
    scatter_grads(g, a, z, k, b, l, two ? k : -1, b, l + 1, out());
  }
}

// Backward of locations l0 .. l1 of sample b with two or more map inputs, a row at a time: each pair
// of maps shares a forward transform, and so do their two real gradients an inverse; slot G holds
// the row's gradient spectrum (pooled: the sample's), mslot the spectra of the maps outside the
// last pair, then their gradients' spectra, vslot the vector inputs' sums.
template <typename T, typename In, class G>
CB_HD void backward_rows_maps(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* Gs, cplx<T>* mslot,
                              cplx<T>* vslot, int64_t b, int64_t l0, int64_t l1) {
  const int groups = (a.nmap + 1) / 2;
  const int last_first = 2 * (groups - 1);  // index (among maps) of the first map of the last pair
  for (int64_t l = l0; l < l1; ++l) {
    if (a.out_map) grad_spectrum(g, a, z, Gs, b, l, a.stage_grad);
    const int ka = a.map_ids[last_first], kb = last_first + 1 < a.nmap ? a.map_ids[last_first + 1] : -1;
    for (int gi = 0; gi < groups; ++gi) {
      const int ia = 2 * gi, ib = 2 * gi + 1 < a.nmap ? 2 * gi + 1 : -1;
      const GatherAt at{a.map_ids[ia], b, l, ib >= 0 ? a.map_ids[ib] : -1, b, l};
      // Two maps (one pair) whose values the cluster staged: gathered from the prefetch buffer.
      if (a.stage_x)
        load_sketches<true>(g, a, z, at);
      else
        load_sketches<false>(g, a, z, at);
      fft_forward_sketches(g, z, a.d, a.log2d, a.tw, a.unit_product);
      if (gi == groups - 1) break;
      const Balance<T> bal = gathered(z);
      g.for_each(a.F, [=, &a](int64_t f) {
        const BinPair pq = bins(f, a.d);
        cplx<T> A, B;
        split(z[pq.p], z[pq.q], A, B);
        mslot[ia * a.F + f] = A * bal.re;
        mslot[ib * a.F + f] = B * bal.im;
      });
      g.sync();
    }
    // The last pair's gradients share the inverse: a's is G times b's spectrum, b's G times a's, so
    // B as it came out of the transform (times bal.up) balances them, and the factors swap.
    const auto out = [=, &a] {
      const Balance<T> bal = gathered(z);
      return Balance<T>{1, kb >= 0 ? bal.im : T(1), bal.re};
    };
    // Every spectrum at bin f is now in a slot, in z (last pair) or in vspec: form all Q_k, each
    // G times the conjugate product of the other inputs' spectra; the last pair's two Q share one
    // inverse FFT, as their real gradients. Two maps, the common case, have a phase of their own:
    // each Q is G times the other map's conjugate spectrum (SASS, sm_90: 54 instructions per bin
    // where one loop with the general case below took 68), run with the unit passes where the plan
    // has them (unit_product: no loop over Z at all).
    const bool unit = a.unit_product;  // two maps (the plan's unit_product)
    if (a.K == 2) {
      const auto bin = [=](cplx<T>& p, cplx<T>& q, bool self, int64_t f) {
        cplx<T> A, B;
        split(p, q, A, B);
        const cplx<T> gf = Gs[f];
        merge_into(p, q, self, gf * conj(B), gf * conj(A));
      };
      product_phase<true>(g, a, z, unit, bin);
    } else {
      const Balance<T> bal = gathered(z);
      each_bin(g, z, a.F, a.d, [=, &a](cplx<T>& p, cplx<T>& q, bool self, int64_t f) {
        cplx<T> A, Bs;
        split(p, q, A, Bs);
        const cplx<T> B = Bs * bal.im;  // the true spectra
        A *= bal.re;
        const cplx<T> gf = Gs[f];
        // From partial products and no per-input arrays: arrays indexed at run time live in local
        // memory on the GPU, and with them there the compiler kept some FFT passes' values in
        // local memory too (ptxas, sm_90: a 208-byte frame and 546 local stores in the float
        // radix-8 backward kernel, none without them).
        cplx<T> M(1, 0);  // the maps outside the last pair
        for (int i = 0; i < last_first; ++i) M *= mslot[i * a.F + f];
        const cplx<T> AB = kb >= 0 ? A * B : A;
        const cplx<T> V = add_vector_grads(a, vslot, b, f, gf * conj(M * AB));
        const cplx<T> qa = gf * conj(kb >= 0 ? M * Bs * V : M * V);
        const cplx<T> qb = kb >= 0 ? gf * conj(M * A * V) : cplx<T>(0, 0);
        // The maps outside the last pair, whose slots take their Q in turn: `left`, the product of
        // those before i, keeps their spectra, read before they are overwritten.
        const cplx<T> X = AB * V;
        cplx<T> left(1, 0);
        for (int i = 0; i < last_first; ++i) {
          const cplx<T> vi = mslot[i * a.F + f];
          cplx<T> right = X;
          for (int j = i + 1; j < last_first; ++j) right *= mslot[j * a.F + f];
          mslot[i * a.F + f] = gf * conj(left * right);
          left *= vi;
        }
        merge_into(p, q, self, qa, qb);
      });
    }
    fft_inverse_dit(g, z, a.d, a.log2d, a.tw, ZStore<T>{z}, unit);
    // Where the cluster writes its rows' gradients together (two maps, a row a chunk), into slot G,
    // which the product was the last to read.
    scatter_grads(g, a, z, ka, b, l, kb, b, l, out(), a.stage_dx ? reinterpret_cast<T*>(Gs) : nullptr);
    // The other pairs' gradients, balanced by their own codes, measured here (at K >= 4 maps only:
    // the codes of the pairs' sketches would have to be kept in registers indexed at run time).
    int* codes = codes_of(z);
    for (int gi = 0; gi < groups - 1; ++gi) {
      const cplx<T>* qa = mslot + 2 * gi * a.F;
      const cplx<T>* qb = qa + a.F;
      g.for_each(2, [=](int64_t i) { codes[i] = 0; });
      g.sync();
      g.for_each(a.F, [=](int64_t f) {
        G::max_into(codes, mag_code(qa[f]));
        G::max_into(codes + 1, mag_code(qb[f]));
      });
      g.sync();
      const Balance<T> pb = Balance<T>::of(Mag::of<T>(codes[0]), Mag::of<T>(codes[1]));
      g.for_each(a.F, [=, &a](int64_t f) { merge(z, bins(f, a.d), qa[f], qb[f] * pb.up); });
      g.sync();
      fft_inverse_dit(g, z, a.d, a.log2d, a.tw);
      scatter_grads(g, a, z, a.map_ids[2 * gi], b, l, a.map_ids[2 * gi + 1], b, l, pb);
    }
  }
}

// Vector input v's gradient, in the group that holds the sum S of its gradient spectra over sample
// b's locations (hand_on_sums): one real inverse transform, the scatter; nothing where it is not
// asked for.
template <typename T, typename In, class G>
CB_HD void backward_finish(const G& g, const Args<T, In>& a, cplx<T>* z, const cplx<T>* S, int64_t b, int v) {
  if (!a.grad_x[a.vec_ids[v]]) return;
  inverse_real(g, a, z, S, ZStore<T>{z});
  scatter_grad<true>(g, a, reinterpret_cast<const T*>(z), a.vec_ids[v], 0, b, 0);
  g.sync();
}

// Backward for chunk c of the B * L flat rows (b is 0). Slots: G, a second G where a single map's
// unpooled rows go in pairs, one per map input outside the last pair, one accumulator per vector
// input. Map inputs' gradients are written directly. Where the chunk sums over a sample's
// locations (pooled, the sample's gradient spectrum is one G; vector inputs' gradient spectra are
// summed), its rows go sample by sample, each sample's sums handed on after its last row in the
// chunk (hand_on_sums), so chunks need not align with samples: the plan sizes them so that all run
// at once, as the pooled forward's (cbp.cpp fused_plan; at B = 32, L = 49 on an H100, 262 chunks
// of 6 rows for its 264 blocks, where 7 of a sample's rows made 224 and left 40 idle). Unpooled
// without vectors a chunk is a row, or a single map's pair, whose rows go one at a time where the
// pair would end one sample and start the next (as they did in chunks of a sample's rows). Rows are
// numbered in 32 bits (the plan keeps B * L below 2^31): with 64-bit flat rows through the row
// loops, the radix-8 backward, at its 64 registers, spilled 116 bytes (ptxas, sm_90); now 8.
// No prefetch buffer: on an H100 (run 11) the backward took 2.5 % longer with one (docs/benchmarks.md).
template <typename T, typename In, class G>
CB_HD void backward_chunk(const G& g, const Args<T, In>& a, cplx<T>* z, cplx<T>* slots, int64_t /*b = 0*/,
                          int64_t c) {
  const bool g_pair = a.nmap == 1 && a.out_map && a.pair_rows;
  cplx<T>* Gs = slots;
  cplx<T>* mslot = slots + (g_pair ? 2 : 1) * a.F;
  cplx<T>* vslot = mslot + (a.nmap - (a.nmap % 2 ? 1 : 2)) * a.F;
  const int L = static_cast<int>(a.L), rows = static_cast<int>(a.B * a.L);
  const int r0 = static_cast<int>(c * a.rows_per_chunk);
  const int r1 = r0 + a.rows_per_chunk < rows ? r0 + static_cast<int>(a.rows_per_chunk) : rows;
  for (int b = r0 / L; b * L < r1; ++b) {
    const int l0 = r0 > b * L ? r0 - b * L : 0, l1 = r1 - b * L < L ? r1 - b * L : L;
    if (a.nvec) {
      g.for_each(a.nvec * a.F, [=, &a](int64_t i) { vslot[i] = cplx<T>(0, 0); });
      g.sync();
    }
    if (!a.out_map) grad_spectrum(g, a, z, Gs, b, 0, false);
    if (a.nmap == 1)
      backward_rows_one_map(g, a, z, Gs, Gs + a.F, vslot, b, l0, l1);
    else
      backward_rows_maps(g, a, z, Gs, mslot, vslot, b, l0, l1);
    if (a.nvec && hand_on_sums(g, a, vslot, a.nvec, b, c))
      for (int v = 0; v < a.nvec; ++v) backward_finish(g, a, z, vslot + v * a.F, b, v);
  }
}

}  // namespace fused
}  // namespace compact_bilinear
