// The fused kernel's backward, double inputs (fused_kernel.cuh). An input dtype's phases are
// compiled in three files, this one, fused_f64_forward.cu and fused_f64_prefetch.cu, which a build
// runs in parallel: in one file, float's took 137 s, the backward alone 82 (nvcc, sm_90, one core).
#include "cuda/fused_kernel.cuh"

namespace compact_bilinear {
CB_INSTANTIATE_FUSED_PHASE(double, Backward)
}  // namespace compact_bilinear
