"""Loads the compiled kernels and teaches PyTorch about them: fake (meta) kernels for
torch.compile, and autograd through the registered backward op."""
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


@torch.library.register_fake("compact_bilinear::backward")
def _backward_fake(grad_out, inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm):
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs]


def _setup_context(ctx, inputs, output):
    xs, hashes, signs, output_dim, sum_pool, algorithm = inputs
    # Only the inputs and hashes are kept: the backward recomputes sketches and spectra.
    ctx.save_for_backward(*xs, *hashes, *signs)
    ctx.k = len(xs)
    ctx.args = (output_dim, sum_pool, algorithm)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    k = ctx.k
    xs, hashes, signs = list(saved[:k]), list(saved[k : 2 * k]), list(saved[2 * k :])
    grads = ops.backward(grad, xs, hashes, signs, *ctx.args)
    return list(grads), [None] * k, [None] * k, None, None, None


torch.library.register_autograd("compact_bilinear::forward", _backward, setup_context=_setup_context)


def _no_double_backward_setup(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "compact_bilinear: double backward (differentiating the gradient, e.g. a gradient penalty) "
        "is not supported; compute such terms with compact_bilinear.reference instead"
    )


torch.library.register_autograd(
    "compact_bilinear::backward", _no_double_backward, setup_context=_no_double_backward_setup
)
