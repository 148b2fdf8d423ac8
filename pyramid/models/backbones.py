"""Backbone CNNs with one interface: a feature map and its average-pooled vector.

Every backbone is a :class:`Backbone`. Its ``forward`` takes the data pipeline's
backbone-agnostic input and applies the network's own normalisation first:

* ``modality="rgb"``: ``Tensor[N, 3, H, W]``, float in ``[0, 1]``, channels in RGB order.
* ``modality="flow"``: ``Tensor[N, 2L, H, W]``, float in ``[-1, 1]`` (a stored 0..255 JPEG
  value ``v`` maps to ``(v - 128) / 128``), channels ordered ``x1, y1, x2, y2, ...``.

and returns a :class:`BackboneOutput` ``(feature_map: Tensor[N, C, h, w], pooled: Tensor[N, C])``.

Backbones are chosen by name with :func:`build_backbone`:

=============  ==============================  ====================  =========================
name           architecture                    map at 224 x 224      input normalisation
=============  ==============================  ====================  =========================
bninception    BN-Inception as used by TSN     1024 x 7 x 7          BGR, 0..255, mean
                                                                     (104, 117, 128), std 1;
                                                                     flow ``v - 128``
resnet18/34    torchvision ResNet              512 x 7 x 7           ImageNet mean/std
resnet50/101   torchvision ResNet              2048 x 7 x 7          ImageNet mean/std
vgg16          torchvision VGG-16 conv layers  512 x 7 x 7           ImageNet mean/std
vgg16_bn       torchvision VGG-16-BN convs     512 x 7 x 7           ImageNet mean/std
tiny           3 strided 3x3 conv-BN-ReLU      64 x 28 x 28          ImageNet mean/std
=============  ==============================  ====================  =========================

For the ImageNet-normalised networks the flow follows TSN: ``v / 255`` minus 0.5, divided by
0.226 (the mean of the ImageNet RGB stds).

No code here downloads weights: pass a checkpoint path to :func:`build_backbone` (see
:mod:`pyramid.models.checkpoint` for the layouts it understands) or get random weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "BackboneOutput",
    "Normalization",
    "BNInception",
    "TinyCNN",
    "TorchvisionResNet",
    "TorchvisionVGG",
    "BACKBONES",
    "available_backbones",
    "build_backbone",
    "cross_modality_init",
    "first_conv",
    "average_replicate",
    "replace_first_conv",
    "batchnorm_layers",
]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class BackboneOutput(NamedTuple):
    """What every backbone returns.

    Attributes:
        feature_map: ``Tensor[N, C, h, w]``, the last convolutional map.
        pooled: ``Tensor[N, C]``, its average over the ``h x w`` locations.
    """

    feature_map: Tensor
    pooled: Tensor


@dataclass(frozen=True)
class Normalization:
    """How a backbone turns pipeline input into what its weights were trained on.

    RGB: ``(x[:, order] * rgb_scale - rgb_mean) / rgb_std`` with ``x`` in ``[0, 1]``.
    Flow: ``x * flow_scale`` with ``x`` in ``[-1, 1]`` (mean-subtracted already).

    Attributes:
        bgr: reorder RGB input to BGR (Caffe-trained weights such as BN-Inception).
        rgb_scale: multiplier taking ``[0, 1]`` to the trained range (255 for Caffe nets).
        rgb_mean: per-channel mean, in the network's channel order and range.
        rgb_std: per-channel std, in the network's channel order and range.
        flow_scale: multiplier for the ``[-1, 1]`` flow.
    """

    bgr: bool
    rgb_scale: float
    rgb_mean: Tuple[float, float, float]
    rgb_std: Tuple[float, float, float]
    flow_scale: float


# Caffe BN-Inception (TSN): BGR 0..255 minus (104, 117, 128); flow stored 0..255 minus 128 with
# std 1, i.e. (v - 128) = x * 128.
CAFFE_BGR = Normalization(
    bgr=True, rgb_scale=255.0, rgb_mean=(104.0, 117.0, 128.0), rgb_std=(1.0, 1.0, 1.0), flow_scale=128.0
)
# torchvision ImageNet weights. TSN feeds their flow as v / 255 normalised with mean 0.5 and std
# 0.226 (mean of the RGB stds): (v / 255 - 0.5) / 0.226 ~= x * (128 / 255) / 0.226 (the 0.5 / 255
# offset between 127.5 and 128 is below one quantisation step and is ignored).
_IMAGENET_FLOW_STD = (0.229 + 0.224 + 0.225) / 3.0
IMAGENET = Normalization(
    bgr=False,
    rgb_scale=1.0,
    rgb_mean=(0.485, 0.456, 0.406),
    rgb_std=(0.229, 0.224, 0.225),
    flow_scale=(128.0 / 255.0) / _IMAGENET_FLOW_STD,
)


def batchnorm_layers(module: nn.Module) -> List[nn.Module]:
    """All batch-norm layers of ``module`` in registration (= forward) order."""
    return [m for m in module.modules() if isinstance(m, _BN_TYPES)]


def first_conv(module: nn.Module) -> Tuple[str, nn.Conv2d]:
    """``(qualified_name, conv)`` of the first ``nn.Conv2d`` registered in ``module``.

    Every backbone here registers its layers in forward order, so this is the layer that sees
    the input. Raises ``ValueError`` if there is no ``Conv2d``.
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError(f"module: expected at least one nn.Conv2d, found none in {type(module).__name__}")


class Backbone(nn.Module):
    """Base class: normalise pipeline input, run the CNN, return map and pooled vector.

    Subclasses implement :meth:`forward_features` (normalised input to the last conv map) and set
    ``out_channels`` and ``normalization``.

    Args:
        normalization: see :class:`Normalization`.

    Attributes:
        name: registry name (``"bninception"``, ``"tiny"``, ...).
        out_channels: ``C`` of the feature map.
        in_channels: input channels, 3 for RGB, ``2L`` after :func:`cross_modality_init`.
        modality: ``"rgb"`` or ``"flow"``; picks the input normalisation.
        partial_bn: whether partial BN is on (see :meth:`set_partial_bn`).
    """

    name: str = "backbone"
    out_channels: int = 0

    def __init__(self, normalization: Normalization) -> None:
        super().__init__()
        # Set before anything can call train(): our train() override reads it.
        self._partial_bn = False
        self.normalization = normalization
        self.in_channels = 3
        self.modality = "rgb"
        order = [2, 1, 0] if normalization.bgr else [0, 1, 2]
        # Non-persistent: these are constants of the architecture, and keeping them out of the
        # state dict keeps our keys identical to the published checkpoints'.
        self.register_buffer("_rgb_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer(
            "_rgb_mean", torch.tensor(normalization.rgb_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_rgb_std", torch.tensor(normalization.rgb_std).view(1, 3, 1, 1), persistent=False
        )

    # ----------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised ``Tensor[N, in_channels, H, W]`` -> last conv map ``Tensor[N, C, h, w]``."""
        raise NotImplementedError

    def normalize(self, x: Tensor) -> Tensor:
        """Pipeline input (``[0, 1]`` RGB or ``[-1, 1]`` flow) -> this network's input range."""
        if self.modality == "rgb":
            x = x.index_select(1, self._rgb_order) if self.normalization.bgr else x
            return (x * self.normalization.rgb_scale - self._rgb_mean.to(x.dtype)) / self._rgb_std.to(x.dtype)
        return x * self.normalization.flow_scale

    def forward(self, x: Tensor) -> BackboneOutput:
        """Run the backbone.

        Args:
            x: ``Tensor[N, in_channels, H, W]``; RGB in ``[0, 1]`` (RGB order) or flow in
                ``[-1, 1]``, as produced by :mod:`pyramid.data`. Normalisation is applied here.

        Returns:
            :class:`BackboneOutput` with ``feature_map: Tensor[N, C, h, w]`` and
            ``pooled: Tensor[N, C]`` (average over locations).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: expected Tensor[N, {self.in_channels}, H, W] for the {self.modality} "
                f"{self.name} backbone, got shape {tuple(x.shape)}"
            )
        fmap = self.forward_features(self.normalize(x))
        return BackboneOutput(fmap, fmap.mean(dim=(2, 3)))

    # ----------------------------------------------------------------------------------------
    @property
    def partial_bn(self) -> bool:
        return self._partial_bn

    def frozen_bn_layers(self) -> List[nn.Module]:
        """The BN layers partial BN freezes: every BN layer except the first."""
        return batchnorm_layers(self)[1:]

    def set_partial_bn(self, enabled: bool = True) -> "Backbone":
        """Turn partial BN on or off.

        On: every BN layer except the first (whose input statistics change most when the
        modality changes, e.g. RGB -> flow) keeps its running mean/variance (it stays in eval
        mode even under ``train()``) and its affine weight/bias (``requires_grad=False``).
        Off: all BN layers train normally. Networks without BN (``vgg16``) are unaffected.
        """
        self._partial_bn = bool(enabled)
        for bn in self.frozen_bn_layers():
            for p in bn.parameters(recurse=False):
                p.requires_grad_(not self._partial_bn)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        """``nn.Module.train``, except that partial BN keeps the frozen BN layers in eval mode."""
        super().train(mode)
        if mode and self._partial_bn:
            for bn in self.frozen_bn_layers():
                bn.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, modality={self.modality!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, partial_bn={self._partial_bn}"
        )


# ==============================================================================================
# tiny
# ==============================================================================================
class TinyCNN(Backbone):
    """Three stride-2 3x3 conv-BN-ReLU layers: a fast CPU stand-in for tests and demos.

    ``Tensor[N, 3, H, W]`` -> ``Tensor[N, 4 * width, ceil(H/8), ceil(W/8)]``.

    Args:
        width: channels of the first layer; doubled twice. Default 16 (64 output channels).
    """

    name = "tiny"

    def __init__(self, width: int = 16) -> None:
        super().__init__(IMAGENET)
        if width < 1:
            raise ValueError(f"width: expected a positive int, got {width}")
        chans = [3, width, 2 * width, 4 * width]
        layers: List[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_channels = 4 * width

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


# ==============================================================================================
# BN-Inception
# ==============================================================================================
# (block, in, 1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool, pool_proj, stride)
# Channel counts from the BN-Inception prototxt used by TSN (tf_model_zoo/bninception) and by
# Cadene's pretrainedmodels port; stride-2 blocks (3c, 4e) have no 1x1 and no pool projection.
_INCEPTION_BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)


class BNInception(Backbone):
    """BN-Inception (Ioffe and Szegedy 2015) as used by TSN: ``Tensor[N, 3, 224, 224]`` ->
    ``Tensor[N, 1024, 7, 7]``.

    Layer names are those of the Caffe model and of every PyTorch port of it (TSN's
    ``tf_model_zoo``, Cadene's ``pretrainedmodels``): ``conv1_7x7_s2``, ``conv1_7x7_s2_bn``, ...,
    ``inception_5b_pool_proj_bn``, so the published checkpoints load by name (see
    :func:`pyramid.models.checkpoint.load_backbone_checkpoint`). Every conv has a bias (Caffe),
    BN uses ``eps=1e-5`` and PyTorch's default momentum. The ImageNet classifier
    (``fc`` / ``last_linear``) is not part of the backbone.

    Input normalisation (applied in ``forward``): BGR, 0..255, mean (104, 117, 128), std 1;
    flow ``x * 128`` (the stored value minus 128).
    """

    name = "bninception"
    out_channels = 1024

    def __init__(self) -> None:
        super().__init__(CAFFE_BGR)
        self._add("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._add("conv2_3x3_reduce", 64, 64, 1)
        self._add("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for blk, cin, c1, c3r, c3, cdr, cd, pool, cp, stride in _INCEPTION_BLOCKS:
            p = f"inception_{blk}_"
            if c1:
                self._add(p + "1x1", cin, c1, 1)
            self._add(p + "3x3_reduce", cin, c3r, 1)
            self._add(p + "3x3", c3r, c3, 3, stride=stride, padding=1)
            self._add(p + "double_3x3_reduce", cin, cdr, 1)
            self._add(p + "double_3x3_1", cdr, cd, 3, padding=1)
            self._add(p + "double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if pool == "max":
                # ceil_mode matches Caffe's pooling output size (28 -> 14, 14 -> 7).
                setattr(self, p + "pool", nn.MaxPool2d(3, stride=stride, padding=0 if stride == 2 else 1, ceil_mode=True))
            else:
                setattr(self, p + "pool", nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True))
            if cp:
                self._add(p + "pool_proj", cin, cp, 1)

    def _add(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _cbr(self, name: str, x: Tensor) -> Tensor:
        return torch.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for blk, _cin, c1, _c3r, _c3, _cdr, _cd, _pool, cp, _stride in _INCEPTION_BLOCKS:
            p = f"inception_{blk}_"
            branches = []
            if c1:
                branches.append(self._cbr(p + "1x1", x))
            branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
            d = self._cbr(p + "double_3x3_reduce", x)
            branches.append(self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", d)))
            pooled = getattr(self, p + "pool")(x)
            branches.append(self._cbr(p + "pool_proj", pooled) if cp else pooled)
            x = torch.cat(branches, dim=1)
        return x


# ==============================================================================================
# torchvision
# ==============================================================================================
def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError as e:  # pragma: no cover - torchvision is installed in the project venv
        raise ImportError(
            "the resnet*/vgg* backbones use torchvision's definitions, but torchvision is not "
            "importable; install torchvision matching your torch, or use backbone='bninception' "
            "or 'tiny'"
        ) from e
    return tvm


class TorchvisionResNet(Backbone):
    """A torchvision ResNet without its pooling and classifier: ``Tensor[N, 3, 224, 224]`` ->
    ``Tensor[N, 2048, 7, 7]`` (``resnet50``/``resnet101``) or ``512 x 7 x 7`` (18/34).

    Sub-module names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a
    torchvision ``state_dict`` file loads by name; its ``fc`` is ignored.
    Input normalisation: ImageNet mean/std on RGB in ``[0, 1]``.

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (default) or ``"resnet101"``.
    """

    def __init__(self, arch: str = "resnet50") -> None:
        super().__init__(IMAGENET)
        tvm = _torchvision_models()
        if arch not in ("resnet18", "resnet34", "resnet50", "resnet101"):
            raise ValueError(f"arch: expected resnet18/34/50/101, got {arch!r}")
        net = getattr(tvm, arch)(weights=None)
        self.name = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _vgg_features(tvm, arch: str) -> nn.Sequential:
    """torchvision's VGG ``features`` with torchvision's initialisation, without building the
    123M-parameter classifier we would throw away (that alone takes seconds on a CPU)."""
    try:
        from torchvision.models.vgg import cfgs, make_layers
    except ImportError:  # layout changed in some future torchvision: build the whole net
        return getattr(tvm, arch)(weights=None).features
    features = make_layers(cfgs["D"], batch_norm=arch.endswith("_bn"))
    for m in features.modules():  # same init as torchvision.models.VGG.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


class TorchvisionVGG(Backbone):
    """The convolutional part (``features``) of a torchvision VGG: ``Tensor[N, 3, 224, 224]`` ->
    ``Tensor[N, 512, 7, 7]`` (the conv5_3 map after its max pool).

    Keys are torchvision's ``features.*``; the fully connected ``classifier.*`` of a checkpoint
    is ignored (the pyramid needs a map, not fc7). Input normalisation: ImageNet mean/std.

    Args:
        arch: ``"vgg16"`` (default) or ``"vgg16_bn"``.
    """

    def __init__(self, arch: str = "vgg16") -> None:
        super().__init__(IMAGENET)
        tvm = _torchvision_models()
        if arch not in ("vgg16", "vgg16_bn"):
            raise ValueError(f"arch: expected 'vgg16' or 'vgg16_bn', got {arch!r}")
        self.name = arch
        self.features = _vgg_features(tvm, arch)
        self.out_channels = 512

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


BACKBONES: Dict[str, Callable[..., Backbone]] = {
    "bninception": BNInception,
    "resnet18": lambda **kw: TorchvisionResNet("resnet18", **kw),
    "resnet34": lambda **kw: TorchvisionResNet("resnet34", **kw),
    "resnet50": lambda **kw: TorchvisionResNet("resnet50", **kw),
    "resnet101": lambda **kw: TorchvisionResNet("resnet101", **kw),
    "vgg16": lambda **kw: TorchvisionVGG("vgg16", **kw),
    "vgg16_bn": lambda **kw: TorchvisionVGG("vgg16_bn", **kw),
    "tiny": TinyCNN,
}


def available_backbones() -> List[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(BACKBONES)


# ==============================================================================================
# cross-modality initialisation
# ==============================================================================================
def average_replicate(weight: Tensor, in_channels: int) -> Tensor:
    """Cross-modality weight transform: ``Tensor[O, c, k, k]`` -> ``Tensor[O, in_channels, k, k]``.

    Every output channel's filters are averaged over the ``c`` input channels and the average is
    replicated ``in_channels`` times (TSN / the slides: RGB filters -> 2L flow channels).
    """
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a conv weight Tensor[O, C, kh, kw], got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels: expected a positive int, got {in_channels}")
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(-1, in_channels, -1, -1).contiguous()


def cross_modality_init(module: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first conv of ``module`` by one with ``in_channels`` inputs, initialised from it.

    The new weight is the old one averaged over its input channels and replicated
    ``in_channels`` times (:func:`average_replicate`); the bias is copied. Works on any
    ``nn.Module`` whose first registered ``nn.Conv2d`` sees the input (every backbone here and
    torchvision's). On a :class:`Backbone` it also switches ``modality`` to ``"flow"`` (unless
    ``in_channels == 3``) and updates ``in_channels``. Modifies ``module`` in place and returns it.

    Args:
        module: the network, typically an RGB (ImageNet) backbone.
        in_channels: the new input channel count, ``2L`` for ``L`` stacked flow frames (20).
    """
    name, old = first_conv(module)
    new = _conv_like(old, in_channels)
    with torch.no_grad():
        new.weight.copy_(average_replicate(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _replace(module, name, new)
    _mark_modality(module, in_channels)
    return module


_cross_modality_init = cross_modality_init  # build_backbone's argument shadows the name


def replace_first_conv(module: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first conv of ``module`` by a freshly (randomly) initialised one with
    ``in_channels`` inputs: the ``cross_modality_init=False`` path. In place; returns ``module``."""
    name, old = first_conv(module)
    _replace(module, name, _conv_like(old, in_channels))
    _mark_modality(module, in_channels)
    return module


def _conv_like(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if old.groups != 1:
        raise ValueError(f"module: the first conv is grouped (groups={old.groups}); cannot change its input channels")
    return nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(device=old.weight.device, dtype=old.weight.dtype)


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def _mark_modality(module: nn.Module, in_channels: int) -> None:
    if isinstance(module, Backbone):
        module.in_channels = in_channels
        module.modality = "rgb" if in_channels == 3 else "flow"


# ==============================================================================================
# factory
# ==============================================================================================
def build_backbone(
    name: str,
    *,
    modality: str = "rgb",
    in_channels: Optional[int] = None,
    checkpoint: Union[str, "os.PathLike[str]", Dict[str, Tensor], None] = None,
    checkpoint_prefix: Optional[str] = None,
    cross_modality_init: bool = True,
    partial_bn: bool = False,
    **kwargs,
) -> Backbone:
    """Build a backbone by name, optionally loading weights from a file.

    Args:
        name: one of :func:`available_backbones` (``"bninception"``, ``"resnet50"``,
            ``"vgg16"``, ``"tiny"``, ...).
        modality: ``"rgb"`` (default) or ``"flow"``.
        in_channels: input channels; must be 3 for RGB; default 20 (``2L``, ``L = 10``) for flow.
        checkpoint: path to a weights file (or an already loaded state dict), or ``None``
            (default) for random weights. Layouts understood: see
            :func:`pyramid.models.checkpoint.load_backbone_checkpoint`. An RGB (3-channel)
            checkpoint loaded into a flow backbone goes through cross-modality initialisation.
        checkpoint_prefix: key prefix selecting the backbone inside a bigger checkpoint
            (e.g. ``"flow_backbone."``); default ``None`` detects it.
        cross_modality_init: for flow, initialise the first conv from the RGB weights averaged
            over the 3 channels and replicated to ``in_channels`` (default ``True``); ``False``
            gives that conv a fresh random init and refuses a 3-channel checkpoint.
        partial_bn: turn partial BN on (default ``False``; the pyramid turns it on itself).
        **kwargs: passed to the backbone class (``tiny``: ``width=16``).

    Returns:
        The :class:`Backbone`, in training mode.
    """
    from .checkpoint import load_backbone_checkpoint  # local: checkpoint imports this module

    key = name.lower() if isinstance(name, str) else name
    if key not in BACKBONES:
        raise ValueError(f"name: unknown backbone {name!r}; expected one of {available_backbones()}")
    if modality not in ("rgb", "flow"):
        raise ValueError(f"modality: expected 'rgb' or 'flow', got {modality!r}")
    if in_channels is None:
        in_channels = 3 if modality == "rgb" else 20
    if modality == "rgb" and in_channels != 3:
        raise ValueError(f"in_channels: an RGB backbone takes 3 channels, got {in_channels}")
    if modality == "flow" and (in_channels < 2 or in_channels % 2):
        raise ValueError(f"in_channels: a flow backbone takes 2L channels (x and y per frame), got {in_channels}")
    backbone = BACKBONES[key](**kwargs)
    if modality == "flow":
        if cross_modality_init:
            # Without a checkpoint this averages the random RGB init, which keeps the first
            # layer's scale the same as when an ImageNet checkpoint is converted.
            _cross_modality_init(backbone, in_channels)
        else:
            replace_first_conv(backbone, in_channels)
    if checkpoint is not None:
        load_backbone_checkpoint(backbone, checkpoint, prefix=checkpoint_prefix, cross_modality=cross_modality_init)
    backbone.set_partial_bn(partial_bn)
    return backbone
