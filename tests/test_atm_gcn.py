import math

import pytest
import torch
import torch.nn.functional as F

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models import create
from merkit.models.atm_gcn import VARIANTS, AdaptiveTemporalMotion, build_adjacency
from merkit.models.blocks.attention import ContinuousAttentionStack
from merkit.models.blocks.losses import FocalLoss

SMALL = dict(
    num_frames=6,
    image_size=16,
    in_channels=1,
    stem_channels=4,
    stem_stride=1,
    ca_channels=(4, 8),
    pool_grid=2,
    feature_dim=8,
    gcn_dim=8,
    gcn_layers=2,
    window=1,
    attention_heads=2,
)


def small_model(**overrides):
    return create("atm-gcn", num_classes=3, **{**SMALL, **overrides})


# --------------------------------------------------------------------------- Eqs. 3-8

# five nodes with 2-D features at these angles (degrees) and arbitrary lengths: the angular
# similarity of nodes i, j is 1 - |angle_i - angle_j| / 180
ANGLES = [0.0, 90.0, 45.0, 180.0, 60.0]
LENGTHS = [1.0, 2.0, 0.5, 3.0, 1.0]
GLOBAL = 3
TAU, LAMBDA_LOCAL, LAMBDA_GLOBAL = 10.0, 1.0, 3.0
# edge sets v_i -> v_j written out by hand (global node 3: Eq. 4 adds i -> 3, Eq. 5 adds 3 -> all)
EDGES = {
    1: {0: {0, 1, 3}, 1: {0, 1, 2, 3}, 2: {1, 2, 3}, 3: {0, 1, 2, 3, 4}, 4: {3, 4}},
    2: {0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}, 2: {0, 1, 2, 3, 4}, 3: {0, 1, 2, 3, 4}, 4: {2, 3, 4}},
}


def hand_adjacency(window: int) -> torch.Tensor:
    expected = torch.zeros(6, 6)  # node 5 is padding
    for i, targets in EDGES[window].items():
        for j in targets:
            similarity = 1 - abs(ANGLES[i] - ANGLES[j]) / 180
            lam = LAMBDA_GLOBAL if i == GLOBAL else LAMBDA_LOCAL
            expected[i, j] = similarity * math.exp(-abs(i - j) / TAU) * lam
    return expected


@pytest.mark.parametrize("window", [1, 2])
def test_adjacency_matches_hand_computed_five_node_graph(window):
    radians = torch.tensor(ANGLES) * math.pi / 180
    features = torch.stack([torch.cos(radians), torch.sin(radians)], dim=1) * torch.tensor(LENGTHS)[:, None]
    features = torch.cat([features, torch.tensor([[5.0, -7.0]])])[None]  # + one padding node
    node_mask = torch.tensor([[True] * 5 + [False]])
    adjacency, edge_mask = build_adjacency(
        features, node_mask, torch.tensor([GLOBAL]), window, TAU, LAMBDA_LOCAL, LAMBDA_GLOBAL
    )
    expected = hand_adjacency(window)
    expected_edges = torch.zeros(6, 6, dtype=torch.bool)
    for i, targets in EDGES[window].items():
        expected_edges[i, list(targets)] = True
    assert torch.equal(edge_mask[0], expected_edges)
    assert torch.allclose(adjacency[0], expected, atol=1e-5)
    # spot checks: 0 -> 3 are opposite (weight 0); 3 -> 4 is a global edge: (1 - 120/180) e^-0.1 * 3
    assert adjacency[0, 3, 4].item() == pytest.approx((1 / 3) * math.exp(-0.1) * 3, abs=1e-5)
    assert adjacency[0, 3, 3].item() == pytest.approx(LAMBDA_GLOBAL)


def test_adjacency_is_differentiable_on_self_loops():
    features = torch.randn(1, 4, 3, requires_grad=True)
    adjacency, _ = build_adjacency(features, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1]), 1)
    adjacency.sum().backward()
    assert torch.isfinite(features.grad).all()


# --------------------------------------------------------------------------- Eq. 10


def adaptive_inputs(num_nodes=5):
    torch.manual_seed(0)
    previous, initial = torch.randn(2, num_nodes, num_nodes), torch.rand(2, num_nodes, num_nodes)
    edge_mask = torch.rand(2, num_nodes, num_nodes) > 0.4
    node_mask = torch.ones(2, num_nodes, dtype=torch.bool)
    node_mask[1, -1] = False
    return previous, initial, edge_mask, node_mask


def test_adaptive_tm_forget_rate_one_reproduces_initial_adjacency():
    previous, initial, edge_mask, node_mask = adaptive_inputs()
    layer = AdaptiveTemporalMotion(max_nodes=7, forget_rate=1.0, learn_forget_rate=False)
    torch.nn.init.normal_(layer.fc.weight)
    assert torch.allclose(layer(previous, initial, edge_mask, node_mask), initial)


@pytest.mark.parametrize("keep_sparsity", [True, False])
def test_adaptive_tm_forget_rate_zero_is_the_fc_path(keep_sparsity):
    previous, initial, edge_mask, node_mask = adaptive_inputs()
    layer = AdaptiveTemporalMotion(max_nodes=7, forget_rate=0.0, learn_forget_rate=False, keep_sparsity=keep_sparsity)
    torch.nn.init.normal_(layer.fc.weight)
    torch.nn.init.normal_(layer.fc.bias)
    weight, bias = layer.fc.weight[:5, :5], layer.fc.bias[:5]
    expected = torch.einsum("bik,jk->bij", previous, weight) + bias
    allowed = edge_mask if keep_sparsity else node_mask[:, :, None] & node_mask[:, None, :]
    assert torch.allclose(layer(previous, initial, edge_mask, node_mask), expected * allowed, atol=1e-5)


def test_adaptive_tm_starts_at_identity_with_learnt_forget_rate():
    previous, initial, edge_mask, node_mask = adaptive_inputs()
    layer = AdaptiveTemporalMotion(max_nodes=5, forget_rate=0.25)
    assert layer.forget_rate.item() == pytest.approx(0.25)
    out = layer(previous, initial, edge_mask, node_mask)
    assert torch.allclose(out, 0.75 * previous * edge_mask + 0.25 * initial, atol=1e-6)
    out.sum().backward()
    assert layer.forget_logit.grad is not None
    with pytest.raises(ConfigError):
        AdaptiveTemporalMotion(max_nodes=5, forget_rate=1.0, learn_forget_rate=True)


def test_full_model_with_fixed_forget_rate_one_equals_no_atm():
    torch.manual_seed(0)
    full = small_model(learn_forget_rate=False, forget_rate=1.0).eval()
    for layer in full.graph.adaptive:
        torch.nn.init.normal_(layer.fc.weight)
    no_atm = small_model(variant="no_atm").eval()
    missing, unexpected = no_atm.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(".adaptive." in key for key in unexpected)
    views = {"frames": torch.rand(2, 6, 1, 16, 16)}
    assert torch.allclose(full(views)["logits"], no_atm(views)["logits"], atol=1e-6)


# --------------------------------------------------------------------------- masking, apex


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("with_apex", [True, False])
def test_masked_padding_frames_change_nothing(mode, with_apex):
    torch.manual_seed(0)
    model = small_model(num_frames=9, pooling="mean")
    for layer in model.graph.adaptive:
        torch.nn.init.normal_(layer.fc.weight, std=0.3)
    model.train(mode == "train")
    clips = torch.rand(2, 6, 1, 16, 16)
    clips[:, 3] += 0.5  # the largest motion: the apex pair for the max_motion rule
    garbage = torch.rand(2, 3, 1, 16, 16) * 5
    padded = torch.cat([clips, garbage], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3] * 2)
    plain_views, padded_views = {"frames": clips}, {"frames": padded, "frame_mask": mask}
    if with_apex:
        plain_views["apex_index"] = padded_views["apex_index"] = torch.tensor([3, 2])
    plain, masked = model(plain_views), model(padded_views)
    assert torch.allclose(plain["logits"], masked["logits"], atol=1e-5)
    assert torch.equal(plain["global_node"], masked["global_node"])
    assert torch.allclose(plain["attention_maps"], masked["attention_maps"][:, :5], atol=1e-6)
    assert (masked["attention_maps"][:, 5:] == 0).all()


def test_global_node_from_apex_index_and_rules():
    torch.manual_seed(0)
    frames = torch.rand(2, 6, 1, 16, 16) * 0.01
    frames[0, 4] += 0.5
    frames[1, 2] += 0.5
    model = small_model().eval()
    assert model({"frames": frames})["global_node"].tolist() == [3, 1]  # largest |f_i - f_onset|
    assert model({"frames": frames, "apex_index": torch.tensor([5, 0])})["global_node"].tolist() == [4, 0]
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    middle = small_model(apex_rule="middle").eval()
    assert middle({"frames": frames, "frame_mask": mask})["global_node"].tolist() == [2, 1]
    with pytest.raises(ModelInputError, match="padding"):
        model({"frames": frames, "frame_mask": mask, "apex_index": torch.tensor([1, 5])})
    with pytest.raises(ModelInputError):
        model({"frames": frames, "apex_index": torch.tensor([1, 6])})


def test_flow_motion_input_reads_the_flow_sequence():
    torch.manual_seed(0)
    model = small_model(motion_input="flow").eval()
    (spec,) = model.input_spec
    assert (spec.name, spec.channels, spec.length) == ("flow_seq", 3, 6)
    flow = torch.randn(2, 6, 3, 16, 16) * 0.01
    flow[0, 2] += 1.0  # the strongest onset -> frame flow: pair 2 -> node 1
    flow[1, 5] += 1.0
    output = model({"flow_seq": flow})
    assert output["logits"].shape == (2, 3) and output["global_node"].tolist() == [1, 4]
    with pytest.raises(ModelInputError, match="flow_seq"):
        model({"frames": torch.rand(2, 6, 1, 16, 16)})
    no_motion = small_model(motion_input="flow", variant="no_motion")
    assert no_motion.input_spec[0].name == "frames"


def test_wrong_input_shapes_are_rejected():
    model = small_model()
    with pytest.raises(ModelInputError):
        model({"frames": torch.rand(2, 7, 1, 16, 16)})  # longer than num_frames
    with pytest.raises(ModelInputError):
        model({"frames": torch.rand(2, 6, 3, 16, 16)})
    with pytest.raises(ModelInputError):
        model({"frames": torch.rand(2, 6, 1, 16, 16), "frame_mask": torch.zeros(2, 6, dtype=torch.bool)})


# --------------------------------------------------------------------------- training


ENCODER_PARAMETERS = (
    "encoder.stem.0.weight",
    "encoder.blocks.blocks.0.conv1.weight",
    "encoder.blocks.blocks.0.attention.0.weight",
)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_with_gradients_reaching_the_motion_encoder(variant):
    torch.manual_seed(0)
    model = small_model(variant=variant, focal_alpha=[1.0, 2.0, 1.0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    views = {"frames": torch.rand(4, 6, 1, 16, 16), "apex_index": torch.tensor([2, 3, 5, 1])}
    target = torch.tensor([0, 1, 2, 1])
    stem_before = model.encoder.stem[0].weight.detach().clone()
    losses = []
    for _ in range(5):
        output = model(views)
        loss = model.loss(output, target)
        optimizer.zero_grad()
        loss.backward()
        for name in ENCODER_PARAMETERS:
            grad = model.get_parameter(name).grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not torch.equal(stem_before, model.encoder.stem[0].weight)
    assert (model.graph is None) == (variant == "no_gcn")
    assert (model.graph is not None and model.graph.adaptive is not None) == (variant in ("full", "no_motion"))


def test_model_loss_is_the_configured_focal_loss():
    torch.manual_seed(0)
    model = small_model(focal_alpha=[0.5, 1.0, 2.0], focal_gamma=1.0).eval()
    output = model({"frames": torch.rand(3, 6, 1, 16, 16)})
    target = torch.tensor([2, 0, 1])
    expected = FocalLoss([0.5, 1.0, 2.0], 1.0)(output["logits"], target)
    assert torch.allclose(model.loss(output, target), expected)


# --------------------------------------------------------------------------- continuous attention


def test_continuous_attention_maps_have_right_shapes_and_chain():
    torch.manual_seed(0)
    stack = ContinuousAttentionStack(3, (4, 8, 8))
    features, maps = stack(torch.randn(2, 3, 20, 20))
    assert features.shape == (2, 8, 5, 5)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 20, 20), (2, 1, 10, 10), (2, 1, 5, 5)]
    for previous, current in zip(maps, maps[1:]):
        assert ((current >= 0) & (current <= 1)).all()
        # each map is a sigmoid times the previous block's max-pooled map, so never above it
        assert (current <= F.max_pool2d(previous, 3, 2, 1) + 1e-6).all()


def test_model_returns_first_block_attention_maps_in_unit_interval():
    torch.manual_seed(0)
    model = small_model(stem_stride=2)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    output = model({"frames": torch.rand(2, 6, 1, 16, 16), "frame_mask": mask})
    maps = output["attention_maps"]
    assert maps.shape == (2, 5, 8, 8)
    assert ((maps >= 0) & (maps <= 1)).all() and (maps[1, 2:] == 0).all() and (maps[1, :2] > 0).all()


# --------------------------------------------------------------------------- registry and configs


def test_invalid_options_are_config_errors():
    with pytest.raises(ConfigError):
        small_model(lambda_local=2.0, lambda_global=2.0)
    with pytest.raises(ConfigError):
        small_model(variant="no_graph")
    with pytest.raises(ConfigError):
        small_model(focal_alpha=[1.0, 2.0])
    with pytest.raises(ConfigError):
        small_model(no_such_option=1)


@pytest.mark.parametrize("name", ["atm-gcn-casme3", "atm-gcn-small", "atm-gcn-cpu"])
def test_configs_build_a_model_matching_their_views(name):
    config = load_config(name)
    model = create(config.model_name, num_classes=3, **config.model_kwargs)
    (spec,) = model.input_spec
    assert spec.name == ("flow_seq" if config.model.get("motion_input") == "flow" else "frames")
    assert tuple(config.views.size) == spec.size and config.views.num_frames == spec.length
    if spec.name == "frames":
        assert config.views.channels == spec.channels
