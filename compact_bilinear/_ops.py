"""Loads the compiled kernels and teaches PyTorch about them: fake (meta) kernels for
torch.compile. Autograd is registered by the compiled module itself."""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.compact_bilinear.*)
except ImportError as err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "compact_bilinear could not load its compiled kernels (compact_bilinear._C): "
        f"{err}. Rebuild them against the torch installed now (torch {torch.__version__}): "
        "`pip install --no-build-isolation .` in the source tree, or "
        "`python setup.py build_ext --inplace` for a development checkout."
    ) from err

ops = torch.ops.compact_bilinear


@torch.library.register_fake("compact_bilinear::forward")
def _forward_fake(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm):
    for k, t in enumerate(list(inputs) + list(hash_indices) + list(hash_signs)):
        if t.device != inputs[0].device:
            name = ("inputs", "hash_indices", "hash_signs")[k // len(inputs)]
            raise ValueError(
                f"compact_bilinear: {name}[{k % len(inputs)}] is on {t.device} but inputs[0] is on "
                f"{inputs[0].device}; all tensors must be on one device"
            )
    maps = [x for x in inputs if x.dim() > 2]
    if not maps or sum_pool:
        return inputs[0].new_empty((inputs[0].shape[0], output_dim))
    # Same layout as the kernels: location-major rows, returned as a (B, d, *S) view.
    return inputs[0].new_empty((inputs[0].shape[0], *maps[0].shape[2:], output_dim)).movedim(-1, 1)


def _shape(s):
    return "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"


@torch.library.register_fake("compact_bilinear::backward")
def _backward_fake(grad_out, inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm, input_grads=None):
    # The checks of the compiled op (cbp.cpp check_backward_args), so a traced call fails as an eager one.
    out = _forward_fake(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm)
    if grad_out.shape != out.shape:
        raise ValueError(f"compact_bilinear: grad_out must have the output's shape {_shape(out.shape)}, "
                         f"got {_shape(grad_out.shape)}")
    if grad_out.device != inputs[0].device:
        raise ValueError(f"compact_bilinear: grad_out must be on {inputs[0].device}, got {grad_out.device}")
    for i, k in enumerate(input_grads or []):
        if not 0 <= k < len(inputs):
            raise ValueError(f"compact_bilinear: input_grads[{i}] must be an input index in [0, {len(inputs)}), got {k}")
    # A gradient not asked for is a zero expanded to the input's shape, as the op returns it.
    return [
        torch.empty_like(x, memory_format=torch.contiguous_format)
        if input_grads is None or k in input_grads
        else x.new_zeros(()).expand(x.shape)
        for k, x in enumerate(inputs)
    ]


# Autograd of both ops is registered in C++ (csrc/autograd.cpp): the forward saves the inputs and
# hashes and its backward calls ops.backward; ops.backward's own backward calls the two ops again.


# Batching rules (torch.func.vmap): the ops already take a batch of samples, so a vmapped
# dimension is folded into it, B -> N B, and split off the results again: one kernel call. Inputs
# (or an output gradient) that are not vmapped are repeated N times. Hashes vmapped too (a
# different hash per vmapped slice) take one call per slice.
def _fold(x, bdim, n):
    return (x.expand(n, *x.shape) if bdim is None else x.movedim(bdim, 0)).flatten(0, 1)


def _pick(arg, bdim, i):
    if bdim is None:  # not vmapped, or not a tensor (an option, the backward's input_grads)
        return arg
    if isinstance(arg, (list, tuple)):
        return [_pick(t, b, i) for t, b in zip(arg, bdim)]
    return arg.select(bdim, i)


def _vmap_rule(op, lead):
    """The batching rule of `op`, whose arguments are `lead` tensors with the batch at dim 0 (the
    backward's grad_out), the inputs, hash_indices and hash_signs lists, and the options; it
    returns a tensor (the forward) or a list of them (the backward)."""

    def rule(info, in_dims, *args):
        n, xs, x_dims = info.batch_size, args[lead], in_dims[lead]
        if any(b is not None for b in [*in_dims[lead + 1], *in_dims[lead + 2]]):
            outs = [op(*[_pick(a, b, i) for a, b in zip(args, in_dims)]) for i in range(n)]
            stacked = [torch.stack(o) for o in zip(*outs)] if lead else torch.stack(outs)
        else:
            sizes = [x.shape[0] if b is None else x.movedim(b, 0).shape[1] for x, b in zip(xs, x_dims)]
            for k, size in enumerate(sizes):
                if size != sizes[0]:  # checked before folding, so the message gives a slice's sizes
                    raise ValueError(f"compact_bilinear: batch size mismatch: inputs[{k}] has {size} samples but "
                                     f"inputs[0] has {sizes[0]} (in each vmapped slice)")
            batch = sizes[0]
            folded = [_fold(t, b, n) for t, b in zip(args[:lead], in_dims[:lead])]
            out = op(*folded, [_fold(x, b, n) for x, b in zip(xs, x_dims)], *args[lead + 1 :])
            split = lambda t: t.unflatten(0, (n, batch))
            stacked = [split(g) for g in out] if lead else split(out)
        return stacked, [0] * len(stacked) if lead else 0

    return rule


torch.library.register_vmap("compact_bilinear::forward", _vmap_rule(ops.forward, 0))
torch.library.register_vmap("compact_bilinear::backward", _vmap_rule(ops.backward, 1))
