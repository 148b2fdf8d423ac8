// The fused kernel's forward phases and vector spectra, c10::Half inputs (fused_kernel.cuh;
// fused_f16_backward.cu says why a dtype's kernels take two files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_FORWARD(c10::Half)
}  // namespace compact_bilinear
