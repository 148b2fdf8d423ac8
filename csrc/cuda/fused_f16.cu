// The fused kernels with half inputs (fused_kernel.cuh).
#include "cuda/fused_kernel.cuh"

CB_INSTANTIATE_FUSED(c10::Half)
