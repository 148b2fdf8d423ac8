// The fused kernel: the forward without a prefetch, and the vector spectra, float inputs
// (fused_kernel.cuh; fused_f32_backward.cu says why a dtype's phases take three files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(float, Forward)
CB_INSTANTIATE_FUSED_PHASE(float, VectorSpectra)
}  // namespace compact_bilinear
