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
def _backward_fake(grad_out, inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm):
    # The checks of the compiled op (cbp.cpp check_grad_out), so a traced call fails as an eager one.
    out = _forward_fake(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm)
    if grad_out.shape != out.shape:
        raise ValueError(f"compact_bilinear: grad_out must have the output's shape {_shape(out.shape)}, "
                         f"got {_shape(grad_out.shape)}")
    if grad_out.device != inputs[0].device:
        raise ValueError(f"compact_bilinear: grad_out must be on {inputs[0].device}, got {grad_out.device}")
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs]


# Autograd of both ops is registered in C++ (csrc/autograd.cpp): the forward saves the inputs and
# hashes and its backward calls ops.backward; ops.backward's own backward calls the two ops again.
