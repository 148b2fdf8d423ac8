#pragma once
// Entry points of the CUDA kernels (cbp_kernel.cu) for a validated problem.
#include "cbp.h"
#include "common/fused_driver.h"

namespace compact_bilinear {
Backend cuda_backend();
at::Tensor cuda_forward(const Problem& p, const Choice& choice);
std::vector<at::Tensor> cuda_backward(const Problem& p, const at::Tensor& grad_out, const Choice& choice);
}  // namespace compact_bilinear
