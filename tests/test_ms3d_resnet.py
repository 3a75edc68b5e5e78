"""Multi-scale 3D-ResNet (paper 004): blocks, Eqs. 3.8-3.11, outputs, selection, variants, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError
from merkit.models.blocks.fusion import AttentionalFeatureFusion, ChannelAttention
from merkit.models.blocks.multiscale import DirectionalSplit, GlobalContext, MultiScaleModule, rc1, rc2, rc3
from merkit.models.blocks.resnet3d import BasicBlock3d, Bottleneck3d, resnet3d
from merkit.models.ms3d_resnet import (
    VARIANTS,
    SpatialAttention,
    SpatioTemporalAttention,
    TemporalAttention,
    MultiScale3dResNet,
    UpsampleFuse,
    select_output,
)

SMALL = {"base_width": 4, "head_hidden": 8, "num_frames": 4, "input_size": (16, 16)}


def _views(model: nn.Module, batch: int = 2, frames: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    spec = model.input_spec[0]
    return {spec.name: torch.randn(batch, frames, spec.channels, size, size)}


# ---------------------------------------------------------------- backbone builder


@pytest.mark.parametrize(("layout", "expansion", "stage_convs"), [("paper-basic", 1, 32), ("bottleneck50", 4, 48)])
def test_resnet3d_layout_stage_shapes_and_depth(layout: str, expansion: int, stage_convs: int) -> None:
    torch.manual_seed(0)
    net = resnet3d(layout, in_channels=3, base_width=4)
    features = net(torch.randn(2, 3, 8, 32, 32))
    widths = [4 * expansion * 2**i for i in range(4)]
    assert net.stage_channels == tuple(widths)
    # stem (1,2,2) -> 8x16x16, pool (1,2,2) -> 8x8x8, then stride 1, 2, 2, 2
    assert [tuple(f.shape) for f in features] == [
        (2, widths[0], 8, 8, 8), (2, widths[1], 4, 4, 4), (2, widths[2], 2, 2, 2), (2, widths[3], 1, 1, 1)]
    main_convs = [m for stage in net.stages for m in stage.modules()
                  if isinstance(m, nn.Conv3d) and not _in_shortcut(stage, m)]
    assert len(main_convs) == stage_convs  # 6+8+12+6 = 32 (paper text), 3 x 16 = 48 (ResNet-50)
    assert net.stem[0].kernel_size == (3, 7, 7)


def _in_shortcut(stage: nn.Module, conv: nn.Module) -> bool:
    return any(conv is m for block in stage for m in block.shortcut.modules())


def test_resnet3d_rejects_unknown_layout() -> None:
    with pytest.raises(ConfigError, match="layout"):
        resnet3d("resnet99")


def test_residual_blocks_shapes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 9, 9)
    assert BasicBlock3d(6, 8, (2, 2, 2))(x).shape == (2, 8, 3, 5, 5)
    assert BasicBlock3d(6, 6)(x).shape == x.shape
    assert Bottleneck3d(6, 4, (1, 2, 2))(x).shape == (2, 16, 5, 5, 5)


# ---------------------------------------------------------------- multi-scale modules (Eqs. 3.8, 3.9)


@pytest.mark.parametrize(("factory", "num_maps"), [(rc1, 4), (rc2, 4), (rc3, 8)])
def test_rc_modules_keep_shape_and_count_maps(factory, num_maps: int) -> None:
    torch.manual_seed(0)
    module = factory(6)
    x = torch.randn(2, 6, 3, 5, 7)  # odd sizes: "same" padding in every branch
    assert module(x).shape == x.shape
    assert module.branch_weights.shape == (num_maps,)
    maps = [m for branch in module.branches for m in _as_list(branch(x))]
    assert len(maps) == num_maps and all(m.shape == x.shape for m in maps)


def _as_list(out):
    return out if isinstance(out, list) else [out]


def test_rc3_directional_kernels() -> None:
    split = DirectionalSplit(4, 4, 3)
    kernels = [d[0].kernel_size for d in split.directions]
    assert kernels == [(1, 1, 3), (1, 3, 1), (3, 1, 1)]  # transverse, longitudinal, radial


def test_global_context_is_constant_over_space_time() -> None:
    torch.manual_seed(0)
    out = GlobalContext(3)(torch.randn(2, 3, 2, 4, 4))
    assert torch.allclose(out, out[:, :, :1, :1, :1].expand_as(out))


@pytest.mark.parametrize("factory", [rc1, rc2, rc3])
def test_branch_weights_get_gradients_and_weight_the_branch_maps(factory) -> None:
    torch.manual_seed(0)
    module = factory(4).eval()
    x = torch.randn(2, 4, 3, 5, 5)
    module(x).square().mean().backward()
    grad = module.branch_weights.grad
    assert grad is not None and torch.all(grad.abs() > 0)
    with torch.no_grad():
        maps = [m for branch in module.branches for m in _as_list(branch(x))]
        before = module(x)
        # Eq. 3.8/3.9: K = sum_i w_i X_i, so raising w_i by d adds d * X_i
        module.branch_weights[1] += 0.5
        after = module(x)
        assert not torch.allclose(before, after)
        assert torch.allclose(after - before, 0.5 * maps[1], atol=1e-5)
        module.branch_weights.copy_(torch.eye(len(maps))[0])
        assert torch.allclose(module(x), maps[0])


def test_softmax_weighting_normalises() -> None:
    module = rc1(4, weighting="softmax")
    with torch.no_grad():
        module.branch_weights.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    weights = module.fusion_weights()
    assert math.isclose(float(weights.detach().sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(weights, torch.softmax(torch.arange(4.0), 0))
    with pytest.raises(ConfigError):
        MultiScaleModule([nn.Identity()], 1, weighting="l2")


def test_residual_option_adds_the_input() -> None:
    torch.manual_seed(0)
    plain, residual = rc2(4).eval(), rc2(4, residual=True).eval()
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 3, 5, 5)
    assert torch.allclose(residual(x), x + plain(x), atol=1e-6)


def test_zero_init_residual_makes_blocks_start_as_shortcuts() -> None:
    torch.manual_seed(0)
    block = resnet3d("paper-basic", base_width=4, zero_init_residual=True).stages[0][1].eval()
    x = torch.rand(2, 4, 3, 5, 5)  # non-negative: the identity shortcut passes it through the ReLU
    assert torch.allclose(block(x), x)


# ---------------------------------------------------------------- CAM and AFF (Eqs. 3.10, 3.11)


def test_channel_attention_matches_eq_3_10_by_hand() -> None:
    cam = ChannelAttention(2, reduction=1).eval()  # BN in eval: x / sqrt(1 + eps)
    with torch.no_grad():
        for branch in (cam.average_branch, cam.max_branch):
            branch[0].weight.copy_(torch.eye(2))
            branch[3].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 3.0, -2.0, 2.0], [-4.0, -1.0, -3.0, 0.0]]).view(1, 2, 1, 2, 2)
    avg, mx = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    bn = 1 / (1 + 1e-5)  # two BatchNorms with unit running variance
    expected = torch.sigmoid(bn * (F.relu(avg) + F.relu(mx)))
    assert torch.allclose(cam(x).flatten(), expected, atol=1e-6)
    assert cam(x).shape == (1, 2, 1, 1, 1)
    assert cam(torch.randn(3, 2, 4, 4)).shape == (3, 2, 1, 1)  # 2-D maps work as well


@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize(("cam_value", "expect"), [(1.0, "x"), (0.0, "y"), (0.25, "mix")])
def test_aff_follows_eq_3_11_for_forced_attention(monkeypatch, iterations: int, cam_value: float, expect: str) -> None:
    torch.manual_seed(0)
    fusion = AttentionalFeatureFusion(4, reduction=2, iterations=iterations)
    monkeypatch.setattr(ChannelAttention, "forward", lambda self, t: torch.full((t.shape[0], t.shape[1], 1, 1, 1), cam_value))
    x, y = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    z = fusion(x, y)
    wanted = {"x": x, "y": y, "mix": 0.25 * x + 0.75 * y}[expect]
    assert torch.allclose(z, wanted, atol=1e-6)


def test_aff_second_iteration_reads_first_fusion() -> None:
    torch.manual_seed(0)
    fusion = AttentionalFeatureFusion(4, reduction=2, iterations=2).eval()
    seen = []
    fusion.attention[1].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x, y = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    fusion(x, y)
    w1 = fusion.attention[0](x + y)
    assert torch.allclose(seen[0], w1 * x + (1 - w1) * y, atol=1e-6)
    with pytest.raises(ModelInputError):
        fusion(x, y[:, :, :1])


def test_upsample_fuse_matches_odd_sizes() -> None:
    torch.manual_seed(0)
    up = UpsampleFuse(8, 4, (2, 2, 2), reduction=2, iterations=2)
    assert up(torch.randn(2, 8, 2, 5, 5), torch.randn(2, 4, 4, 9, 9)).shape == (2, 4, 4, 9, 9)
    assert up(torch.randn(2, 8, 2, 17, 17), torch.randn(2, 4, 4, 34, 34)).shape == (2, 4, 4, 34, 34)


def test_attention_after_block_1_shapes_and_weighting() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, 7)
    with torch.no_grad():
        temporal, spatial = TemporalAttention(8, reduction=4)(x), SpatialAttention()(x)
    assert temporal.shape == (2, 1, 5, 1, 1) and spatial.shape == (2, 1, 5, 6, 7)
    assert 0 < float(temporal.min()) and float(temporal.max()) < 1
    attention = SpatioTemporalAttention(8)
    expected = x * attention.temporal(x)
    expected = expected * attention.spatial(expected)
    assert torch.allclose(attention(x), expected)


# ---------------------------------------------------------------- the discriminative network


def test_selection_rules_on_hand_made_logits() -> None:
    all_logits = torch.zeros(4, 3, 3)
    all_logits[2, 0] = torch.tensor([0.0, 5.0, 0.0])  # sample 0: output 2 is the most confident
    all_logits[0, 1] = torch.tensor([3.0, 0.0, 0.0])  # sample 1: output 0
    all_logits[3, 1] = torch.tensor([0.0, 0.0, 2.0])
    # sample 2: all outputs uniform (tie) -> the earliest, output 0
    chosen = select_output(all_logits, "max_confidence")
    assert torch.equal(chosen, torch.stack([all_logits[2, 0], all_logits[0, 1], all_logits[0, 2]]))
    mean = select_output(all_logits, "mean")
    assert torch.allclose(torch.softmax(mean, -1), torch.softmax(all_logits, -1).mean(0), atol=1e-6)
    assert torch.equal(select_output(all_logits, "fixed", 3), all_logits[3])
    with pytest.raises(ConfigError):
        select_output(all_logits, "fixed", 4)
    with pytest.raises(ConfigError):
        select_output(all_logits, "vote")


@pytest.mark.parametrize("selection", ["max_confidence", "mean", "fixed"])
def test_model_logits_follow_selection_and_loss_sums_four_ce(selection: str) -> None:
    torch.manual_seed(0)
    model = MultiScale3dResNet(3, selection=selection, fixed_output=2, **SMALL).eval()
    out = model(_views(model, batch=3))
    assert out["all_logits"].shape == (4, 3, 3)
    assert torch.allclose(out["logits"], select_output(out["all_logits"], selection, 2))
    target = torch.tensor([0, 2, 1])
    expected = sum(F.cross_entropy(out["all_logits"][i], target) for i in range(4))
    assert torch.allclose(model.loss(out, target), expected)


@pytest.mark.parametrize("chain", ["pairwise", "cascade"])
def test_fusion_chain_inputs(chain: str) -> None:
    torch.manual_seed(0)
    model = MultiScale3dResNet(3, fusion_chain=chain, **SMALL).eval()
    captured: dict[str, torch.Tensor] = {}
    model.multiscale[2].register_forward_hook(lambda m, a, out: captured.__setitem__("x4", out))
    model.fusions[2].register_forward_hook(lambda m, a, out: captured.__setitem__("o2", out))
    model.fusions[1].register_forward_hook(lambda m, args, out: captured.__setitem__("deep_of_o3", args[0]))
    model(_views(model))
    wanted = captured["o2"] if chain == "cascade" else captured["x4"]
    assert torch.equal(captured["deep_of_o3"], wanted)


# ---------------------------------------------------------------- variants


@pytest.mark.parametrize("layout", ["paper-basic", "bottleneck50"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_shapes(variant: str, layout: str) -> None:
    torch.manual_seed(0)
    model = MultiScale3dResNet(5, variant=variant, layout=layout, **SMALL)
    spec = model.input_spec[0]
    assert spec.name == ("frames" if variant == "no_flow" else "flow_seq")
    assert (spec.length, spec.size, spec.channels) == (4, (16, 16), 3)
    out = model(_views(model))
    outputs = 1 if variant in ("no_temporal_ms", "plain") else 4
    assert out["logits"].shape == (2, 5) and out["all_logits"].shape == (outputs, 2, 5)
    assert (len(model.fusions) > 0) == (outputs == 4)
    has_rc = any(isinstance(m, MultiScaleModule) for m in model.modules())
    assert has_rc == (variant not in ("no_spatial_ms", "plain"))
    has_cam = any(isinstance(m, ChannelAttention) for m in model.modules())
    assert has_cam == (outputs == 4)


def test_paper_input_size_maps() -> None:
    torch.manual_seed(0)
    model = MultiScale3dResNet(3, base_width=2, head_hidden=4).eval()
    assert model.input_spec[0].size == (134, 134) and model.input_spec[0].length == 16
    sizes = []
    for module in model.multiscale:
        module.register_forward_hook(lambda m, a, out: sizes.append(tuple(out.shape[2:])))
    with torch.no_grad():
        out = model({"flow_seq": torch.randn(1, 16, 3, 134, 134)})
    assert sizes == [(16, 34, 34), (8, 17, 17), (4, 9, 9), (2, 5, 5)]
    assert out["all_logits"].shape == (4, 1, 3)


def test_head_grid_keeps_where_the_motion_is() -> None:
    """head_grid=1 is global average pooling: a motion patch moved to another place of the map
    gives the same logits; head_grid=2 tells the places apart."""
    torch.manual_seed(0)
    logits = {}
    for grid in (1, 2):
        model = MultiScale3dResNet(3, head_grid=grid, **SMALL).eval()
        heads = model.heads
        assert heads[0].layers[0].in_features == model.backbone.stage_channels[3] * grid * grid
        assert heads[3].layers[0].in_features == model.backbone.stage_channels[0] * grid * grid
        top, bottom = torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 4, 4, 4)  # (B, C, T, H, W) of O4's width
        top[..., 0, 0], bottom[..., 3, 0] = 1.0, 1.0
        with torch.no_grad():
            logits[grid] = [heads[3](x) for x in (top, bottom)]
    assert torch.allclose(*logits[1])
    assert not torch.allclose(*logits[2])


def test_stem_pool_option_doubles_the_maps() -> None:
    torch.manual_seed(0)
    sizes = {}
    for pool in (True, False):
        model = MultiScale3dResNet(3, stem_pool=pool, **SMALL).eval()
        captured = []
        model.multiscale[0].register_forward_hook(lambda m, a, out: captured.append(tuple(out.shape[2:])))
        with torch.no_grad():
            model(_views(model))
        sizes[pool] = captured[0]
    assert sizes == {True: (4, 4, 4), False: (4, 8, 8)}


def test_no_flow_variant_reads_grey_frames_and_bad_input_is_named() -> None:
    torch.manual_seed(0)
    model = MultiScale3dResNet(3, variant="no_flow", frame_channels=1, **SMALL)
    assert model.input_spec[0].channels == 1
    assert model({"frames": torch.randn(2, 4, 1, 16, 16)})["logits"].shape == (2, 3)
    with pytest.raises(ModelInputError, match="frames"):
        model({"flow_seq": torch.randn(2, 4, 3, 16, 16)})
    with pytest.raises(ModelInputError, match=r"\(B, T, 1, H, W\)"):
        model({"frames": torch.randn(2, 4, 3, 16, 16)})


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="variant"):
        MultiScale3dResNet(3, variant="no_everything")
    with pytest.raises(ConfigError, match="fixed_output"):
        MultiScale3dResNet(3, variant="no_temporal_ms", selection="fixed", fixed_output=2)
    with pytest.raises(ConfigError, match="selection"):
        MultiScale3dResNet(3, selection="best")
    with pytest.raises(ConfigError, match="head_grid"):
        MultiScale3dResNet(3, head_grid=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_steps_reach_every_parameter_and_decrease_loss(variant: str) -> None:
    torch.manual_seed(0)
    grey = {"frame_channels": 1} if variant == "no_flow" else {}
    model = MultiScale3dResNet(3, variant=variant, base_width=8, head_hidden=16, num_frames=4, input_size=(16, 16), **grey)
    spec = model.input_spec[0]
    target = torch.arange(9) % 3
    patterns = torch.randn(3, 4, spec.channels, 16, 16)
    x = patterns[target] + 0.1 * torch.randn(9, 4, spec.channels, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(10):
        loss = model.loss(model({spec.name: x}), target)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
            assert not missing, f"no gradient for {missing}"
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["ms3d-resnet-paper", "ms3d-resnet-cpu"])
def test_configs_build_the_model_they_describe(name: str) -> None:
    from merkit.config import load_config
    from merkit.models import create

    config = load_config(name)
    assert config.model_name == "ms3d-resnet"
    torch.manual_seed(0)
    kwargs = config.model_kwargs
    if name.endswith("paper"):
        kwargs = {**kwargs, "base_width": 2}  # the paper width builds slowly; the shapes are what matter here
        assert (config.train.optimizer, config.train.lr, config.train.epochs) == ("adam", 1e-5, 100)
        assert config.train.augment.shift == 15 and config.views.flow == "tvl1"
    model = create("ms3d-resnet", num_classes=3, **kwargs)
    spec = model.input_spec[0]
    assert spec.size == tuple(config.views.size) and spec.length == config.views.num_frames
    assert config.train.augment.hflip and not config.train.augment.vflip
