"""Spatiotemporal Pyramid Network (Wang, Long, Wang, Yu, CVPR 2017) built on compact bilinear pooling.

Sub-packages:

* :mod:`pyramid.models`: backbones, cross-modality initialisation, partial BN, the
  :class:`~pyramid.models.SpatiotemporalPyramid` network and its ablation variants A-D.
* :mod:`pyramid.data`: datasets, frame/flow readers, sampling and augmentation.

Nothing is imported eagerly here so that ``import pyramid.data`` does not pay for the models (and
does not need the compiled ``compact_bilinear`` extension).
"""
