// The fused kernels with float inputs (fused_kernel.cuh).
#include "cuda/fused_kernel.cuh"

CB_INSTANTIATE_FUSED(float)
