"""The Spatiotemporal Pyramid Network (Wang, Long, Wang, Yu, CVPR 2017) and its ablation variants."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from .backbones import Backbone, BackboneOutput, build_backbone
from .fusion import ATTENTION_GUIDANCES, TEMPORAL_FUSIONS, SpatiotemporalAttention, TemporalFusion, make_stcb

__all__ = ["SpatiotemporalPyramid", "VARIANTS", "SINGLE_STREAM_VARIANTS"]

#: A two-stream late fusion baseline; B + two-stream STCB fusion; C + multi-snippet temporal
#: fusion; D + spatiotemporal attention (the full pyramid).
VARIANTS = ("A", "B", "C", "D")
#: Single-stream models of the paper's first two ablation tables: the spatial ConvNet with
#: average pooling, the spatial ConvNet with flow-guided attention, the temporal ConvNet with
#: multi-snippet fusion.
SINGLE_STREAM_VARIANTS = ("rgb", "rgb_attention", "flow")

# Offsets from ``stcb_seed`` so that every STCB of a model draws its own hashes.
_SEED_TEMPORAL, _SEED_GUIDANCE, _SEED_ATTENTION, _SEED_FUSION = 1, 2, 3, 4


def _classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    fc = nn.Linear(in_features, num_classes)
    # TSN's initialisation of a new classifier on a pretrained backbone: N(0, 0.001), zero bias.
    nn.init.normal_(fc.weight, 0.0, 0.001)
    nn.init.zeros_(fc.bias)
    return nn.Sequential(nn.Dropout(p=dropout), fc)


class SpatiotemporalPyramid(nn.Module):
    r"""Spatiotemporal Pyramid Network for video action recognition, and its ablation variants.

    Two backbones of the same architecture: the spatial (RGB) one sees one frame, the temporal
    (flow) one sees T stacked-flow snippets of L frames each; its weights are shared across the
    snippets (one batched pass over ``B * T`` snippets).

    * Level 1 (``C``, ``D``): the T snippet vectors fused into a motion vector by
      ``temporal_fusion`` (STCB to ``motion_dim``, or ``concat`` / ``sum`` for the ablation).
    * Level 2 (``D``): attention. At every location of the spatial map, STCB (to
      ``attention_dim``) merges the spatial vector with the motion guidance
      (``attention_guidance``: ``"stcb"`` T snippets fused by STCB, which *is* the level-1 output
      when ``temporal_fusion="stcb"``; ``"concat"``; ``"single"``, the middle snippet); then 1x1
      conv (``attention_hidden``), ReLU, 1x1 conv to 1 channel, softmax over the ``h x w``
      locations; the weights pool the spatial map into the attended vector.
    * Level 3 (``B``, ``C``, ``D``): STCB (to ``fusion_dim``) of the visual vector (spatial map
      average pooled), the attended vector (``D`` only) and the motion vector; signed sqrt and
      L2 norm; dropout; linear classifier. One loss (cross-entropy on the logits) trains it all.

    Variants:

    * ``"A"``: two-stream baseline. Each stream has its own classifier (dropout
      ``rgb_dropout`` / ``flow_dropout``, TSN's 0.8 / 0.7); the flow stream's score is the
      average of its T snippet scores (TSN consensus); ``logits = (w_rgb * rgb_logits + w_flow *
      flow_logits) / (w_rgb + w_flow)`` with ``late_fusion_weights = (1, 1.5)``: the usual 1 : 1.5
      weighting, divided by the weight sum so that the fused logits (and a loss on them) stay on
      the scale of one stream's; the prediction (argmax) is that of the plain weighted sum.
      Needs no STCB.
    * ``"B"``: STCB fusion of the visual vector and the motion vector, where the motion vector is
      the TSN average of the T snippet vectors (``temporal_fusion`` is not used: replacing this
      average is what C adds).
    * ``"C"``: B with the motion vector from level 1 (``temporal_fusion``).
    * ``"D"``: C with level-2 attention: the full pyramid.

    Single-stream ablation models (the paper's first two tables), each ending in dropout
    (``dropout``) and a linear classifier:

    * ``"rgb"``: spatial ConvNet, average-pooled map (no flow backbone; ``flow`` may be ``None``).
    * ``"rgb_attention"``: spatial ConvNet whose map is pooled by the level-2 attention, guided
      by the flow snippets as ``attention_guidance`` says; classifies the attended vector.
    * ``"flow"``: temporal ConvNet with level-1 fusion of the T snippets (``temporal_fusion``;
      ``"concat"`` or ``"sum"`` with ``num_snippets=1`` is the 1-path row); no RGB backbone,
      ``rgb`` may be ``None``.

    Inputs are backbone-agnostic (what :mod:`pyramid.data` produces); each backbone applies its
    own normalisation internally: BN-Inception BGR 0..255 minus (104, 117, 128) and flow
    ``128 * x`` (stored value minus 128); torchvision nets and ``tiny`` ImageNet mean/std and
    flow ``(v / 255 - 0.5) / 0.226``.

    Assumed values (not given by the slides; see ``reference/paper-notes.md``): ``motion_dim``
    4096, ``attention_dim`` 4096, ``fusion_dim`` 8192, ``attention_hidden`` 512, ``dropout``
    0.5, ``post_norm`` (signed sqrt + L2 after the level-1 and level-2 STCB) on, the middle
    snippet for ``"single"`` guidance, B's average consensus, classifier init N(0, 0.001).
    From the slides / TSN: ``num_snippets`` 3, ``snippet_length`` 10, partial BN,
    cross-modality initialisation, the 1 : 1.5 late fusion and the 0.8 / 0.7 stream dropouts of A.

    Args:
        num_classes: number of action classes (101 for UCF101).
        backbone: backbone name, see :func:`pyramid.models.available_backbones`. Default
            ``"bninception"``.
        variant: ``"A"``, ``"B"``, ``"C"`` or ``"D"`` (default, the full pyramid), or one of
            the single-stream ablation models ``"rgb"``, ``"rgb_attention"``, ``"flow"``.
        num_snippets: T, flow snippets per sample. Default 3.
        snippet_length: L, flow frames per snippet; the flow backbone takes 2L channels.
            Default 10.
        motion_dim: level-1 STCB output dimension. Default 4096 (assumed).
        attention_dim: level-2 STCB output dimension per location. Default 4096 (assumed).
        fusion_dim: level-3 STCB output dimension. Default 8192 (assumed).
        attention_hidden: channels of the first attention 1x1 conv. Default 512 (assumed).
        dropout: dropout before the classifier of B, C, D and the single-stream models.
            Default 0.5 (assumed).
        temporal_fusion: level 1, ``"stcb"`` (default), ``"concat"`` or ``"sum"`` (C, D, flow).
        attention_guidance: level 2, ``"stcb"`` (default), ``"concat"`` or ``"single"``
            (D, rgb_attention).
        partial_bn: freeze every BN layer but the first in both backbones. Default ``True``.
        rgb_checkpoint: path to weights for the RGB backbone (e.g. ImageNet BN-Inception), or
            ``None`` (default, random weights). Nothing is downloaded.
        flow_checkpoint: path to weights for the flow backbone; default ``None`` falls back to
            ``rgb_checkpoint`` converted by cross-modality initialisation.
        cross_modality_init: initialise the flow backbone's first conv from the RGB weights
            averaged over the 3 channels and replicated to 2L. Default ``True``.
        stcb_seed: base seed of the STCB hashes; the STCBs use ``stcb_seed + 1`` (level 1),
            ``+ 2`` (separate guidance fusion), ``+ 3`` (attention), ``+ 4`` (level 3). Default 0.
        stcb_algorithm: passed to every STCB. Default ``"auto"``.
        post_norm: signed sqrt + L2 after the level-1 and level-2 STCB (level 3 always has
            them). Default ``True`` (assumed, MCB convention).
        rgb_dropout: variant A's RGB classifier dropout. Default 0.8 (TSN).
        flow_dropout: variant A's flow classifier dropout. Default 0.7 (TSN).
        late_fusion_weights: variant A's ``(w_rgb, w_flow)``. Default ``(1.0, 1.5)``.
        backbone_kwargs: extra arguments of the backbone class (``tiny``: ``width``).

    Shapes:
        ``forward(rgb: Tensor[B, 3, H, W], flow: Tensor[B, T, 2L, H', W'])`` ->
        ``Tensor[B, num_classes]``; with ``return_attention=True`` also the attention map
        ``Tensor[B, h, w]`` (``None`` for the variants without attention: A, B, C, rgb, flow).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "bninception",
        variant: str = "D",
        num_snippets: int = 3,
        snippet_length: int = 10,
        motion_dim: int = 4096,
        attention_dim: int = 4096,
        fusion_dim: int = 8192,
        attention_hidden: int = 512,
        dropout: float = 0.5,
        temporal_fusion: str = "stcb",
        attention_guidance: str = "stcb",
        partial_bn: bool = True,
        rgb_checkpoint: Optional[str] = None,
        flow_checkpoint: Optional[str] = None,
        cross_modality_init: bool = True,
        *,
        stcb_seed: int = 0,
        stcb_algorithm: str = "auto",
        post_norm: bool = True,
        rgb_dropout: float = 0.8,
        flow_dropout: float = 0.7,
        late_fusion_weights: Sequence[float] = (1.0, 1.5),
        backbone_kwargs: Optional[Dict] = None,
    ) -> None:
        super().__init__()
        if isinstance(variant, str) and variant.upper() in VARIANTS:
            variant = variant.upper()
        elif isinstance(variant, str) and variant.lower() in SINGLE_STREAM_VARIANTS:
            variant = variant.lower()
        else:
            raise ValueError(f"variant: expected one of {VARIANTS + SINGLE_STREAM_VARIANTS}, got {variant!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if num_snippets < 1:
            raise ValueError(f"num_snippets: expected T >= 1, got {num_snippets}")
        if snippet_length < 1:
            raise ValueError(f"snippet_length: expected L >= 1, got {snippet_length}")
        if temporal_fusion not in TEMPORAL_FUSIONS[:3]:
            raise ValueError(f"temporal_fusion: expected one of {TEMPORAL_FUSIONS[:3]}, got {temporal_fusion!r}")
        if attention_guidance not in ATTENTION_GUIDANCES:
            raise ValueError(f"attention_guidance: expected one of {ATTENTION_GUIDANCES}, got {attention_guidance!r}")
        for name, value in (("motion_dim", motion_dim), ("attention_dim", attention_dim), ("fusion_dim", fusion_dim), ("attention_hidden", attention_hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value in (("dropout", dropout), ("rgb_dropout", rgb_dropout), ("flow_dropout", flow_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
        if len(late_fusion_weights) != 2 or sum(late_fusion_weights) <= 0:
            raise ValueError(f"late_fusion_weights: expected (w_rgb, w_flow) with a positive sum, got {late_fusion_weights!r}")

        # Everything needed to rebuild the model (without the checkpoint paths, whose weights
        # end up in the state dict anyway).
        self.config = dict(
            num_classes=num_classes, backbone=backbone, variant=variant, num_snippets=num_snippets,
            snippet_length=snippet_length, motion_dim=motion_dim, attention_dim=attention_dim,
            fusion_dim=fusion_dim, attention_hidden=attention_hidden, dropout=dropout,
            temporal_fusion=temporal_fusion, attention_guidance=attention_guidance,
            partial_bn=partial_bn, cross_modality_init=cross_modality_init, stcb_seed=stcb_seed,
            stcb_algorithm=stcb_algorithm, post_norm=post_norm, rgb_dropout=rgb_dropout,
            flow_dropout=flow_dropout, late_fusion_weights=tuple(late_fusion_weights),
            backbone_kwargs=dict(backbone_kwargs or {}),
        )
        self.num_classes = num_classes
        self.variant = variant
        self.num_snippets = num_snippets
        self.snippet_length = snippet_length
        self.temporal_fusion_mode = {"B": "mean", "C": temporal_fusion, "D": temporal_fusion, "flow": temporal_fusion}.get(variant)
        self.attention_guidance = attention_guidance if variant in ("D", "rgb_attention") else None
        self.late_fusion_weights = tuple(float(w) for w in late_fusion_weights)
        self._partial_bn = False  # read by train(); set for real below

        bkw = dict(backbone_kwargs or {})
        # The single-stream models build only the backbone they use.
        self.rgb_backbone: Optional[Backbone] = None
        self.flow_backbone: Optional[Backbone] = None
        if variant != "flow":
            self.rgb_backbone = build_backbone(backbone, modality="rgb", checkpoint=rgb_checkpoint, **bkw)
        if variant != "rgb":
            self.flow_backbone = build_backbone(
                backbone,
                modality="flow",
                in_channels=2 * snippet_length,
                checkpoint=flow_checkpoint if flow_checkpoint is not None else rgb_checkpoint,
                cross_modality_init=cross_modality_init,
                **bkw,
            )
        c_rgb = self.rgb_backbone.out_channels if self.rgb_backbone is not None else 0
        c_flow = self.flow_backbone.out_channels if self.flow_backbone is not None else 0
        stcb_kw = dict(post_norm=post_norm, algorithm=stcb_algorithm)

        self.rgb_classifier = self.flow_classifier = None
        self.temporal_fusion = self.guidance = self.attention = self.fusion = self.classifier = None
        if variant == "rgb":
            self.classifier = _classifier(c_rgb, num_classes, dropout)
        elif variant == "flow":
            self.temporal_fusion = TemporalFusion(
                temporal_fusion, num_snippets, c_flow, stcb_dim=motion_dim, seed=stcb_seed + _SEED_TEMPORAL, **stcb_kw
            )
            self.classifier = _classifier(self.temporal_fusion.out_dim, num_classes, dropout)
        elif variant == "rgb_attention":
            self.guidance = TemporalFusion(
                attention_guidance, num_snippets, c_flow, stcb_dim=motion_dim, seed=stcb_seed + _SEED_GUIDANCE, **stcb_kw
            )
            self.attention = SpatiotemporalAttention(
                c_rgb, self.guidance.out_dim, attention_dim=attention_dim, hidden=attention_hidden,
                seed=stcb_seed + _SEED_ATTENTION, **stcb_kw
            )
            self.classifier = _classifier(c_rgb, num_classes, dropout)
        elif variant == "A":
            self.rgb_classifier = _classifier(c_rgb, num_classes, rgb_dropout)
            self.flow_classifier = _classifier(c_flow, num_classes, flow_dropout)
        else:
            # Level 1.
            self.temporal_fusion = TemporalFusion(
                self.temporal_fusion_mode, num_snippets, c_flow, stcb_dim=motion_dim, seed=stcb_seed + _SEED_TEMPORAL, **stcb_kw
            )
            fused_dims = [c_rgb]
            # Level 2.
            if variant == "D":
                if attention_guidance == temporal_fusion:
                    guide_dim = self.temporal_fusion.out_dim  # the pyramid: guided by level 1
                else:
                    self.guidance = TemporalFusion(
                        attention_guidance, num_snippets, c_flow, stcb_dim=motion_dim, seed=stcb_seed + _SEED_GUIDANCE, **stcb_kw
                    )
                    guide_dim = self.guidance.out_dim
                self.attention = SpatiotemporalAttention(
                    c_rgb, guide_dim, attention_dim=attention_dim, hidden=attention_hidden, seed=stcb_seed + _SEED_ATTENTION, **stcb_kw
                )
                fused_dims.append(c_rgb)
            fused_dims.append(self.temporal_fusion.out_dim)
            # Level 3: signed sqrt + L2 always (the level-3 definition).
            self.fusion = make_stcb(fused_dims, fusion_dim, seed=stcb_seed + _SEED_FUSION, post_norm=True, algorithm=stcb_algorithm)
            self.fusion_spec = {"input_dims": fused_dims, "output_dim": fusion_dim, "seed": stcb_seed + _SEED_FUSION}
            self.classifier = _classifier(fusion_dim, num_classes, dropout)

        self.set_partial_bn(partial_bn)

    # ------------------------------------------------------------------------------------------
    @property
    def stcb_specs(self) -> List[Dict]:
        """``[{"name", "input_dims", "output_dim", "seed"}]`` of every STCB in the model."""
        specs = []
        for name, mod in (("temporal_fusion", self.temporal_fusion), ("guidance", self.guidance), ("attention", self.attention)):
            if mod is not None and getattr(mod, "stcb", None) is not None:
                specs.append({"name": name + ".stcb", **mod.stcb_spec})
        if self.fusion is not None:
            specs.append({"name": "fusion", **self.fusion_spec})
        return specs

    def set_partial_bn(self, enabled: bool = True) -> "SpatiotemporalPyramid":
        """Partial BN on both backbones (see :meth:`Backbone.set_partial_bn`)."""
        self._partial_bn = bool(enabled)
        for bb in self.backbones():
            bb.set_partial_bn(enabled)
        return self.train(self.training)

    def backbones(self) -> List[Backbone]:
        """The backbones this variant has: ``[rgb, flow]``, or one for single-stream models."""
        return [bb for bb in (self.rgb_backbone, self.flow_backbone) if bb is not None]

    @property
    def partial_bn(self) -> bool:
        return self._partial_bn

    def train(self, mode: bool = True) -> "SpatiotemporalPyramid":
        """``nn.Module.train``; with partial BN, every BN layer except each backbone's first stays
        in eval mode (frozen running statistics) even when ``mode`` is ``True``."""
        super().train(mode)  # the backbones' own train() re-freezes their layers
        if mode and self._partial_bn:
            for bb in self.backbones():
                for bn in bb.frozen_bn_layers():
                    bn.eval()
        return self

    def parameter_groups(self) -> List[Dict]:
        """Trainable parameters split for per-group learning rates (TSN uses a different lr for
        the RGB and flow nets): ``[{"name": "rgb_backbone" | "flow_backbone" | "head",
        "params": [...]}]``. Parameters frozen by partial BN are left out."""
        groups = {"rgb_backbone": [], "flow_backbone": [], "head": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[name.split(".")[0] if name.startswith(("rgb_backbone.", "flow_backbone.")) else "head"].append(p)
        return [{"name": k, "params": v} for k, v in groups.items() if v]

    # ------------------------------------------------------------------------------------------
    def _check_inputs(self, rgb: Optional[Tensor], flow: Optional[Tensor]) -> None:
        two_l = 2 * self.snippet_length
        uses_rgb, uses_flow = self.rgb_backbone is not None, self.flow_backbone is not None

        def desc(x):
            return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__

        if uses_rgb and (not isinstance(rgb, Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3):
            raise ValueError(f"rgb: expected Tensor[B, 3, H, W] in [0, 1], got {desc(rgb)}")
        if uses_flow and (not isinstance(flow, Tensor) or flow.dim() != 5 or flow.shape[2] != two_l):
            raise ValueError(
                f"flow: expected Tensor[B, T, {two_l}, H, W] (2L = {two_l} channels, L = snippet_length), got {desc(flow)}"
            )
        if not (uses_rgb and uses_flow):
            return  # a single-stream model ignores the other input (it may be None)
        if flow.shape[0] != rgb.shape[0]:
            raise ValueError(f"flow: batch size {flow.shape[0]} differs from rgb's {rgb.shape[0]}")

    def _check_snippet_count(self, flow: Tensor) -> None:
        fixed_t = self.temporal_fusion_mode in ("stcb", "concat") or self.attention_guidance in ("stcb", "concat")
        if fixed_t and flow.shape[1] != self.num_snippets:
            raise ValueError(f"flow: expected T = num_snippets = {self.num_snippets} snippets, got {flow.shape[1]}")

    def forward_streams(self, rgb: Tensor, flow: Tensor) -> Tuple[Tensor, Tensor]:
        """Variant A only: the two streams' logits ``(rgb_logits, flow_logits)``, each
        ``Tensor[B, num_classes]`` (the flow one averaged over the T snippets), e.g. to train the
        streams with separate losses as TSN does."""
        if self.variant != "A":
            raise RuntimeError(f"forward_streams: only variant 'A' has separate stream classifiers, this is {self.variant!r}")
        self._check_inputs(rgb, flow)
        self._check_snippet_count(flow)
        b, t = flow.shape[:2]
        rgb_logits = self.rgb_classifier(self.rgb_backbone(rgb).pooled)
        snippet_vectors = self.flow_backbone(flow.flatten(0, 1)).pooled  # weights shared across T
        flow_logits = self.flow_classifier(snippet_vectors).view(b, t, -1).mean(1)
        return rgb_logits, flow_logits

    def forward(
        self, rgb: Optional[Tensor], flow: Optional[Tensor], return_attention: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor]]]:
        """Classify.

        Args:
            rgb: ``Tensor[B, 3, H, W]``, float in ``[0, 1]``, RGB order (may be ``None`` for
                variant ``"flow"``).
            flow: ``Tensor[B, T, 2L, H, W]``, float in ``[-1, 1]`` (stored value ``v`` as
                ``(v - 128) / 128``), channels ``x1, y1, x2, y2, ...`` (may be ``None`` for
                variant ``"rgb"``).
            return_attention: also return the attention map. Default ``False``.

        Returns:
            ``logits: Tensor[B, num_classes]``, or ``(logits, attention)`` with
            ``attention: Tensor[B, h, w]`` (weights summing to 1 over the locations of the
            spatial map) for D and rgb_attention, ``None`` for the others.
        """
        attention = None
        if self.variant == "A":
            rgb_logits, flow_logits = self.forward_streams(rgb, flow)
            w_rgb, w_flow = self.late_fusion_weights
            logits = (w_rgb * rgb_logits + w_flow * flow_logits) / (w_rgb + w_flow)
        else:
            self._check_inputs(rgb, flow)
            spatial = self.rgb_backbone(rgb) if self.rgb_backbone is not None else None
            snippets = None
            if self.flow_backbone is not None:
                self._check_snippet_count(flow)
                b, t = flow.shape[:2]
                # One batched pass over the B*T snippets: the flow weights are shared across them.
                snippets = self.flow_backbone(flow.flatten(0, 1)).pooled.view(b, t, -1)
            if self.variant == "rgb":
                logits = self.classifier(spatial.pooled)
            elif self.variant == "flow":
                logits = self.classifier(self.temporal_fusion(snippets))
            elif self.variant == "rgb_attention":
                attended, attention = self.attention(spatial.feature_map, self.guidance(snippets))
                logits = self.classifier(attended)
            else:
                logits, attention = self._pyramid_head(spatial, snippets)
        return (logits, attention) if return_attention else logits

    def _pyramid_head(self, spatial: BackboneOutput, snippets: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Levels 1-3 of variants B, C, D.

        Args:
            spatial: the RGB backbone's ``(Tensor[B, C, h, w], Tensor[B, C])``.
            snippets: the flow snippet vectors, ``Tensor[B, T, C']``.

        Returns:
            ``(logits: Tensor[B, num_classes], attention: Tensor[B, h, w] or None)``.
        """
        attention = None
        motion = self.temporal_fusion(snippets)  # level 1
        fused_inputs = [spatial.pooled]
        if self.attention is not None:  # level 2
            guide = motion if self.guidance is None else self.guidance(snippets)
            attended, attention = self.attention(spatial.feature_map, guide)
            fused_inputs.append(attended)
        fused_inputs.append(motion)
        logits = self.classifier(self.fusion(*fused_inputs))  # level 3
        return logits, attention

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, num_classes={self.num_classes}, num_snippets={self.num_snippets}, "
            f"snippet_length={self.snippet_length}, temporal_fusion={self.temporal_fusion_mode!r}, "
            f"attention_guidance={self.attention_guidance!r}, partial_bn={self._partial_bn}"
        )
