// The fused kernels with double inputs (fused_kernel.cuh).
#include "cuda/fused_kernel.cuh"

CB_INSTANTIATE_FUSED(double)
