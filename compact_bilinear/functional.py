"""Functional form of compact bilinear pooling."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _func
from ._ops import ops

__all__ = ["compact_bilinear_pooling", "signed_sqrt"]

ALGORITHMS = ("auto", "fused", "fft", "gram")
SIGNED_SQRT_EPS = 1e-8


_HALF = (torch.float16, torch.bfloat16)


def signed_sqrt(z: Tensor, eps: float = SIGNED_SQRT_EPS) -> Tensor:
    """``sign(z) * (sqrt(|z| + eps) - sqrt(eps))``: the MCB signed square root, shifted so it is
    continuous and its gradient stays finite at 0 (at most ``1 / (2 sqrt(eps))``). float16 and
    bfloat16 are computed in float32 and returned in their own dtype: in float16 eps = 1e-8 is 0,
    and the gradient at 0 would be NaN."""
    w = z.float() if z.dtype in _HALF else z
    return (torch.sign(w) * (torch.sqrt(w.abs() + eps) - eps**0.5)).to(z.dtype)


_signed_sqrt = signed_sqrt  # the keyword argument of compact_bilinear_pooling shadows the name


def _as_tensor_list(name: str, value) -> list:
    if isinstance(value, Tensor) or not isinstance(value, Sequence):
        raise TypeError(f"compact_bilinear_pooling: {name} must be a list or tuple of tensors, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, Tensor):
            raise TypeError(f"compact_bilinear_pooling: {name}[{i}] must be a Tensor, got {type(v).__name__}")
    return list(value)


def compact_bilinear_pooling(
    inputs: Sequence[Tensor],
    hash_indices: Sequence[Tensor],
    hash_signs: Sequence[Tensor],
    output_dim: int,
    *,
    sum_pool: bool = False,
    signed_sqrt: bool = False,
    l2_normalize: bool = False,
    algorithm: str = "auto",
) -> Tensor:
    """Compact bilinear pooling (Tensor Sketch) of K >= 1 inputs.

    ``out[j] = sum over (i_1..i_K) with (h_1[i_1] + ... + h_K[i_K]) mod d == j of
    prod_k s_k[i_k] x_k[i_k]``: the count sketch of the outer product, without forming it.

    Args:
        inputs: K tensors, each ``Tensor[B, C_k]`` (a vector per sample) or
            ``Tensor[B, C_k, *S]`` (a map, channels at dim 1). Maps share ``S``; vectors
            broadcast over every location. float32/float64/float16/bfloat16 (half types
            accumulate in float32 and return their own dtype).
        hash_indices: K int64 ``Tensor[C_k]`` with values in ``[0, output_dim)``.
        hash_signs: K ``Tensor[C_k]`` of +-1 (any real dtype; other values raise).
        output_dim: d >= 1 (any size; the fused kernel takes powers of two up to 16384).
        sum_pool: sum the output over the locations (default False).
        signed_sqrt: apply ``sign(z) sqrt(|z|)`` (default False; see :func:`signed_sqrt`).
        l2_normalize: L2-normalise each output vector over its d channels (default False).
        algorithm: ``"auto"`` (default: the fused kernel where it applies on CUDA, else the
            FFT path; also the FFT path for a backward whose half spectra the fused kernel
            would keep in global memory; on the CPU the Gram path where it costs less),
            ``"fused"`` (error if it cannot apply), ``"fft"``, or ``"gram"`` (two inputs and
            an output without locations: the count sketch of the Gram matrix ``X Y^T``
            summed over locations, a GEMM instead of FFTs; on CUDA only when asked for).

    Returns:
        ``Tensor[B, d, *S]``, or ``Tensor[B, d]`` when ``sum_pool`` or every input is a vector.
    """
    inputs = _as_tensor_list("inputs", inputs)
    hash_indices = _as_tensor_list("hash_indices", hash_indices)
    hash_signs = _as_tensor_list("hash_signs", hash_signs)
    # len(), not bool(): torch 2.11's Dynamo cannot trace bool() of a list (fullgraph compile failed).
    # Checked here: without a tensor the op itself cannot even be dispatched.
    if len(inputs) == 0:
        raise ValueError("compact_bilinear_pooling: inputs must hold at least one tensor, got none")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"compact_bilinear_pooling: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(output_dim, int) or isinstance(output_dim, bool):
        raise TypeError(f"compact_bilinear_pooling: output_dim must be an int, got {type(output_dim).__name__}")
    # (Meta tensors have no autocast state to ask about: torch raises for the device type.)
    autocast = inputs[0].device.type != "meta" and torch.is_autocast_enabled(inputs[0].device.type)
    if autocast:
        # Under autocast, run in the autocast dtype: the kernels accumulate in float32 anyway.
        dtype = torch.get_autocast_dtype(inputs[0].device.type)
        inputs = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    elif all(x.is_floating_point() for x in inputs) and len({x.dtype for x in inputs}) > 1:
        dtype = inputs[0].dtype
        for x in inputs[1:]:
            dtype = torch.promote_types(dtype, x.dtype)
        inputs = [x.to(dtype) for x in inputs]
    # The autocast-off context only where autocast is on: entering it costs about 3 us per call.
    with torch.autocast(inputs[0].device.type, enabled=False) if autocast else contextlib.nullcontext():
        # The ops' autograd is C++, which torch.func transforms and forward-mode AD cannot use;
        # under those the same ops run through Python Functions (_func.py).
        if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
            out = _func.forward(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm)
        else:
            out = ops.forward(inputs, hash_indices, hash_signs, output_dim, sum_pool, algorithm)
    if signed_sqrt or l2_normalize:
        # In float32 for float16 and bfloat16 outputs: both eps (1e-8, and F.normalize's 1e-12) are 0
        # in float16, so an output of 0 (a zero location, an empty bucket) gave NaN values and
        # gradients there.
        y = out.float() if out.dtype in _HALF else out
        if signed_sqrt:
            y = _signed_sqrt(y)
        if l2_normalize:
            y = F.normalize(y, dim=1)
        out = y.to(out.dtype)
    return out
