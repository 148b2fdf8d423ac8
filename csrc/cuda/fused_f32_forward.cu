// The fused kernel's forward phases and vector spectra, float inputs (fused_kernel.cuh;
// fused_f32_backward.cu says why a dtype's kernels take two files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(float, VectorSpectra)
CB_INSTANTIATE_FUSED_PHASE(float, Forward)
CB_INSTANTIATE_FUSED_PHASE(float, ForwardPrefetch)
CB_INSTANTIATE_FUSED_PHASE(float, ForwardOneMapPrefetch)
CB_INSTANTIATE_FUSED_PHASE(float, ForwardPooledPrefetch)
}  // namespace compact_bilinear
