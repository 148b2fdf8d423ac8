// The fused kernel: the prefetching forwards, double inputs (fused_kernel.cuh;
// fused_f64_backward.cu says why a dtype's phases take three files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(double, ForwardPrefetch)
CB_INSTANTIATE_FUSED_PHASE(double, ForwardOneMapPrefetch)
CB_INSTANTIATE_FUSED_PHASE(double, ForwardPooledPrefetch)
}  // namespace compact_bilinear
