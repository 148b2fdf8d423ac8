// The fused kernels with bfloat16 inputs (fused_kernel.cuh).
#include "cuda/fused_kernel.cuh"

CB_INSTANTIATE_FUSED(c10::BFloat16)
