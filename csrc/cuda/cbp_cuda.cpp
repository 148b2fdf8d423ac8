// CUDA op registration. Arguments are validated here, in a host C++ translation unit, before any
// nvcc-compiled code runs, so a bad argument raises its Python exception from ordinary frames.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cbp_cuda.h"

namespace compact_bilinear {
namespace {

at::Tensor forward_cuda(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs,
                        int64_t output_dim, bool sum_pool, c10::string_view algorithm) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  const c10::cuda::CUDAGuard guard(p.x[0].device());
  return cuda_forward(p, choose(p, std::string(algorithm), false, cuda_backend()));
}

std::vector<at::Tensor> backward_cuda(const at::Tensor& grad_out, at::TensorList inputs, at::TensorList hash_indices,
                                      at::TensorList hash_signs, int64_t output_dim, bool sum_pool,
                                      c10::string_view algorithm, at::OptionalIntArrayRef input_grads) {
  Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  check_backward_args(p, grad_out, input_grads);
  const c10::cuda::CUDAGuard guard(p.x[0].device());
  return shape_like_inputs(p, cuda_backward(p, grad_out, choose(p, std::string(algorithm), true, cuda_backend())),
                           inputs);
}

std::string plan_cuda(at::TensorList inputs, at::TensorList hash_indices, at::TensorList hash_signs, int64_t output_dim,
                      bool sum_pool, c10::string_view algorithm, bool backward) {
  const Problem p = make_problem(inputs, hash_indices, hash_signs, output_dim, sum_pool);
  const c10::cuda::CUDAGuard guard(p.x[0].device());
  return describe_choice(p, std::string(algorithm), backward, cuda_backend());
}

}  // namespace

TORCH_LIBRARY_IMPL(compact_bilinear, CUDA, m) {
  m.impl("forward", &forward_cuda);
  m.impl("backward", &backward_cuda);
  m.impl("plan", &plan_cuda);
}

}  // namespace compact_bilinear
