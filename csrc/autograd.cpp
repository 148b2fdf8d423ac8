// Autograd of the two ops, in C++. Registered from Python (torch.library.register_autograd), it
// cost about 80 us of host time per forward on the 2-core CI machine (pytree flattening and a
// redispatch through Python); a small call on a GPU takes a fraction of that on the device.
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
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

// The input gradients of the indices in `want`; the others come back as expanded zeros.
Tensors call_backward(const at::Tensor& grad, at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d,
                      bool pool, c10::string_view algorithm, at::OptionalIntArrayRef want) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("compact_bilinear::backward", "")
                             .typed<Tensors(const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
                                            int64_t, bool, c10::string_view, at::OptionalIntArrayRef)>();
  return op.call(grad, xs, hs, ss, d, pool, algorithm, want);
}

// What the two Functions save for their backward: the tensors they take before the inputs (the
// backward op's output gradient), the inputs, the hashes and the options; nothing of size d, the
// backward recomputes sketches and spectra.
struct Saved {
  Tensors head, xs, hs, ss;
  int64_t d;
  bool pool;
  std::string algorithm;

  static void save(AutogradContext* ctx, Tensors tensors, at::TensorList xs, at::TensorList hs, at::TensorList ss,
                   int64_t d, bool pool, c10::string_view algorithm) {
    ctx->saved_data["head"] = static_cast<int64_t>(tensors.size());
    ctx->saved_data["k"] = static_cast<int64_t>(xs.size());
    for (const auto list : {xs, hs, ss}) tensors.insert(tensors.end(), list.begin(), list.end());
    ctx->save_for_backward(tensors);
    ctx->saved_data["d"] = d;
    ctx->saved_data["pool"] = pool;
    ctx->saved_data["algorithm"] = std::string(algorithm);
  }

  static Saved load(AutogradContext* ctx) {
    const auto t = ctx->get_saved_variables();
    const int64_t h = ctx->saved_data["head"].toInt(), k = ctx->saved_data["k"].toInt();
    return {Tensors(t.begin(), t.begin() + h),
            Tensors(t.begin() + h, t.begin() + h + k),
            Tensors(t.begin() + h + k, t.begin() + h + 2 * k),
            Tensors(t.begin() + h + 2 * k, t.end()),
            ctx->saved_data["d"].toInt(),
            ctx->saved_data["pool"].toBool(),
            ctx->saved_data["algorithm"].toStringRef()};
  }
};

class Stcb : public torch::autograd::Function<Stcb> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList xs, at::TensorList hs, at::TensorList ss,
                            int64_t d, bool pool, c10::string_view algorithm) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Saved::save(ctx, {}, xs, hs, ss, d, pool, algorithm);
    return call_forward(xs, hs, ss, d, pool, algorithm);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Saved s = Saved::load(ctx);
    std::vector<int64_t> want;  // the inputs autograd needs a gradient for (a frozen one costs nothing)
    for (size_t i = 0; i < s.xs.size(); ++i)
      if (ctx->needs_input_grad(i)) want.push_back(static_cast<int64_t>(i));
    const auto gx = call_backward(grads[0], s.xs, s.hs, s.ss, s.d, s.pool, s.algorithm, want);
    variable_list out(gx.begin(), gx.end());
    out.resize(3 * s.xs.size() + 3);  // no gradient for the hashes, the signs and the three options
    return out;
  }
};

// The backward op, differentiable through the forward's multilinearity. The forward F(x_1..x_K)
// is linear in each input, so its backward, B_j(g; x) = dF/dx_j^T g, is linear in g and in every
// x_i with i != j, and <v_j, B_j(g; x)> = <g, F(x with x_j := v_j)>. Differentiating
// sum_j <v_j, B_j(g; x)> for the upstream gradients v_j therefore takes the two ops again:
//   d/dg   = sum_j F(x with x_j := v_j),
//   d/dx_i = sum_{j != i} B_i(g; x with x_j := v_j),
// a forward call per defined v_j and a backward call per defined v_j (one in all for two inputs,
// below), through the dispatcher, so with create_graph they are recorded in turn and every order
// of derivative works.
class StcbBackward : public torch::autograd::Function<StcbBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, at::TensorList xs, at::TensorList hs,
                               at::TensorList ss, int64_t d, bool pool, c10::string_view algorithm,
                               at::OptionalIntArrayRef want) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Saved::save(ctx, {grad}, xs, hs, ss, d, pool, algorithm);
    ctx->set_materialize_grads(false);  // an input gradient nobody differentiates costs no calls
    return call_backward(grad, xs, hs, ss, d, pool, algorithm, want);
  }

  static variable_list backward(AutogradContext* ctx, variable_list vs) {
    const Saved s = Saved::load(ctx);
    const size_t k = s.xs.size();
    // Edges: 0 the output gradient, 1 + i input i; none for the hashes, the signs and the four options.
    variable_list out(3 * k + 5);
    const auto add = [](at::Tensor& acc, const at::Tensor& t) { acc = acc.defined() ? acc.add(t) : t; };
    const auto with = [&](const std::vector<size_t>& js) {
      Tensors x = s.xs;
      for (const size_t j : js) x[j] = vs[j];
      return x;
    };
    // d/dg: a forward call per defined v_j.
    std::vector<size_t> defined;
    for (size_t j = 0; j < k; ++j)
      if (vs[j].defined()) defined.push_back(j);
    if (ctx->needs_input_grad(0))
      for (const size_t j : defined) add(out[0], call_forward(with({j}), s.hs, s.ss, s.d, s.pool, s.algorithm));
    // d/dx_i: a backward call with x_j := v_j for the j in a set J gives B_i(g; x with x_J := v_J),
    // which is the term of (i, j) where J without i is {j}: B_i does not read x_i. So two inputs
    // take one call with every defined v_j in place (each i's one term has j = 1 - i), more inputs
    // a call per defined v_j.
    std::vector<std::vector<size_t>> calls;
    for (const size_t j : defined) {
      if (k == 2 && !calls.empty())
        calls[0].push_back(j);
      else
        calls.push_back({j});
    }
    for (const auto& js : calls) {
      const auto term = [&](size_t i) {
        const auto others = js.size() - std::count(js.begin(), js.end(), i);
        return others == 1 && ctx->needs_input_grad(1 + i);
      };
      std::vector<int64_t> want;
      for (size_t i = 0; i < k; ++i)
        if (term(i)) want.push_back(static_cast<int64_t>(i));
      if (want.empty()) continue;
      const auto gx = call_backward(s.head[0], with(js), s.hs, s.ss, s.d, s.pool, s.algorithm, want);
      for (size_t i = 0; i < k; ++i)
        if (term(i)) add(out[1 + i], gx[i]);
    }
    return out;
  }
};

at::Tensor forward_autograd(at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d, bool pool,
                            c10::string_view algorithm) {
  return Stcb::apply(xs, hs, ss, d, pool, algorithm);
}

Tensors backward_autograd(const at::Tensor& grad, at::TensorList xs, at::TensorList hs, at::TensorList ss, int64_t d,
                          bool pool, c10::string_view algorithm, at::OptionalIntArrayRef want) {
  return StcbBackward::apply(grad, xs, hs, ss, d, pool, algorithm, want);
}

}  // namespace

TORCH_LIBRARY_IMPL(compact_bilinear, Autograd, m) {
  m.impl("forward", &forward_autograd);
  m.impl("backward", &backward_autograd);
}

}  // namespace compact_bilinear
