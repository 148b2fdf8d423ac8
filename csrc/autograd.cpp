// Autograd of the two ops, in C++. Registered from Python (torch.library.register_autograd), it
// cost about 80 us of host time per forward on the 2-core CI machine (pytree flattening and a
// redispatch through Python); a small call on a GPU takes a fraction of that on the device.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace compact_bilinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensors = std::vector<at::Tensor>;

at::Tensor call_forward(at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d, bool pool,
                        c10::string_view algorithm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("compact_bilinear::forward", "")
                             .typed<at::Tensor(at::TensorList, at::TensorList, at::TensorList, int64_t, bool,
                                               c10::string_view)>();
  return op.call(xs, hs, ss, d, pool, algorithm);
}

Tensors call_backward(const at::Tensor& grad, at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d,
                      bool pool, c10::string_view algorithm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("compact_bilinear::backward", "")
                             .typed<Tensors(const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
                                            int64_t, bool, c10::string_view)>();
  return op.call(grad, xs, hs, ss, d, pool, algorithm);
}

// The forward saves the inputs and the hashes, nothing of size d: the backward recomputes
// sketches and spectra.
class Stcb : public torch::autograd::Function<Stcb> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList xs, at::TensorList hs, at::TensorList ss,
                            int64_t d, bool pool, c10::string_view algorithm) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensors saved(xs.begin(), xs.end());
    saved.insert(saved.end(), hs.begin(), hs.end());
    saved.insert(saved.end(), ss.begin(), ss.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["k"] = static_cast<int64_t>(xs.size());
    ctx->saved_data["d"] = d;
    ctx->saved_data["pool"] = pool;
    ctx->saved_data["algorithm"] = std::string(algorithm);
    return call_forward(xs, hs, ss, d, pool, algorithm);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t k = ctx->saved_data["k"].toInt();
    const Tensors xs(saved.begin(), saved.begin() + k), hs(saved.begin() + k, saved.begin() + 2 * k),
        ss(saved.begin() + 2 * k, saved.end());
    const auto gx = call_backward(grads[0], xs, hs, ss, ctx->saved_data["d"].toInt(),
                                  ctx->saved_data["pool"].toBool(), ctx->saved_data["algorithm"].toStringRef());
    variable_list out(gx.begin(), gx.end());
    out.resize(3 * k + 3);  // no gradient for the hashes, the signs and the three options
    return out;
  }
};

// The backward op is differentiable only in the sense that differentiating it says it is not.
class StcbBackward : public torch::autograd::Function<StcbBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, at::TensorList xs, at::TensorList hs,
                               at::TensorList ss, int64_t d, bool pool, c10::string_view algorithm) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_backward(grad, xs, hs, ss, d, pool, algorithm);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(false,
                "compact_bilinear: double backward (differentiating the gradient, e.g. a gradient penalty) is "
                "not supported; compute such terms with compact_bilinear.reference instead");
  }
};

at::Tensor forward_autograd(at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d, bool pool,
                            c10::string_view algorithm) {
  return Stcb::apply(xs, hs, ss, d, pool, algorithm);
}

Tensors backward_autograd(const at::Tensor& grad, at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d,
                          bool pool, c10::string_view algorithm) {
  return StcbBackward::apply(grad, xs, hs, ss, d, pool, algorithm);
}

}  // namespace

TORCH_LIBRARY_IMPL(compact_bilinear, Autograd, m) {
  m.impl("forward", &forward_autograd);
  m.impl("backward", &backward_autograd);
}

}  // namespace compact_bilinear
