"""Load backbone weights from the checkpoint layouts people actually have.

:func:`load_backbone_checkpoint` reads a file (``torch.load`` with ``weights_only=True``: a
checkpoint is data, never code) and maps its keys onto a :class:`~pyramid.models.Backbone`:

* **Nesting**: the tensors may sit under ``state_dict`` (TSN, TSM, mmaction2, Lightning),
  ``model_state_dict``, ``model``, ``net`` or ``module``.
* **Prefixes**: ``module.`` (DataParallel), ``base_model.`` (TSN/TSM), ``backbone.``
  (mmaction2), ``rgb_backbone.`` / ``flow_backbone.`` (our own pyramid), any mix of them: the
  prefix is found by matching key suffixes (and tensor sizes) against the backbone's own
  names; the one matching most keys wins, a tie is an error asking for ``prefix=``.
* **Shapes**: BN parameters stored as ``[1, C]`` (TSN's ``bn_inception-9f5701afb96c8044.pth``,
  converted from Caffe) are reshaped to ``[C]``. A 3-channel first conv loaded into a flow
  backbone is converted by cross-modality averaging (when allowed).
* **Heads**: classifier keys (``fc``, ``last_linear``, ``new_fc``, ``classifier``,
  ``cls_head``, ...) are not part of a backbone and are skipped.

Anything else that does not fit raises ``ValueError`` naming the keys and shapes involved.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .backbones import _mark_modality, average_replicate, first_conv

__all__ = ["LoadReport", "read_state_dict", "load_backbone_checkpoint"]

# Top-level modules of classifiers found in the common checkpoints (torchvision: fc, classifier;
# Cadene: last_linear; TSN/TSM: new_fc; mmaction2: cls_head.fc_cls).
_HEAD_NAMES = frozenset(
    {"fc", "last_linear", "new_fc", "classifier", "cls_head", "fc_cls", "head", "logits", "fc_action", "consensus"}
)
# Checkpoints often wrap the tensors; these are the wrapper keys seen in the wild.
_NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")

PathOrState = Union[str, "os.PathLike[str]", Mapping[str, Tensor]]


@dataclass
class LoadReport:
    """What :func:`load_backbone_checkpoint` did.

    Attributes:
        prefix: the key prefix that was stripped (``""`` if none).
        loaded: backbone keys that received a tensor.
        skipped: checkpoint keys not used (classifier heads, other sub-networks).
        reshaped: keys whose tensor was reshaped (e.g. BN ``[1, C]`` -> ``[C]``).
        cross_modality: whether the first conv was converted from 3 channels.
    """

    prefix: str
    loaded: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    reshaped: List[str] = field(default_factory=list)
    cross_modality: bool = False


def read_state_dict(source: PathOrState) -> Dict[str, Tensor]:
    """Read a checkpoint file (or take a mapping) and return its flat ``{key: Tensor}`` dict.

    Follows the usual wrapper keys (``state_dict``, ``model``, ...) and drops non-tensor
    entries (``epoch``, ``arch``, ``best_prec1``). Raises ``FileNotFoundError`` for a missing
    path and ``ValueError`` when no tensors are found.
    """
    if isinstance(source, Mapping):
        obj = source
        where = "the given mapping"
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint: no such file {path!r}")
        where = repr(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler raises several types; all mean the same here
            raise ValueError(
                f"checkpoint: could not read {path} as tensors only ({type(e).__name__}: {e}). "
                "Re-save it as a plain state dict: torch.save(model.state_dict(), path)"
            ) from e
    for _ in range(4):
        if not isinstance(obj, Mapping) or any(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = next((obj[k] for k in _NEST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint: expected a dict of tensors in {where}, got {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint: found no tensors in {where} (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    return tensors


def _is_head_key(key: str) -> bool:
    return any(part in _HEAD_NAMES for part in key.split("."))


def _detect_prefix(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> str:
    # A key votes for the prefix that makes it a backbone key holding the same number of values.
    # Counting only size-compatible matches separates an RGB from a flow backbone stored side by
    # side (our pyramid's rgb_backbone. / flow_backbone.): their first convs differ in size.
    votes: Counter = Counter()
    for k, v in state.items():
        parts = k.split(".")
        for i in range(len(parts)):
            name = ".".join(parts[i:])
            if name in target and target[name].numel() == v.numel():
                votes[".".join(parts[:i]) + ("." if i else "")] += 1
    if not votes:
        return ""
    (best, n), *rest = votes.most_common()
    tied = sorted(p for p, m in rest if m == n)
    if tied:
        raise ValueError(
            f"checkpoint: it holds several complete backbones under the prefixes {[best] + tied}; "
            "pass prefix= (checkpoint_prefix= in build_backbone) to choose one"
        )
    return best


def _fmt(keys: List[str], limit: int = 8) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_checkpoint(
    backbone: nn.Module,
    source: PathOrState,
    *,
    prefix: Optional[str] = None,
    cross_modality: bool = True,
    strict: bool = True,
) -> LoadReport:
    """Load backbone weights from ``source`` into ``backbone`` (in place), mapping key names.

    Understands: our own ``state_dict()`` files; torchvision ResNet/VGG files; Cadene's
    ``pretrainedmodels`` BN-Inception (``bn_inception-52deb4733.pth``); TSN's
    (``bn_inception-9f5701afb96c8044.pth``, BN params ``[1, C]``); TSN/TSM training checkpoints
    (``{"state_dict": {"module.base_model.*", "module.new_fc.*"}, "epoch": ...}``);
    mmaction2 (``backbone.*``, ``cls_head.*``); a whole :class:`SpatiotemporalPyramid`
    checkpoint (the ``rgb_backbone.`` or ``flow_backbone.`` part, chosen by which one's first
    conv fits, or by ``prefix``).

    Args:
        backbone: the module to fill (any ``nn.Module``; :class:`Backbone` in practice).
        source: file path, or an already loaded mapping.
        prefix: key prefix of the backbone inside the checkpoint; default ``None`` detects it.
        cross_modality: if the checkpoint's first conv has 3 input channels and the backbone's
            has ``2L``, convert it by channel averaging (default ``True``); if ``False``, that is a
            shape mismatch.
        strict: raise on missing backbone keys and on unexpected keys under the prefix
            (default ``True``). BN ``num_batches_tracked`` counters may always be missing.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: missing keys, unexpected keys, or shapes that cannot be mapped, all listed.
    """
    state = read_state_dict(source)
    target = backbone.state_dict()
    model_keys = set(target)
    if prefix is None:
        prefix = _detect_prefix(state, target)
    report = LoadReport(prefix=prefix)
    first_name, first = first_conv(backbone)
    first_key = f"{first_name}.weight"

    mapped: Dict[str, Tensor] = {}
    unexpected: List[str] = []
    for k, v in state.items():
        if not k.startswith(prefix):
            report.skipped.append(k)
            continue
        name = k[len(prefix):]
        if name in model_keys:
            mapped[name] = v
        elif _is_head_key(name):
            report.skipped.append(k)
        else:
            unexpected.append(k)

    mismatched: List[str] = []
    for name, v in list(mapped.items()):
        want = target[name].shape
        if v.shape == want:
            continue
        if name == first_key and v.dim() == 4 and v.shape[1] == 3 and want[1] != 3 and v.shape[0] == want[0] and v.shape[2:] == want[2:]:
            if cross_modality:
                mapped[name] = average_replicate(v, want[1])
                report.cross_modality = True
                continue
            mismatched.append(
                f"{prefix}{name}: checkpoint {tuple(v.shape)} (RGB) vs model {tuple(want)} "
                "(cross_modality=False forbids converting it)"
            )
            continue
        if v.numel() == target[name].numel() and [s for s in v.shape if s != 1] == [s for s in want if s != 1]:
            # Only singleton dimensions differ: BN weights saved as [1, C] by Caffe converters.
            mapped[name] = v.reshape(want)
            report.reshaped.append(name)
            continue
        mismatched.append(f"{prefix}{name}: checkpoint {tuple(v.shape)} vs model {tuple(want)}")

    missing = sorted(k for k in model_keys - set(mapped) if not k.endswith("num_batches_tracked"))
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + _fmt(mismatched))
    if strict and missing:
        problems.append(f"{len(missing)} backbone key(s) missing from the checkpoint: " + _fmt(missing))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) under prefix {prefix!r}: " + _fmt(unexpected))
    if problems:
        kind = getattr(backbone, "name", type(backbone).__name__)
        raise ValueError(
            f"checkpoint does not fit the {kind!r} backbone (detected key prefix {prefix!r}): "
            + "; ".join(problems)
        )

    result = backbone.load_state_dict(mapped, strict=False)
    # load_state_dict(strict=False) only leaves out what we allowed to be missing above.
    assert not result.unexpected_keys, result.unexpected_keys
    report.loaded = sorted(mapped)
    if report.cross_modality:
        _mark_modality(backbone, target[first_key].shape[1])
    return report
