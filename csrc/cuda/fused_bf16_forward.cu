// The fused kernel's forward phases and vector spectra, c10::BFloat16 inputs (fused_kernel.cuh;
// fused_bf16_backward.cu says why a dtype's kernels take two files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_FORWARD(c10::BFloat16)
}  // namespace compact_bilinear
