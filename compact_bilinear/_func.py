"""torch.func (vmap, grad, jacrev, jvp, hessian) and forward-mode AD for the two ops.

The ops' autograd is a C++ torch::autograd::Function (csrc/autograd.cpp), which functorch
transforms refuse. Under a transform, `compact_bilinear_pooling` calls the ops through the
Python Functions below instead; their derivatives are the same multilinear identities. With
F(x_1..x_K) the forward, linear in each input, and B_i(g; x) = dF/dx_i^T g its backward:
  jvp of F:          sum_j F(x with x_j := t_j)
  vjp of B (v_i):    d/dg = sum_j F(x with x_j := v_j), d/dx_i = sum_{j != i} B_i(g; x with x_j := v_j)
  jvp of B:          B_i(t_g; x) + sum_{j != i} B_i(g; x with x_j := t_j)
(the sums over j != i in one backward call for two inputs, _cross_terms). Each is computed by the
Functions themselves, so derivatives of every order compose. vmap comes
from the ops' batching rules (_ops.py), which fold the vmapped dimension into the batch.
"""
from __future__ import annotations

import torch

from ._ops import ops


def _split(k, tensors):
    return list(tensors[:k]), list(tensors[k : 2 * k]), list(tensors[2 * k :])


def _replace(xs, subs):
    """xs with x_j := subs[j] for each j in subs."""
    return [subs.get(i, x) for i, x in enumerate(xs)]


def _sum(terms):
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total


def _cross_terms(options, g, xs, hs, ss, vs, acc):
    """Adds sum_{j != i} B_i(g; x with x_j := v_j) to acc[i] for every i, over the defined v_j. A
    call with x_j := v_j for the j in J gives B_i's term of (i, j) where J without i is {j} (B_i
    does not read x_i): one call for two inputs, one per defined v_j for more."""
    defined = [j for j, v in enumerate(vs) if v is not None]
    for js in [defined] if len(xs) == 2 and defined else [[j] for j in defined]:
        gx = _Backward.apply(*options, g, *_replace(xs, {j: vs[j] for j in js}), *hs, *ss)
        for i in range(len(xs)):
            if len(set(js) - {i}) == 1:
                acc[i] = gx[i] if acc[i] is None else acc[i] + gx[i]
    return acc


class _Op(torch.autograd.Function):
    """Both Functions take the options (k, d, pool, algorithm), then tensors; they save the tensors
    for either mode of AD and get None, not zeros, for an output without a gradient."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.options = inputs[:4]
        ctx.save_for_backward(*inputs[4:])
        ctx.save_for_forward(*inputs[4:])
        ctx.set_materialize_grads(False)


class _Forward(_Op):
    @staticmethod
    def forward(k, d, pool, algorithm, *tensors):
        return ops.forward(*_split(k, tensors), d, pool, algorithm)

    @staticmethod
    def backward(ctx, g):
        k = ctx.options[0]
        if g is None:
            return (None,) * (4 + 3 * k)
        grads = _Backward.apply(*ctx.options, g, *ctx.saved_tensors)
        return (None,) * 4 + tuple(grads) + (None,) * (2 * k)

    @staticmethod
    def jvp(ctx, *tangents):
        k = ctx.options[0]
        xs, hs, ss = _split(k, ctx.saved_tensors)
        out = _sum(
            _Forward.apply(*ctx.options, *_replace(xs, {j: t}), *hs, *ss)
            for j, t in enumerate(tangents[4 : 4 + k])
            if t is not None
        )
        if out is None:  # tangents only in the signs, which are not differentiated
            out = torch.zeros_like(_Forward.apply(*ctx.options, *ctx.saved_tensors))
        return out


class _Backward(_Op):
    @staticmethod
    def forward(k, d, pool, algorithm, g, *tensors):
        return tuple(ops.backward(g, *_split(k, tensors), d, pool, algorithm))

    @staticmethod
    def backward(ctx, *vs):
        k = ctx.options[0]
        g, *tensors = ctx.saved_tensors
        xs, hs, ss = _split(k, tensors)
        grad_g = _sum(_Forward.apply(*ctx.options, *_replace(xs, {j: v}), *hs, *ss) for j, v in enumerate(vs) if v is not None)
        grad_x = _cross_terms(ctx.options, g, xs, hs, ss, vs, [None] * k)
        return (None,) * 4 + (grad_g, *grad_x) + (None,) * (2 * k)

    @staticmethod
    def jvp(ctx, *tangents):
        k = ctx.options[0]
        g, *tensors = ctx.saved_tensors
        xs, hs, ss = _split(k, tensors)
        t_g, t_xs = tangents[4], tangents[5 : 5 + k]
        out = [None] * k if t_g is None else list(_Backward.apply(*ctx.options, t_g, *xs, *hs, *ss))
        out = _cross_terms(ctx.options, g, xs, hs, ss, t_xs, out)
        return tuple(o if o is not None else torch.zeros_like(x) for o, x in zip(out, xs))


def forward(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm):
    """ops.forward, differentiable under torch.func transforms and forward-mode AD."""
    return _Forward.apply(len(inputs), output_dim, sum_pool, algorithm, *inputs, *hash_indices, *hash_signs)
