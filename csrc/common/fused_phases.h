#pragma once
// The fused pipeline's phases (one kernel each) and the group types a launch instantiates: what
// the CUDA kernels' files need besides fused.h, without ATen (whose headers took most of each
// file's compile time), so they include this and not fused_driver.h.
#include <c10/util/Exception.h>

#include <type_traits>

#include "common/fused.h"

namespace compact_bilinear {
namespace fused {

// ForwardPrefetch, ForwardOneMapPrefetch, ForwardPooledPrefetch: the forward (fused.h forward_chunk)
// with its prefetch buffer, where the plan has one: with two maps or more unpooled, with one map,
// with two maps or more pooled.
enum class Phase { VectorSpectra, Forward, Backward, ForwardPrefetch, ForwardOneMapPrefetch, ForwardPooledPrefetch };

// Whether phase ph's blocks take its thread groups in turn (as many as run at once), each
// prefetching the first gather of the group it takes next: the prefetching forward's.
constexpr bool in_turn(Phase ph) {
  return ph == Phase::ForwardPrefetch || ph == Phase::ForwardOneMapPrefetch || ph == Phase::ForwardPooledPrefetch;
}

// Runs phase `ph` for thread group (bx, by): z, its d-point buffer; slots, its a.slots half
// spectra (in shared memory right after z, or in global memory where a.global_slots).
template <typename T, typename In, class G>
CB_HD void run_phase(const G& g, const Args<T, In>& a, Phase ph, cplx<T>* z, cplx<T>* slots, int64_t bx, int64_t by,
                     Turn turn = {}) {
  switch (ph) {
    case Phase::VectorSpectra: vector_spectra(g, a, z, bx, by); break;
    case Phase::Forward: forward_chunk<false, Maps::Any, Out::Any>(g, a, z, slots, bx, by); break;
    case Phase::ForwardPrefetch: forward_chunk<true, Maps::Several, Out::Rows>(g, a, z, slots, bx, by, turn); break;
    case Phase::ForwardOneMapPrefetch: forward_chunk<true, Maps::One, Out::Any>(g, a, z, slots, bx, by, turn); break;
    case Phase::ForwardPooledPrefetch:
      forward_chunk<true, Maps::Several, Out::Pooled>(g, a, z, slots, bx, by, turn);
      break;
    case Phase::Backward: backward_chunk(g, a, z, slots, bx, by); break;
  }
}

// The largest radix of the FFT's passes is a compile-time property of a thread group (it sets the
// registers a thread needs), so launchers instantiate a group type per value a plan can choose.
template <class F>
void with_max_pass_bits(int bits, F&& f) {
  if (bits == 3) {
    f(std::integral_constant<int, 3>{});
  } else {
    TORCH_CHECK(bits == 5, "compact_bilinear: no fused kernel for FFT passes of ", bits, " stages");
    f(std::integral_constant<int, 5>{});
  }
}

template <typename T>
using acc_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

}  // namespace fused
}  // namespace compact_bilinear
