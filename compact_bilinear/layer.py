"""The STCB module: compact bilinear fusion of K inputs with its own fixed hashes."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from .functional import ALGORITHMS, compact_bilinear_pooling
from .reference import random_hashes

__all__ = ["STCB"]


class STCB(nn.Module):
    """Spatiotemporal compact bilinear fusion (compact bilinear pooling of K >= 1 inputs).

    Args:
        input_dims: channels ``C_k`` of each input.
        output_dim: sketch size d (MCB uses 16000; 8192 is a common choice).
        sum_pool: sum over spatial locations, giving ``Tensor[B, d]`` (default False).
        signed_sqrt: signed square root of the output (default False).
        l2_normalize: L2-normalise each output vector over d (default False).
        seed: seed of ``torch.Generator`` drawing one independent hash and sign per input
            (default 0); the same seed gives the same hashes on every machine.
        algorithm: ``"auto"`` (default), ``"fused"``, ``"fft"`` or ``"gram"``; see
            :func:`compact_bilinear.compact_bilinear_pooling`.

    Shapes: ``layer(x_1, ..., x_K)`` with ``x_k`` ``Tensor[B, C_k]`` or ``Tensor[B, C_k, *S]``
    returns ``Tensor[B, d, *S]``, or ``Tensor[B, d]`` with ``sum_pool`` or all-vector inputs.

    The hashes are persistent buffers (in ``state_dict``, moved by ``.to()``), exposed as
    ``hash_indices`` (int64, in ``[0, d)``) and ``hash_signs`` (float, +-1), one per input.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        *,
        sum_pool: bool = False,
        signed_sqrt: bool = False,
        l2_normalize: bool = False,
        seed: int = 0,
        algorithm: str = "auto",
    ):
        super().__init__()
        if isinstance(input_dims, int) or not all(isinstance(c, int) and c >= 1 for c in input_dims) or not input_dims:
            raise ValueError(f"STCB: input_dims must be a non-empty sequence of positive ints, got {input_dims!r}")
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"STCB: output_dim must be an int >= 1, got {output_dim!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"STCB: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.input_dims = tuple(input_dims)
        self.output_dim = output_dim
        self.sum_pool = sum_pool
        self.signed_sqrt = signed_sqrt
        self.l2_normalize = l2_normalize
        self.seed = seed
        self.algorithm = algorithm
        indices, signs = random_hashes(self.input_dims, output_dim, torch.Generator().manual_seed(seed))
        for k, (h, s) in enumerate(zip(indices, signs)):
            self.register_buffer(f"hash_indices_{k}", h)
            self.register_buffer(f"hash_signs_{k}", s)

    @property
    def hash_indices(self) -> Tuple[Tensor, ...]:
        return tuple(getattr(self, f"hash_indices_{k}") for k in range(len(self.input_dims)))

    @property
    def hash_signs(self) -> Tuple[Tensor, ...]:
        return tuple(getattr(self, f"hash_signs_{k}") for k in range(len(self.input_dims)))

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.input_dims):
            raise ValueError(f"STCB: expected {len(self.input_dims)} inputs (input_dims={self.input_dims}), got {len(inputs)}")
        for k, (x, c) in enumerate(zip(inputs, self.input_dims)):
            if not isinstance(x, Tensor):
                raise TypeError(f"STCB: input {k} must be a Tensor, got {type(x).__name__}")
            if x.dim() < 2 or x.shape[1] != c:
                raise ValueError(f"STCB: input {k} must have shape (B, {c}) or (B, {c}, *S), got {tuple(x.shape)}")
        return compact_bilinear_pooling(
            inputs,
            self.hash_indices,
            self.hash_signs,
            self.output_dim,
            sum_pool=self.sum_pool,
            signed_sqrt=self.signed_sqrt,
            l2_normalize=self.l2_normalize,
            algorithm=self.algorithm,
        )

    def extra_repr(self) -> str:
        return (
            f"input_dims={self.input_dims}, output_dim={self.output_dim}, sum_pool={self.sum_pool}, "
            f"signed_sqrt={self.signed_sqrt}, l2_normalize={self.l2_normalize}, seed={self.seed}, "
            f"algorithm={self.algorithm!r}"
        )
