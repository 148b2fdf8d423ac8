"""The pyramid's fusion blocks: temporal fusion of snippets (level 1) and spatiotemporal
attention (level 2). Both use :class:`compact_bilinear.STCB`, imported lazily so that the
backbones and variant A work without the compiled extension.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["make_stcb", "TemporalFusion", "SpatiotemporalAttention", "TEMPORAL_FUSIONS", "ATTENTION_GUIDANCES"]

#: Level-1 fusion of the T snippet vectors. ``mean`` is TSN's average consensus (variant B).
TEMPORAL_FUSIONS = ("stcb", "concat", "sum", "mean")
#: Level-2 guidance: 1 snippet (the middle one), T snippets concatenated, T fused by STCB.
ATTENTION_GUIDANCES = ("stcb", "concat", "single")


def make_stcb(
    input_dims: Sequence[int],
    output_dim: int,
    *,
    seed: int,
    post_norm: bool = True,
    algorithm: str = "auto",
) -> nn.Module:
    """``compact_bilinear.STCB(input_dims, output_dim)`` with signed sqrt and L2 normalisation
    (``post_norm``, the MCB convention) and its own ``seed``.

    Raises ``ImportError`` with instructions when the compiled library is not available.
    """
    try:
        from compact_bilinear import STCB
    except ImportError as e:
        raise ImportError(
            "this pyramid variant needs compact_bilinear.STCB, which could not be imported "
            f"({e}). Build the extension first (`pip install --no-build-isolation .` at the repo "
            "root), or use variant='A', which needs no STCB"
        ) from e
    return STCB(
        list(input_dims),
        output_dim,
        signed_sqrt=post_norm,
        l2_normalize=post_norm,
        seed=seed,
        algorithm=algorithm,
    )


class TemporalFusion(nn.Module):
    """Fuse the T snippet vectors of the flow stream into one motion vector.

    ``Tensor[B, T, C]`` -> ``Tensor[B, out_dim]``:

    * ``"stcb"``: STCB of the T vectors (K = T inputs) to ``stcb_dim``, then signed sqrt and
      L2 norm if ``post_norm``; needs ``T >= 2``. ``out_dim = stcb_dim``.
    * ``"concat"``: ``[v_1, ..., v_T]``; ``out_dim = T * C``.
    * ``"sum"``: ``v_1 + ... + v_T``; ``out_dim = C``.
    * ``"mean"``: TSN's average consensus; ``out_dim = C``; any T.
    * ``"single"``: the middle snippet ``v_{T // 2}`` (the 1-snippet attention guidance);
      ``out_dim = C``.

    Args:
        mode: one of the above.
        num_snippets: T (fixed for ``stcb`` and ``concat``, whose parameters depend on it).
        channels: C.
        stcb_dim: STCB output dimension (``stcb`` only).
        seed: STCB hash seed (``stcb`` only).
        post_norm: signed sqrt + L2 after STCB (default ``True``).
        algorithm: passed to STCB (default ``"auto"``).
    """

    def __init__(
        self,
        mode: str,
        num_snippets: int,
        channels: int,
        *,
        stcb_dim: int = 4096,
        seed: int = 0,
        post_norm: bool = True,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        if mode not in TEMPORAL_FUSIONS + ("single",):
            raise ValueError(f"mode: expected one of {TEMPORAL_FUSIONS + ('single',)}, got {mode!r}")
        if mode == "stcb" and num_snippets < 2:
            raise ValueError(
                f"num_snippets: STCB fusion of snippets needs at least 2, got {num_snippets}; "
                "use 'concat' or 'sum' for a single snippet"
            )
        self.mode = mode
        self.num_snippets = num_snippets
        self.channels = channels
        self.stcb = None
        if mode == "stcb":
            self.stcb = make_stcb([channels] * num_snippets, stcb_dim, seed=seed, post_norm=post_norm, algorithm=algorithm)
            self.stcb_spec = {"input_dims": [channels] * num_snippets, "output_dim": stcb_dim, "seed": seed}
        self.out_dim = {"stcb": stcb_dim, "concat": num_snippets * channels}.get(mode, channels)

    def forward(self, snippets: Tensor) -> Tensor:
        """``Tensor[B, T, C]`` -> ``Tensor[B, out_dim]``."""
        if snippets.dim() != 3 or snippets.shape[2] != self.channels:
            raise ValueError(f"snippets: expected Tensor[B, T, {self.channels}], got shape {tuple(snippets.shape)}")
        t = snippets.shape[1]
        if self.mode in ("stcb", "concat") and t != self.num_snippets:
            raise ValueError(f"snippets: {self.mode!r} fusion was built for T={self.num_snippets}, got T={t}")
        if self.mode == "stcb":
            return self.stcb(*snippets.unbind(1))
        if self.mode == "concat":
            return snippets.flatten(1)
        if self.mode == "sum":
            return snippets.sum(1)
        if self.mode == "mean":
            return snippets.mean(1)
        return snippets[:, t // 2]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_snippets={self.num_snippets}, channels={self.channels}, out_dim={self.out_dim}"


class SpatiotemporalAttention(nn.Module):
    """Level 2: motion-guided attention pooling of the spatial feature map.

    At every location STCB merges the spatial feature vector with the guidance (motion) vector
    (``attention_dim`` channels, signed sqrt and L2 per location if ``post_norm``); a 1x1 conv
    (``attention_dim -> hidden``), ReLU and a 1x1 conv (``hidden -> 1``) score the location; a
    softmax over the ``h x w`` locations turns scores into weights that pool the map.

    Args:
        map_channels: C of the spatial map.
        guide_channels: G of the guidance vector.
        attention_dim: STCB output dimension per location (assumed default 4096).
        hidden: width of the first 1x1 conv (assumed default 512).
        seed: STCB hash seed.
        post_norm: signed sqrt + L2 after STCB (default ``True``).
        algorithm: passed to STCB (default ``"auto"``).
    """

    def __init__(
        self,
        map_channels: int,
        guide_channels: int,
        *,
        attention_dim: int = 4096,
        hidden: int = 512,
        seed: int = 0,
        post_norm: bool = True,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        self.map_channels = map_channels
        self.guide_channels = guide_channels
        self.stcb = make_stcb([map_channels, guide_channels], attention_dim, seed=seed, post_norm=post_norm, algorithm=algorithm)
        self.stcb_spec = {"input_dims": [map_channels, guide_channels], "output_dim": attention_dim, "seed": seed}
        self.conv1 = nn.Conv2d(attention_dim, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        # No bias: the softmax over locations ignores a constant shift of the scores, so a bias
        # here could never receive a gradient.
        self.conv2 = nn.Conv2d(hidden, 1, 1, bias=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the score conv lost its bias still hold it. It never changed
        # the output (the softmax ignores a constant shift), so dropping it loads them exactly.
        state_dict.pop(prefix + "conv2.bias", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, feature_map: Tensor, guide: Tensor) -> Tuple[Tensor, Tensor]:
        """Attend.

        Args:
            feature_map: ``Tensor[B, C, h, w]``.
            guide: ``Tensor[B, G]``, broadcast to every location by STCB.

        Returns:
            ``(attended, weights)``: ``Tensor[B, C]`` (the weighted sum of the map's location
            vectors) and ``Tensor[B, h, w]`` (non-negative, summing to 1 over locations).
        """
        if feature_map.dim() != 4 or feature_map.shape[1] != self.map_channels:
            raise ValueError(
                f"feature_map: expected Tensor[B, {self.map_channels}, h, w], got shape {tuple(feature_map.shape)}"
            )
        if guide.dim() != 2 or guide.shape[1] != self.guide_channels or guide.shape[0] != feature_map.shape[0]:
            raise ValueError(
                f"guide: expected Tensor[{feature_map.shape[0]}, {self.guide_channels}], got shape {tuple(guide.shape)}"
            )
        b, c, h, w = feature_map.shape
        z = self.stcb(feature_map, guide)  # [B, attention_dim, h, w]
        scores = self.conv2(self.relu(self.conv1(z)))  # [B, 1, h, w]
        weights = torch.softmax(scores.flatten(1), dim=1)  # over the h*w locations
        attended = torch.bmm(feature_map.flatten(2), weights.unsqueeze(2)).squeeze(2)
        return attended, weights.view(b, h, w)
