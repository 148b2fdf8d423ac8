// The fused kernel's backward, double inputs (fused_kernel.cuh). An input dtype's kernels are
// compiled in two files, this one and fused_f64_forward.cu, which a build runs in parallel: in one
// file, float's took 129-137 s, here 80 and the forward phases 79 (nvcc, sm_90, one core).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(double, Backward)
}  // namespace compact_bilinear
