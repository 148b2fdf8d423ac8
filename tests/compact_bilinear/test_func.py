"""torch.func transforms (vmap, grad, jacrev, jacfwd, jvp, hessian) and forward-mode AD.

Truth is the composite torch.fft reference under the same transform (plain torch ops, which
functorch differentiates and batches itself), finite differences (gradcheck's forward-mode and
forward-over-reverse checks) and, for batched gradients, one autograd.grad call per cotangent.
Every case runs both algorithms: "fused" on the CPU is the host instance of the CUDA kernel.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._pytree import tree_leaves

import compact_bilinear as cb
from compact_bilinear.reference import compact_bilinear_pooling_reference, random_hashes

# torch.func.jacfwd's internals call torch.jit.script, deprecated in this torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

# (channels per input, d, shapes without channels, sum_pool)
CASES = {
    "k2_maps": ((5, 7), 16, [(2, 3), (2, 3)], False),
    "k2_map_x_vector": ((6, 5), 32, [(2, 2), ()], False),
    "k3_pooled_broadcast": ((5, 4, 3), 16, [(2, 2), (), (2, 2)], True),
    "k1_count_sketch": ((6,), 8, [(3,)], False),
}
PARAMS = [(name, algo) for name in CASES for algo in ["fft", "fused"]]


def make(name, device, algo, batch=3, seed=0):
    dims, d, spatial, pool = CASES[name]
    g = torch.Generator().manual_seed(seed)
    hs, ss = random_hashes(dims, d, g, device=device)
    xs = [torch.randn(batch, c, *s, generator=g, dtype=torch.float64).to(device) for c, s in zip(dims, spatial)]
    lib = lambda *x: cb.compact_bilinear_pooling(list(x), hs, ss, d, sum_pool=pool, algorithm=algo)
    ref = lambda *x: compact_bilinear_pooling_reference(list(x), hs, ss, d, sum_pool=pool)
    return xs, hs, ss, d, pool, lib, ref


@pytest.fixture(params=PARAMS, ids=[f"{n}-{a}" for n, a in PARAMS])
def case(request, device):
    name, algo = request.param
    return make(name, device, algo)


def assert_same(got, want):
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))


def test_vmap(case):
    """vmap over a new leading dimension, over a dimension in the middle, with an input that is
    not vmapped (broadcast to every slice), against the reference sample by sample."""
    xs, _, _, _, _, lib, ref = case
    stacked = [torch.stack([x, x.flip(0) * 0.5, x.cos()]) for x in xs]
    assert_same(torch.func.vmap(lib)(*stacked), torch.stack([ref(*s) for s in zip(*stacked)]))
    got = torch.func.vmap(lambda a: lib(a, *xs[1:]), in_dims=1)(stacked[0].movedim(0, 1))
    assert_same(got, torch.stack([ref(a, *xs[1:]) for a in stacked[0]]))


def test_vmap_over_hashes(device):
    """Hashes vmapped too (a different hash per slice) take one call per slice."""
    xs, hs, ss, d, pool, _, _ = make("k2_map_x_vector", device, "fft")
    h0 = torch.stack([hs[0], hs[0].flip(0), (hs[0] + 1) % d])
    lib = lambda h, *x: cb.compact_bilinear_pooling(list(x), [h, hs[1]], ss, d, sum_pool=pool)
    ref = lambda h, *x: compact_bilinear_pooling_reference(list(x), [h, hs[1]], ss, d, sum_pool=pool)
    assert_same(torch.func.vmap(lambda h: lib(h, *xs))(h0), torch.stack([ref(h, *xs) for h in h0]))
    # The backward op with vmapped hashes: each slice's gradient in both inputs.
    grads = lambda f, h: torch.func.grad(lambda *x: f(h, *x).square().sum(), argnums=(0, 1))(*xs)
    want = [torch.stack(g) for g in zip(*[grads(ref, h) for h in h0])]
    assert_same(torch.func.vmap(lambda h: grads(lib, h))(h0), want)


def test_grad_and_per_sample_grads(case):
    xs, _, _, _, _, lib, ref = case
    loss = lambda f: (lambda *x: f(*x).square().sum())
    argnums = tuple(range(len(xs)))
    assert_same(torch.func.grad(loss(lib), argnums=argnums)(*xs), torch.func.grad(loss(ref), argnums=argnums)(*xs))
    one = lambda f: (lambda *x: loss(f)(*[t[None] for t in x]))
    per_sample = lambda f: torch.func.vmap(torch.func.grad(one(f), argnums=argnums))(*xs)
    assert_same(per_sample(lib), per_sample(ref))


def test_jacobians_and_hessian(case):
    xs, _, _, _, _, lib, ref = case
    small = [x[:1] for x in xs]
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        jac = lambda f: transform(lambda a: f(a, *small[1:]))(small[0])
        assert_same(jac(lib), jac(ref))
    # Second derivatives of a scalar in all inputs: forward over reverse (torch.func.hessian) and
    # reverse over reverse (jacrev of jacrev; a gradient penalty under torch.func.grad).
    energy = lambda f: (lambda *x: f(*x).square().sum())
    argnums = tuple(range(len(small)))
    for outer in (torch.func.jacfwd, torch.func.jacrev):
        hess = lambda f: outer(torch.func.jacrev(energy(f), argnums=argnums), argnums=argnums)(*small)
        assert_same(hess(lib), hess(ref))
    penalty = lambda f: torch.func.grad(lambda *x: sum(g.square().sum() for g in torch.func.grad(energy(f), argnums)(*x)), argnums)
    assert_same(penalty(lib)(*xs), penalty(ref)(*xs))


def test_jvp_and_hessian_vector_product(case):
    xs, _, _, _, _, lib, ref = case
    tangents = tuple(x.sin() for x in xs)
    assert_same(torch.func.jvp(lib, tuple(xs), tangents), torch.func.jvp(ref, tuple(xs), tangents))
    hvp = lambda f: torch.func.jvp(torch.func.grad(lambda a: f(a, *xs[1:]).square().sum()), (xs[0],), (tangents[0],))
    assert_same(hvp(lib), hvp(ref))


def test_forward_mode_ad(case):
    """torch.autograd.forward_ad outside torch.func: tangents in every input and in one only."""
    xs, _, _, _, _, lib, ref = case

    def tangent(f, which):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(x, x.cos()) if i in which else x for i, x in enumerate(xs)]
            return fwAD.unpack_dual(f(*duals)).tangent

    for which in (range(len(xs)), [0]):
        assert_same(tangent(lib, which), tangent(ref, which))


def test_gradcheck_forward_mode(case):
    """Finite differences: forward-mode AD, and second derivatives forward over reverse."""
    xs, _, _, _, _, lib, _ = case
    xs = [x[:2].requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(lib, xs, check_forward_ad=True, check_batched_grad=False)
    assert torch.autograd.gradgradcheck(lib, xs, check_fwd_over_rev=True, check_batched_grad=False)


def test_batched_vjp_of_a_recorded_call(case):
    """torch.func.vmap over torch.autograd.grad of a call recorded outside any transform (the
    C++ autograd node; the pattern of batched Jacobians and gradcheck's batched-gradient check),
    first and second order, against one autograd.grad call per cotangent. gradcheck's own
    check_batched_grad uses the deprecated torch._vmap_internals.vmap, which has no rules for
    custom ops."""
    xs, _, _, _, _, lib, _ = case
    xs = [x.requires_grad_() for x in xs]
    out = lib(*xs)
    cotangents = torch.stack([out.detach().cos(), out.detach().sin(), torch.ones_like(out)])
    vjp = lambda v: torch.autograd.grad(out, xs, v, retain_graph=True, create_graph=True)
    assert_same(torch.func.vmap(vjp)(cotangents), [torch.stack(g) for g in zip(*[vjp(v) for v in cotangents])])
    first = vjp(cotangents[0])
    weights = [torch.stack([g.detach().cos(), g.detach() * 2]) for g in first]
    vjp2 = lambda *w: torch.autograd.grad(first, xs, w, retain_graph=True, allow_unused=True, materialize_grads=True)
    assert_same(torch.func.vmap(vjp2)(*weights), [torch.stack(g) for g in zip(*[vjp2(*w) for w in zip(*weights)])])


def test_plain_calls_keep_the_cpp_autograd():
    """Outside transforms the op's own (C++) autograd node records the call: the Python Functions
    cost host time per call and are used only where a transform needs them."""
    xs, _, _, _, _, lib, _ = make("k2_maps", "cpu", "fft")
    out = lib(xs[0].requires_grad_(), xs[1])
    assert "CppNode<compact_bilinear::" in out.grad_fn.name()


def test_bad_input_under_vmap():
    """Errors name what a user wrote, per vmapped slice, not the folded batch."""
    layer = cb.STCB((4, 3), 16)
    x, v = torch.randn(5, 2, 4), torch.randn(5, 3, 3)
    with pytest.raises(ValueError, match=r"inputs\[1\] has 3 samples but inputs\[0\] has 2 \(in each vmapped slice\)"):
        torch.func.vmap(layer)(x, v)
    hs = [layer.hash_indices[0] + 16, layer.hash_indices[1]]
    with pytest.raises(ValueError, match=r"hash_indices\[0\]"):
        torch.func.vmap(lambda a, b: cb.compact_bilinear_pooling([a, b], hs, layer.hash_signs, 16))(x, v[:, :2])
