"""Models of the Spatiotemporal Pyramid Network.

Public API::

    from pyramid.models import SpatiotemporalPyramid, build_backbone, model_summary

* :class:`SpatiotemporalPyramid`: the network, its ablation variants A-D and the
  single-stream ablation models ``rgb``, ``rgb_attention``, ``flow``.
* :func:`build_backbone`: ``bninception``, ``resnet18/34/50/101``, ``vgg16``, ``vgg16_bn``,
  ``tiny``; one interface (feature map and pooled vector out), checkpoints by path.
* :func:`cross_modality_init`: RGB first conv -> 2L-channel flow first conv.
* :meth:`Backbone.set_partial_bn` / :meth:`SpatiotemporalPyramid.set_partial_bn`: partial BN.
* :func:`load_backbone_checkpoint`: key-mapping checkpoint loader.
* :func:`model_summary`: parameters, STCB dims, activation sizes and FLOPs per level.

Only the STCB variants (B, C, D) need the compiled ``compact_bilinear`` extension; it is
imported when such a model is built.
"""
from . import backbones as _backbones
from .backbones import (
    BACKBONES,
    Backbone,
    BackboneOutput,
    BNInception,
    Normalization,
    TinyCNN,
    TorchvisionResNet,
    TorchvisionVGG,
    available_backbones,
    average_replicate,
    batchnorm_layers,
    build_backbone,
    cross_modality_init,
    first_conv,
    replace_first_conv,
)
from .checkpoint import LoadReport, load_backbone_checkpoint, read_state_dict
from .fusion import ATTENTION_GUIDANCES, TEMPORAL_FUSIONS, SpatiotemporalAttention, TemporalFusion
from .pyramid import SINGLE_STREAM_VARIANTS, VARIANTS, SpatiotemporalPyramid
from .summary import ModelSummary, model_summary

__all__ = [
    "SpatiotemporalPyramid",
    "VARIANTS",
    "SINGLE_STREAM_VARIANTS",
    "TEMPORAL_FUSIONS",
    "ATTENTION_GUIDANCES",
    "load_backbone_checkpoint",
    "read_state_dict",
    "LoadReport",
    "TemporalFusion",
    "SpatiotemporalAttention",
    "model_summary",
    "ModelSummary",
    *_backbones.__all__,
]
