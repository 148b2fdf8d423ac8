// The fused kernel's forward phases and vector spectra, c10::Half inputs (fused_kernel.cuh;
// fused_f16_backward.cu says why a dtype's kernels take two files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(c10::Half, VectorSpectra)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, Forward)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardPrefetch)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardOneMapPrefetch)
CB_INSTANTIATE_FUSED_PHASE(c10::Half, ForwardPooledPrefetch)
}  // namespace compact_bilinear
