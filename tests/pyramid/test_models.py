"""Tests for pyramid.models: backbones, cross-modality init, partial BN, checkpoints, the
Spatiotemporal Pyramid variants A-D and the model summary.

Everything runs on the CPU with the ``tiny`` backbone at 32 x 32 and small STCB dims, except one
BN-Inception pass at 224 x 224 (B = 1, T = 3). Tests that need the compiled STCB skip when
``compact_bilinear`` cannot be imported.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyramid.models import (
    SpatiotemporalAttention,
    SpatiotemporalPyramid,
    TemporalFusion,
    available_backbones,
    batchnorm_layers,
    build_backbone,
    cross_modality_init,
    load_backbone_checkpoint,
    model_summary,
)


def _stcb_available() -> bool:
    try:
        from compact_bilinear import STCB  # noqa: F401
    except ImportError:
        return False
    return True


needs_stcb = pytest.mark.skipif(not _stcb_available(), reason="compact_bilinear.STCB is not importable yet")

NUM_CLASSES = 5
T, L, SIZE = 3, 2, 32  # tiny at 32 x 32 -> 64 x 4 x 4 maps
SMALL_DIMS = dict(motion_dim=128, attention_dim=64, fusion_dim=256, attention_hidden=16)


def tiny_model(variant: str = "D", seed: int = 0, **kw) -> SpatiotemporalPyramid:
    torch.manual_seed(seed)
    args = dict(backbone="tiny", variant=variant, num_snippets=T, snippet_length=L, **SMALL_DIMS)
    args.update(kw)
    return SpatiotemporalPyramid(NUM_CLASSES, **args)


def make_inputs(batch: int = 2, snippets: int = T, length: int = L, size: int = SIZE, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, size, size, generator=g)
    flow = torch.rand(batch, snippets, 2 * length, size, size, generator=g) * 2 - 1
    return rgb, flow


def variant_param(v: str):
    return pytest.param(v, marks=() if v in ("A", "rgb") else needs_stcb)


# =============================================================================================
# backbones
# =============================================================================================
def test_registry_has_the_issue_backbones():
    assert {"bninception", "resnet50", "vgg16", "tiny"} <= set(available_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        build_backbone("alexnet")


@pytest.mark.parametrize(
    "name, modalities, size, channels, hw",
    [
        ("tiny", ("rgb", "flow"), 64, 64, 8),  # three stride-2 convs: 64 / 8
        ("resnet50", ("rgb",), 64, 2048, 2),  # stride 32
        ("vgg16", ("flow",), 64, 512, 2),  # five 2x2 max pools: 64 / 32
    ],
)
def test_backbone_shapes(name, modalities, size, channels, hw):
    torch.manual_seed(0)
    for modality in modalities:
        in_ch = 3 if modality == "rgb" else 20
        bb = build_backbone(name, modality=modality).eval()
        assert bb.out_channels == channels and bb.in_channels == in_ch and bb.modality == modality
        with torch.no_grad():
            out = bb(torch.rand(2, in_ch, size, size))
        assert out.feature_map.shape == (2, channels, hw, hw)
        assert out.pooled.shape == (2, channels)
        torch.testing.assert_close(out.pooled, out.feature_map.mean(dim=(2, 3)))


def test_torchvision_backbones_explain_a_missing_torchvision(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision.models", None)  # makes the import fail
    with pytest.raises(ImportError, match="use torchvision's definitions, but torchvision is not importable"):
        build_backbone("resnet50")
    assert build_backbone("tiny").out_channels == 64  # the others do not need it


def test_backbone_rejects_wrong_channels():
    bb = build_backbone("tiny", modality="flow", in_channels=10)
    with pytest.raises(ValueError, match=r"expected Tensor\[N, 10, H, W\]"):
        bb(torch.rand(1, 20, 32, 32))
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("tiny", modality="rgb", in_channels=4)
    with pytest.raises(ValueError, match="modality"):
        build_backbone("tiny", modality="depth")


def test_input_normalisation_per_backbone():
    rgb = torch.tensor([0.2, 0.4, 1.0]).view(1, 3, 1, 1)  # R, G, B
    flow = torch.tensor([-1.0, 0.5]).view(1, 2, 1, 1)
    bni = build_backbone("bninception")
    # BGR, 0..255, minus (104, 117, 128), std 1.
    expected = torch.tensor([1.0 * 255 - 104, 0.4 * 255 - 117, 0.2 * 255 - 128]).view(1, 3, 1, 1)
    torch.testing.assert_close(bni.normalize(rgb), expected)
    bni_flow = build_backbone("bninception", modality="flow", in_channels=2)
    torch.testing.assert_close(bni_flow.normalize(flow), flow * 128)  # stored value minus 128
    tiny = build_backbone("tiny")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(tiny.normalize(rgb), ((rgb.view(3) - mean) / std).view(1, 3, 1, 1))
    tiny_flow = build_backbone("tiny", modality="flow", in_channels=2)
    # TSN: (v / 255 - 0.5) / 0.226 with v = 128 + 128 x.
    torch.testing.assert_close(tiny_flow.normalize(flow), flow * (128 / 255) / 0.226, rtol=1e-3, atol=1e-4)


# =============================================================================================
# cross-modality initialisation
# =============================================================================================
def _assert_mean_replicated(new_w: torch.Tensor, rgb_w: torch.Tensor, channels: int):
    assert new_w.shape == (rgb_w.shape[0], channels, *rgb_w.shape[2:])
    mean = (rgb_w[:, 0].double() + rgb_w[:, 1].double() + rgb_w[:, 2].double()) / 3
    for c in range(channels):
        assert torch.equal(new_w[:, c], new_w[:, 0])  # exact replicas
    torch.testing.assert_close(new_w[:, 0].double(), mean, rtol=0, atol=1e-7)


def test_cross_modality_init_on_any_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(8, 4, 3))
    w, b = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    cross_modality_init(net, 20)
    assert net[0].in_channels == 20 and net[0].stride == (2, 2) and net[0].padding == (2, 2)
    _assert_mean_replicated(net[0].weight.detach(), w, 20)
    assert torch.equal(net[0].bias.detach(), b)
    assert net(torch.rand(1, 20, 16, 16)).shape == (1, 4, 6, 6)


def test_cross_modality_init_from_rgb_checkpoint(tmp_path):
    torch.manual_seed(0)
    rgb = build_backbone("tiny")
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    flow = build_backbone("tiny", modality="flow", in_channels=2 * L, checkpoint=str(path))
    _assert_mean_replicated(flow.features[0].weight.detach(), rgb.features[0].weight.detach(), 2 * L)
    rgb_state = rgb.state_dict()
    for k, v in flow.state_dict().items():  # everything else is copied unchanged
        if k != "features.0.weight":
            assert torch.equal(v, rgb_state[k]), k
    # Without cross-modality init the RGB checkpoint's first conv cannot be used.
    with pytest.raises(ValueError, match=r"features\.0\.weight.*cross_modality=False"):
        build_backbone("tiny", modality="flow", in_channels=2 * L, checkpoint=str(path), cross_modality_init=False)


@needs_stcb
def test_pyramid_flow_stream_is_cross_modality_initialised(tmp_path):
    torch.manual_seed(0)
    rgb = build_backbone("tiny")
    path = tmp_path / "imagenet.pth"
    torch.save(rgb.state_dict(), path)
    model = tiny_model("C", rgb_checkpoint=str(path))
    _assert_mean_replicated(model.flow_backbone.features[0].weight.detach(), rgb.features[0].weight.detach(), 2 * L)
    assert torch.equal(model.rgb_backbone.features[0].weight, rgb.features[0].weight)


# =============================================================================================
# partial BN
# =============================================================================================
def test_partial_bn_keeps_all_but_first_bn_frozen():
    bb = build_backbone("tiny", partial_bn=True)
    bns = batchnorm_layers(bb)
    assert len(bns) == 3
    bb.train()
    assert bns[0].training and not bns[1].training and not bns[2].training
    assert all(p.requires_grad for p in bns[0].parameters())
    assert not any(p.requires_grad for bn in bns[1:] for p in bn.parameters())
    stats = [bn.running_mean.clone() for bn in bns]
    bb(torch.rand(4, 3, 32, 32))
    assert not torch.equal(bns[0].running_mean, stats[0])  # the first BN re-estimates
    assert torch.equal(bns[1].running_mean, stats[1]) and torch.equal(bns[2].running_mean, stats[2])
    bb.eval().train()  # a round trip through eval must not unfreeze
    assert not bns[1].training
    bb.set_partial_bn(False)
    assert bb.training and all(bn.training for bn in bns)
    assert all(p.requires_grad for bn in bns for p in bn.parameters())


@pytest.mark.parametrize("variant", [variant_param("A"), variant_param("D")])
def test_model_train_keeps_partial_bn(variant):
    model = tiny_model(variant)
    model.eval()
    model.train()
    for bb in (model.rgb_backbone, model.flow_backbone):
        bns = batchnorm_layers(bb)
        assert [bn.training for bn in bns] == [True, False, False]
    model.set_partial_bn(False)
    assert all(bn.training for bn in batchnorm_layers(model))
    model.set_partial_bn(True)
    assert sum(bn.training for bn in batchnorm_layers(model)) == 2  # one per backbone


@pytest.mark.parametrize("variant", [variant_param(v) for v in ("A", "B", "C", "D", "rgb", "rgb_attention", "flow")])
def test_backward_reaches_every_trainable_parameter_and_no_frozen_one(variant):
    model = tiny_model(variant).train()
    rgb, flow = make_inputs()
    frozen = {
        f"{side}.{name}.{pname}"
        for side in ("rgb_backbone", "flow_backbone")
        for name in ("features.4", "features.7")  # tiny's 2nd and 3rd BN
        for pname in ("weight", "bias")
    }
    frozen_stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    loss = nn.functional.cross_entropy(model(rgb, flow), torch.tensor([1, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    state = model.state_dict()
    for k, v in frozen_stats.items():
        first_bn = ".features.1." in k
        assert torch.equal(state[k], v) != first_bn, k  # only the first BN's stats move


# =============================================================================================
# variants
# =============================================================================================
@pytest.mark.parametrize("variant", [variant_param(v) for v in ("A", "B", "C", "D", "rgb", "rgb_attention", "flow")])
def test_variant_shapes(variant):
    model = tiny_model(variant).eval()
    rgb, flow = make_inputs()
    with torch.no_grad():
        logits = model(rgb, flow)
        logits2, attention = model(rgb, flow, return_attention=True)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.equal(logits, logits2)
    if variant in ("D", "rgb_attention"):
        assert attention.shape == (2, 4, 4)
        torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))
    else:
        assert attention is None
    # Single-stream models build only their backbone and accept None for the other input.
    assert (model.rgb_backbone is None) == (variant == "flow")
    assert (model.flow_backbone is None) == (variant == "rgb")
    if variant == "rgb":
        assert torch.equal(model(rgb, None), logits)
    if variant == "flow":
        assert torch.equal(model(None, flow), logits)
        assert model.temporal_fusion.out_dim == SMALL_DIMS["motion_dim"]


@needs_stcb
@pytest.mark.parametrize(
    "temporal, guidance, motion_dim, separate_guide, guide_dim",
    [
        ("stcb", "stcb", 128, False, 128),
        ("concat", "stcb", T * 64, True, 128),
        ("sum", "stcb", 64, True, 128),
        ("stcb", "single", 128, True, 64),
        ("stcb", "concat", 128, True, T * 64),
        ("concat", "concat", T * 64, False, T * 64),
    ],
)
def test_fusion_ablation_options(temporal, guidance, motion_dim, separate_guide, guide_dim):
    model = tiny_model("D", temporal_fusion=temporal, attention_guidance=guidance).eval()
    assert model.temporal_fusion.out_dim == motion_dim
    assert (model.guidance is not None) == separate_guide
    assert model.attention.stcb_spec["input_dims"] == [64, guide_dim]
    assert model.fusion_spec["input_dims"] == [64, 64, motion_dim]
    rgb, flow = make_inputs()
    with torch.no_grad():
        logits, attention = model(rgb, flow, return_attention=True)
    assert logits.shape == (2, NUM_CLASSES) and attention.shape == (2, 4, 4)


def test_temporal_fusion_modes_values():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert torch.equal(TemporalFusion("concat", 3, 4)(x), x.reshape(2, 12))
    assert torch.equal(TemporalFusion("sum", 3, 4)(x), x[:, 0] + x[:, 1] + x[:, 2])
    assert torch.equal(TemporalFusion("mean", 3, 4)(x), (x[:, 0] + x[:, 1] + x[:, 2]) / 3)
    assert torch.equal(TemporalFusion("single", 3, 4)(x), x[:, 1])  # the middle snippet
    with pytest.raises(ValueError, match="num_snippets"):
        TemporalFusion("stcb", 1, 4)


def test_variant_a_is_weighted_late_fusion_with_snippet_consensus():
    model = tiny_model("A").eval()
    rgb, flow = make_inputs()
    with torch.no_grad():
        logits = model(rgb, flow)
        rgb_logits = model.rgb_classifier(model.rgb_backbone(rgb).pooled)
        # The flow net, one snippet at a time: same weights for every snippet, scores averaged.
        per_snippet = [model.flow_classifier(model.flow_backbone(flow[:, i]).pooled) for i in range(T)]
        flow_logits = sum(per_snippet) / T
    torch.testing.assert_close(logits, (rgb_logits + 1.5 * flow_logits) / 2.5)
    r, f = model.forward_streams(rgb, flow)
    torch.testing.assert_close(r, rgb_logits)
    torch.testing.assert_close(f, flow_logits)


@needs_stcb
def test_attention_weights_sum_to_one():
    model = tiny_model("D").eval()
    rgb, flow = make_inputs(batch=3)
    with torch.no_grad():
        _, attention = model(rgb, flow, return_attention=True)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(3))
    assert attention.std() > 0  # not trivially uniform


@needs_stcb
def test_attention_pools_with_its_weights():
    torch.manual_seed(0)
    att = SpatiotemporalAttention(8, 6, attention_dim=32, hidden=4).eval()
    fmap, guide = torch.randn(2, 8, 3, 5), torch.randn(2, 6)
    with torch.no_grad():
        attended, weights = att(fmap, guide)
        expected = (fmap * weights.unsqueeze(1)).sum(dim=(2, 3))
        torch.testing.assert_close(attended, expected)
        # Constant scores -> uniform weights 1/15 -> the attended vector is the average pool.
        att.conv2.weight.zero_()
        attended, weights = att(fmap, guide)
    torch.testing.assert_close(weights, torch.full((2, 3, 5), 1 / 15))
    torch.testing.assert_close(attended, fmap.mean(dim=(2, 3)))


@needs_stcb
def test_attention_loads_checkpoints_with_the_old_score_bias():
    """The score conv once had a bias; it never mattered (softmax over locations), so a
    checkpoint holding one loads strictly and gives the same weights and output."""
    torch.manual_seed(0)
    new = SpatiotemporalAttention(8, 6, attention_dim=32, hidden=4).eval()
    old = SpatiotemporalAttention(8, 6, attention_dim=32, hidden=4).eval()
    old.conv2 = nn.Conv2d(4, 1, 1)  # the layer as it was
    with torch.no_grad():
        old.conv2.weight.normal_()
        old.conv2.bias.fill_(0.7)
    state = old.state_dict()
    assert "conv2.bias" in state
    new.load_state_dict(state)  # strict
    fmap, guide = torch.randn(2, 8, 3, 5), torch.randn(2, 6)
    with torch.no_grad():
        for a, b in zip(new(fmap, guide), old(fmap, guide)):
            torch.testing.assert_close(a, b)


@needs_stcb
def test_level3_output_is_l2_normalised_and_seeds_are_distinct():
    model = tiny_model("D", temporal_fusion="concat").eval()  # 4 STCBs: guidance, attention, fusion
    seeds = [s["seed"] for s in model.stcb_specs]
    assert len(seeds) == len(set(seeds)) == 3
    captured = {}

    def hook(module, inputs, output):
        captured["z"] = output.detach().clone()

    model.fusion.register_forward_hook(hook)
    rgb, flow = make_inputs()
    with torch.no_grad():
        model(rgb, flow)
    z = captured["z"]
    assert z.shape == (2, 256)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("variant", [variant_param("A"), variant_param("D")])
def test_eval_is_deterministic_and_train_is_not(variant):
    model = tiny_model(variant)
    rgb, flow = make_inputs()
    model.eval()
    with torch.no_grad():
        a, b = model(rgb, flow), model(rgb, flow)
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        c, d = model(rgb, flow), model(rgb, flow)
    assert not torch.equal(c, d)  # dropout is active in training, so the eval check means something


def test_input_validation_errors():
    model = tiny_model("A")
    rgb, flow = make_inputs()
    with pytest.raises(ValueError, match=r"flow: expected Tensor\[B, T, 4, H, W\]"):
        model(rgb, flow[:, :, :3])
    with pytest.raises(ValueError, match=r"rgb: expected Tensor\[B, 3, H, W\]"):
        model(rgb[:, :2], flow)
    with pytest.raises(ValueError, match="batch size 1 differs"):
        model(rgb, flow[:1])
    with pytest.raises(ValueError, match="variant"):
        tiny_model("E")
    with pytest.raises(ValueError, match="temporal_fusion"):
        tiny_model("A", temporal_fusion="max")
    with pytest.raises(ValueError, match="attention_guidance"):
        tiny_model("A", attention_guidance="none")
    with pytest.raises(ValueError, match="dropout"):
        tiny_model("A", dropout=1.5)
    with pytest.raises(ValueError, match="num_snippets"):
        tiny_model("C", num_snippets=1)
    with pytest.raises(ValueError, match=r"flow: expected Tensor\[B, T, 4, H, W\] .*got NoneType"):
        tiny_model("A")(rgb, None)


def test_single_path_flow_model_concat():
    # The 1-path row of the temporal-fusion ablation: one snippet, no STCB needed.
    model = tiny_model("flow", num_snippets=1, temporal_fusion="concat").eval()
    _, flow = make_inputs(snippets=1)
    with torch.no_grad():
        logits = model(None, flow)
        expected = model.classifier(model.flow_backbone(flow[:, 0]).pooled)
    torch.testing.assert_close(logits, expected)


@needs_stcb
def test_fixed_snippet_count_is_checked():
    model = tiny_model("C")
    rgb, flow = make_inputs(snippets=2)
    with pytest.raises(ValueError, match="T = num_snippets = 3"):
        model(rgb, flow)


# =============================================================================================
# checkpoints
# =============================================================================================
def _bn_param(key: str) -> bool:
    """A BN tensor of ``tiny`` (BN layers at features.1, .4, .7), counters excluded."""
    return key.split(".")[1] in ("1", "4", "7") and not key.endswith("num_batches_tracked")


def test_torchvision_state_dict_loads_by_name():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    bb = build_backbone("resnet18")
    report = load_backbone_checkpoint(bb, ref.state_dict())
    assert report.prefix == "" and sorted(report.skipped) == ["fc.bias", "fc.weight"]
    ref_state = ref.state_dict()
    for k, v in bb.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


@pytest.mark.parametrize("layout", ["plain", "tsn", "mmaction", "pyramid"])
def test_backbone_checkpoint_round_trip(tmp_path, layout):
    torch.manual_seed(0)
    src = build_backbone("tiny")
    with torch.no_grad():  # non-default statistics, so a skipped buffer would show
        for bn in batchnorm_layers(src):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    state = src.state_dict()
    if layout == "plain":
        ckpt, prefix = dict(state, **{"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}), ""
    elif layout == "tsn":
        # TSN/TSM trainer file: nested, DataParallel + base_model prefixes, Caffe-style [1, C]
        # BN tensors, a new_fc head and no num_batches_tracked.
        inner = {
            "module.base_model." + k: (v.unsqueeze(0) if _bn_param(k) else v)
            for k, v in state.items()
            if not k.endswith("num_batches_tracked")
        }
        inner["module.new_fc.weight"] = torch.zeros(101, 64)
        ckpt, prefix = {"epoch": 80, "arch": "tiny", "best_prec1": 85.0, "state_dict": inner}, "module.base_model."
    elif layout == "mmaction":
        inner = {"backbone." + k: v for k, v in state.items()}
        inner["cls_head.fc_cls.weight"] = torch.zeros(101, 64)
        ckpt, prefix = {"meta": {"epoch": 3}, "state_dict": inner}, "backbone."
    else:
        model = tiny_model("A")
        model.rgb_backbone.load_state_dict(state)
        ckpt, prefix = model.state_dict(), "rgb_backbone."  # found by size: flow's conv1 differs
    path = tmp_path / f"{layout}.pth"
    torch.save(ckpt, path)

    torch.manual_seed(1)
    dst = build_backbone("tiny")
    assert not torch.equal(dst.features[0].weight, src.features[0].weight)
    report = load_backbone_checkpoint(dst, str(path))
    assert report.prefix == prefix
    for k, v in state.items():
        if layout == "tsn" and k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(dst.state_dict()[k], v), k
    if layout == "tsn":
        assert "features.1.weight" in report.reshaped and "module.new_fc.weight" in report.skipped


def test_checkpoint_mismatches_raise_clear_errors(tmp_path):
    torch.manual_seed(0)
    state = build_backbone("tiny").state_dict()
    bb = build_backbone("tiny")
    missing = {k: v for k, v in state.items() if k != "features.3.weight"}
    with pytest.raises(ValueError, match=r"missing from the checkpoint: features\.3\.weight"):
        load_backbone_checkpoint(bb, missing)
    wrong = dict(state, **{"features.3.weight": torch.zeros(32, 16, 5, 5)})
    with pytest.raises(ValueError, match=r"features\.3\.weight: checkpoint \(32, 16, 5, 5\) vs model \(32, 16, 3, 3\)"):
        load_backbone_checkpoint(bb, wrong)
    extra = dict(state, **{"features.9.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected key\(s\) under prefix '': features\.9\.weight"):
        load_backbone_checkpoint(bb, extra)
    two = {**{"a." + k: v for k, v in state.items()}, **{"b." + k: v for k, v in state.items()}}
    with pytest.raises(ValueError, match="pass prefix="):
        load_backbone_checkpoint(bb, two)
    assert load_backbone_checkpoint(bb, two, prefix="b.").prefix == "b."
    with pytest.raises(ValueError, match="does not fit the 'bninception' backbone"):
        load_backbone_checkpoint(build_backbone("bninception"), state)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_backbone_checkpoint(bb, str(tmp_path / "nope.pth"))


def test_bninception_loads_the_published_layouts(tmp_path):
    """Keys and shapes of the Cadene/TSN BN-Inception files (names from the Caffe prototxt)."""
    torch.manual_seed(0)
    bni = build_backbone("bninception")
    state = bni.state_dict()
    expected_shapes = {
        "conv1_7x7_s2.weight": (64, 3, 7, 7),
        "conv1_7x7_s2.bias": (64,),
        "conv2_3x3.weight": (192, 64, 3, 3),
        "inception_3a_pool_proj.weight": (32, 192, 1, 1),
        "inception_3c_double_3x3_2.weight": (96, 96, 3, 3),
        "inception_4e_double_3x3_1.weight": (256, 192, 3, 3),
        "inception_5a_1x1.weight": (352, 1056, 1, 1),
        "inception_5b_pool_proj_bn.running_var": (128,),
    }
    for k, shape in expected_shapes.items():
        assert tuple(state[k].shape) == shape, k
    assert not any(k.startswith(("fc.", "last_linear.")) for k in state)
    # TSN's bn_inception-9f5701afb96c8044.pth: BN tensors [1, C], an ImageNet fc, no counters.
    tsn = {k: (v.view(1, -1) if "_bn." in k else v) for k, v in state.items() if "num_batches" not in k}
    tsn["fc.weight"], tsn["fc.bias"] = torch.zeros(1000, 1024), torch.zeros(1000)
    path = tmp_path / "bn_inception.pth"
    torch.save(tsn, path)
    flow = build_backbone("bninception", modality="flow", in_channels=20, checkpoint=str(path))
    _assert_mean_replicated(flow.conv1_7x7_s2.weight.detach(), state["conv1_7x7_s2.weight"], 20)
    assert torch.equal(flow.inception_5b_pool_proj_bn.running_var, state["inception_5b_pool_proj_bn.running_var"])


def test_backbones_load_from_a_whole_pyramid_checkpoint(tmp_path):
    src = tiny_model("A", seed=0)
    path = tmp_path / "pyramid.pth"
    torch.save(src.state_dict(), path)
    # Both backbones have the same key names; the first conv's size tells RGB from flow.
    dst = tiny_model("A", seed=1, rgb_checkpoint=str(path), flow_checkpoint=str(path))
    for side in ("rgb_backbone", "flow_backbone"):
        ref = getattr(src, side).state_dict()
        for k, v in getattr(dst, side).state_dict().items():
            assert torch.equal(v, ref[k]), f"{side}.{k}"


@needs_stcb
def test_full_model_state_dict_round_trip(tmp_path):
    src = tiny_model("D", seed=0, stcb_seed=0).eval()
    dst = tiny_model("D", seed=1, stcb_seed=7).eval()
    rgb, flow = make_inputs()
    with torch.no_grad():
        assert not torch.allclose(src(rgb, flow), dst(rgb, flow))
    path = tmp_path / "model.pth"
    torch.save({"config": src.config, "state_dict": src.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    dst.load_state_dict(loaded["state_dict"])  # STCB hashes are buffers: they travel too
    with torch.no_grad():
        assert torch.equal(src(rgb, flow), dst(rgb, flow))
    rebuilt = SpatiotemporalPyramid(**loaded["config"])
    rebuilt.load_state_dict(loaded["state_dict"])
    with torch.no_grad():
        assert torch.equal(src(rgb, flow), rebuilt.eval()(rgb, flow))


# =============================================================================================
# BN-Inception at 224, summary
# =============================================================================================
@needs_stcb
def test_bninception_pyramid_at_224():
    torch.manual_seed(0)
    model = SpatiotemporalPyramid(
        101, backbone="bninception", variant="D", num_snippets=3, snippet_length=10,
        motion_dim=256, attention_dim=256, fusion_dim=256, attention_hidden=32,
    ).eval()
    maps = {}

    def keep(name):
        def hook(module, inputs, output):  # returns None: observe, do not replace
            maps[name] = tuple(output.feature_map.shape)

        return hook

    model.rgb_backbone.register_forward_hook(keep("rgb"))
    model.flow_backbone.register_forward_hook(keep("flow"))
    rgb, flow = make_inputs(batch=1, snippets=3, length=10, size=224)
    with torch.no_grad():
        logits, attention = model(rgb, flow, return_attention=True)
    assert maps["rgb"] == (1, 1024, 7, 7)
    assert maps["flow"] == (3, 1024, 7, 7)  # the T snippets in one batched pass
    assert logits.shape == (1, 101) and torch.isfinite(logits).all()
    assert attention.shape == (1, 7, 7)
    torch.testing.assert_close(attention.sum(), torch.tensor(1.0))


def test_model_summary_variant_a():
    model = tiny_model("A")
    s = model_summary(model, input_size=(SIZE, SIZE), batch_size=1)
    total = sum(p.numel() for p in model.parameters())
    frozen = 2 * 2 * (32 + 64)  # per backbone: weight + bias of the 2nd and 3rd BN
    assert s.parameters["total"] == (total, total - frozen)
    # tiny at 32x32: 2 * outputs * (in_ch * 3 * 3) per conv, exactly.
    rgb_convs = 2 * (16 * 16 * 16 * 27 + 32 * 8 * 8 * 144 + 64 * 4 * 4 * 288)
    assert s.flops["rgb_backbone"] == rgb_convs
    flow_first = 2 * (16 * 16 * 16 * (2 * L) * 9)
    assert s.flops["flow_backbone"] == T * (rgb_convs - 2 * 16 * 16 * 16 * 27 + flow_first)
    assert ("rgb backbone map", (1, 64, 4, 4), 1024) in s.levels
    assert s.stcb == []
    assert "rgb_backbone" in str(s)
    assert model.training  # the summary leaves the mode alone


@needs_stcb
def test_model_summary_variant_d():
    model = tiny_model("D").eval()
    s = model_summary(model, input_size=(SIZE, SIZE), batch_size=2)
    assert [(x["name"], x["input_dims"], x["output_dim"]) for x in s.stcb] == [
        ("temporal_fusion.stcb", [64, 64, 64], 128),
        ("attention.stcb", [64, 128], 64),
        ("fusion", [64, 64, 128], 256),
    ]
    shapes = {name: shape for name, shape, _ in s.levels}
    assert shapes["level 1: motion vector"] == (2, 128)
    assert shapes["level 2: attention map"] == (2, 4, 4)
    assert shapes["level 2: attended vector"] == (2, 64)
    assert shapes["level 3: fused vector"] == (2, 256)
    assert shapes["logits"] == (2, NUM_CLASSES)
    assert s.flops["fusion"] > 0 and s.flops["total"] == sum(v for k, v in s.flops.items() if k != "total")
    assert not model.training


def test_parameter_groups_exclude_frozen_bn():
    model = tiny_model("A")
    groups = {g["name"]: g["params"] for g in model.parameter_groups()}
    assert set(groups) == {"rgb_backbone", "flow_backbone", "head"}
    n = sum(p.numel() for ps in groups.values() for p in ps)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in groups["head"]) == 2 * (64 * NUM_CLASSES + NUM_CLASSES)
