// The fused kernel: the forward without a prefetch, and the vector spectra, c10::BFloat16 inputs
// (fused_kernel.cuh; fused_bf16_backward.cu says why a dtype's phases take three files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(c10::BFloat16, Forward)
CB_INSTANTIATE_FUSED_PHASE(c10::BFloat16, VectorSpectra)
}  // namespace compact_bilinear
