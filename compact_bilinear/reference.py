"""Pure-PyTorch references for compact bilinear pooling.

Two independent ways to compute the same number, used by the tests and the benchmarks:

* :func:`compact_bilinear_pooling_reference`: the composite of ``torch.fft`` ops as people write
  it today (count sketch by ``index_add_``, ``rfft``, broadcast product, ``irfft``). Autograd
  differentiates it.
* :func:`explicit_outer_product_sketch`: forms the outer product ``x_1 (x) ... (x) x_K`` of every
  row explicitly and count-sketches it with the combined hash
  ``(h_1[i_1] + ... + h_K[i_K]) mod d`` and sign ``s_1[i_1] ... s_K[i_K]``. This is the
  definition itself (DESIGN.md section 2); it costs ``prod C_k`` per row, so use it on small sizes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "compact_bilinear_pooling_reference",
    "explicit_outer_product_sketch",
    "random_hashes",
]


def random_hashes(
    input_dims: Sequence[int],
    output_dim: int,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tuple[List[Tensor], List[Tensor]]:
    """Draw one independent hash ``h_k: [C_k] -> [0, d)`` and sign ``s_k`` per input.

    Draws are made on the CPU from ``generator`` (so a seed gives the same hashes on every
    machine) and then moved to ``device``. Returns ``(indices, signs)``: lists of int64
    ``Tensor[C_k]`` in ``[0, output_dim)`` and float32 ``Tensor[C_k]`` of +-1.
    """
    indices, signs = [], []
    for c in input_dims:
        h = torch.randint(0, output_dim, (c,), generator=generator, dtype=torch.int64)
        s = torch.randint(0, 2, (c,), generator=generator, dtype=torch.int64).mul_(2).sub_(1)
        indices.append(h.to(device))
        signs.append(s.to(device=device, dtype=torch.float32))
    return indices, signs


def _spatial(inputs: Sequence[Tensor]) -> torch.Size:
    return next((x.shape[2:] for x in inputs if x.dim() > 2), torch.Size())


def _location_major(x: Tensor, spatial: torch.Size) -> Tensor:
    """(B, C, *S) -> (B, *S, C); a vector (B, C) -> (B, 1, ..., 1, C), which broadcasts."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], *([1] * len(spatial)), x.shape[1])
    return x.movedim(1, -1)


def _channels_first(out: Tensor, spatial: torch.Size, sum_pool: bool) -> Tensor:
    """(B, *S, d) -> (B, d, *S), or (B, d) after summing over S."""
    if len(spatial) and sum_pool:
        out = out.sum(dim=tuple(range(1, 1 + len(spatial))))
    return out.movedim(-1, 1) if out.dim() > 2 else out


def compact_bilinear_pooling_reference(
    inputs: Sequence[Tensor],
    hash_indices: Sequence[Tensor],
    hash_signs: Sequence[Tensor],
    output_dim: int,
    sum_pool: bool = False,
) -> Tensor:
    """Composite ``torch.fft`` implementation (the usual open-source recipe), autograd-friendly.

    Inputs ``Tensor[B, C_k]`` or ``Tensor[B, C_k, *S]``; returns ``Tensor[B, d, *S]`` or
    ``Tensor[B, d]`` (``sum_pool`` or all inputs vectors), in the inputs' dtype.
    """
    spatial = _spatial(inputs)
    spectra = []
    for x, h, s in zip(inputs, hash_indices, hash_signs):
        # Vectors keep singleton spatial dims, so their spectrum is computed once per sample and
        # broadcast over locations, as a careful user would write it.
        xl = _location_major(x, spatial)
        cs = xl.new_zeros(*xl.shape[:-1], output_dim)
        cs = cs.index_add(-1, h, xl * s.to(xl.dtype))
        spectra.append(torch.fft.rfft(cs, dim=-1))
    prod = spectra[0]
    for f in spectra[1:]:
        prod = prod * f
    return _channels_first(torch.fft.irfft(prod, n=output_dim, dim=-1), spatial, sum_pool)


def explicit_outer_product_sketch(
    inputs: Sequence[Tensor],
    hash_indices: Sequence[Tensor],
    hash_signs: Sequence[Tensor],
    output_dim: int,
    sum_pool: bool = False,
) -> Tensor:
    """The definition: count sketch of the explicit outer product, computed in float64.

    Memory is ``rows x prod(C_k)``; meant for small sizes (tests, the naive benchmark column).
    Returns float64 ``Tensor[B, d, *S]`` or ``Tensor[B, d]``.
    """
    spatial = _spatial(inputs)
    batch = inputs[0].shape[0]
    rows = []
    for x in inputs:
        xl = _location_major(x.double(), spatial)
        rows.append(xl.expand(batch, *spatial, xl.shape[-1]).reshape(-1, xl.shape[-1]))
    outer = rows[0]
    comb_h = hash_indices[0].long()
    comb_s = hash_signs[0].double()
    for r, h, s in zip(rows[1:], hash_indices[1:], hash_signs[1:]):
        outer = (outer.unsqueeze(-1) * r.unsqueeze(1)).reshape(r.shape[0], outer.shape[1] * r.shape[1])
        comb_h = (comb_h.unsqueeze(-1) + h.long().unsqueeze(0)).reshape(-1) % output_dim
        comb_s = (comb_s.unsqueeze(-1) * s.double().unsqueeze(0)).reshape(-1)
    out = outer.new_zeros(outer.shape[0], output_dim).index_add_(1, comb_h, outer * comb_s)
    return _channels_first(out.reshape(batch, *spatial, output_dim), spatial, sum_pool)
