// The fused kernel: the prefetching forwards, c10::Half inputs (fused_kernel.cuh;
// fused_f16_backward.cu says why a dtype's phases take three files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardPrefetch)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardOneMapPrefetch)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardPooledPrefetch)
}  // namespace compact_bilinear
