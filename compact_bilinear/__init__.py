"""compact_bilinear: fused compact bilinear pooling (Tensor Sketch) for PyTorch.

    from compact_bilinear import STCB, compact_bilinear_pooling
"""
from . import reference
from ._ops import ops
from .functional import compact_bilinear_pooling, signed_sqrt
from .layer import STCB

__all__ = ["STCB", "compact_bilinear_pooling", "signed_sqrt", "reference", "ops"]
__version__ = "0.1.0"
