"""A model summary: parameters, STCB dimensions, activation sizes and FLOPs per pyramid level."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["ModelSummary", "model_summary"]


@dataclass
class ModelSummary:
    """Result of :func:`model_summary`; ``str()`` renders it as a table.

    Attributes:
        parameters: ``{component: (total, trainable)}`` plus ``"total"``.
        stcb: one dict per STCB: ``name``, ``input_dims``, ``output_dim``, ``seed``.
        levels: ``(name, output shape, elements)`` per stage, in forward order, for one batch.
        flops: ``{component: FLOPs}`` for one forward pass of the batch, plus ``"total"``.
            Convs and linear layers count ``2 * MACs`` exactly; STCB is an estimate
            (``2.5 d log2 d`` per real FFT, complex products, count-sketch adds); BN, pooling
            and activations are not counted.
        input_shapes: the ``rgb`` and ``flow`` shapes used.
    """

    parameters: Dict[str, Tuple[int, int]]
    stcb: List[Dict]
    levels: List[Tuple[str, Tuple[int, ...], int]]
    flops: Dict[str, int]
    input_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"inputs: rgb {self.input_shapes.get('rgb')}, flow {self.input_shapes.get('flow')}", ""]
        lines.append(f"{'component':<18}{'parameters':>14}{'trainable':>14}{'GFLOPs':>10}")
        for name, (total, trainable) in self.parameters.items():
            gf = self.flops.get(name)
            lines.append(f"{name:<18}{total:>14,}{trainable:>14,}{(gf / 1e9 if gf is not None else float('nan')):>10.3f}")
        lines += ["", f"{'STCB':<22}{'input dims':<26}{'d':>7}{'seed':>6}"]
        for s in self.stcb:
            lines.append(f"{s['name']:<22}{str(list(s['input_dims'])):<26}{s['output_dim']:>7}{s['seed']:>6}")
        lines += ["", f"{'level / stage':<34}{'output shape':<24}{'elements':>12}"]
        for name, shape, n in self.levels:
            lines.append(f"{name:<34}{str(tuple(shape)):<24}{n:>12,}")
        return "\n".join(lines)


def _count(module: Optional[nn.Module]) -> Tuple[int, int]:
    if module is None:
        return 0, 0
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _stcb_flops(input_shapes: List[Tuple[int, ...]], d: int) -> int:
    # Vectors are sketched and transformed once per sample, maps once per location.
    batch = input_shapes[0][0]
    locations = max((math.prod(s[2:]) for s in input_shapes if len(s) > 2), default=1)
    fft = 2.5 * d * math.log2(max(d, 2))
    total = 0.0
    for s in input_shapes:
        rows = batch * (math.prod(s[2:]) if len(s) > 2 else 1)
        total += rows * (s[1] + fft)  # count sketch adds + forward rfft
    rows_out = batch * locations
    total += rows_out * ((len(input_shapes) - 1) * 6 * (d // 2 + 1) + fft)  # products + irfft
    return int(total)


@torch.no_grad()
def model_summary(model: nn.Module, input_size: Tuple[int, int] = (224, 224), batch_size: int = 1) -> ModelSummary:
    """Summarise a :class:`SpatiotemporalPyramid` by running one forward pass on zeros-like input.

    Args:
        model: the network (left in the train/eval mode it had).
        input_size: ``(H, W)`` of the RGB frame and flow snippets. Default ``(224, 224)``.
        batch_size: B. Default 1.

    Returns:
        :class:`ModelSummary` (parameters per component, STCB dims, per-level activation shapes
        and FLOPs).
    """
    h, w = input_size
    t, two_l = model.num_snippets, 2 * model.snippet_length
    p = next(model.parameters())
    # Mid-grey frame and zero flow: the values do not matter for shapes and FLOPs. Single-stream
    # models get only the input they use.
    rgb = flow = None
    if model.rgb_backbone is not None:
        rgb = torch.full((batch_size, 3, h, w), 0.5, device=p.device, dtype=p.dtype)
    if model.flow_backbone is not None:
        flow = torch.zeros((batch_size, t, two_l, h, w), device=p.device, dtype=p.dtype)

    components = {
        "rgb_backbone": model.rgb_backbone,
        "flow_backbone": model.flow_backbone,
        "temporal_fusion": model.temporal_fusion,
        "guidance": model.guidance,
        "attention": model.attention,
        "fusion": model.fusion,
        "classifier": model.classifier,
        "rgb_classifier": model.rgb_classifier,
        "flow_classifier": model.flow_classifier,
    }
    components = {k: v for k, v in components.items() if v is not None}
    parameters = {k: _count(v) for k, v in components.items()}
    parameters["total"] = _count(model)

    flops: Dict[str, float] = {k: 0.0 for k in components}
    owner: Dict[nn.Module, str] = {}
    for cname, comp in components.items():
        for m in comp.modules():
            owner.setdefault(m, cname)
    levels: List[Tuple[str, Tuple[int, ...], int]] = []
    stage_names = {  # the None entries of absent components are never looked up
        model.rgb_backbone: "rgb backbone map",
        model.flow_backbone: "flow backbone map (B*T snippets)",
        model.temporal_fusion: "level 1: motion vector",
        model.guidance: "level 2: guidance vector",
        model.attention: "level 2: attended vector",
        model.fusion: "level 3: fused vector",
        model.classifier: "logits",
        model.rgb_classifier: "rgb logits",
        model.flow_classifier: "flow logits (per snippet)",
    }

    def hook(module: nn.Module, inputs, output) -> None:
        comp = owner.get(module)
        if isinstance(module, nn.Conv2d) and comp is not None:
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            flops[comp] += 2.0 * output.numel() * k
        elif isinstance(module, nn.Linear) and comp is not None:
            flops[comp] += 2.0 * output.numel() * module.in_features
        elif type(module).__name__ == "STCB" and comp is not None:
            flops[comp] += _stcb_flops([tuple(x.shape) for x in inputs], output.shape[1])
        if module in stage_names and module is not None:
            out = output.feature_map if hasattr(output, "feature_map") else (output[0] if isinstance(output, tuple) else output)
            levels.append((stage_names[module], tuple(out.shape), out.numel()))
            if module is model.attention:
                levels.append(("level 2: attention map", tuple(output[1].shape), output[1].numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        model(rgb, flow)
    finally:
        for hnd in handles:
            hnd.remove()
        model.train(was_training)
    flops_int = {k: int(v) for k, v in flops.items()}
    flops_int["total"] = sum(flops_int.values())
    return ModelSummary(
        parameters=parameters,
        stcb=list(getattr(model, "stcb_specs", [])),
        levels=levels,
        flops=flops_int,
        input_shapes={k: tuple(v.shape) for k, v in (("rgb", rgb), ("flow", flow)) if v is not None},
    )
