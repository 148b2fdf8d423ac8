// The fused kernel's forward phases and vector spectra, double inputs (fused_kernel.cuh;
// fused_f64_backward.cu says why a dtype's kernels take two files).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_FORWARD(double)
}  // namespace compact_bilinear
