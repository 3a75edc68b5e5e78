import math

import pytest
import torch
import torch.nn.functional as F

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models import create
from merkit.models.atm_gcn import (
    VARIANTS,
    AdaptiveTemporalMotion,
    AttentionPoolingClassifier,
    TemporalMotionGCNLayer,
    build_adjacency,
    sinusoidal_encoding,
)
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
    plain_views, padded_views = {"frames": clips}, {"frames": padded, "frames_mask": mask}
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
    assert middle({"frames": frames, "frames_mask": mask})["global_node"].tolist() == [2, 1]
    with pytest.raises(ModelInputError, match="padding"):
        model({"frames": frames, "frames_mask": mask, "apex_index": torch.tensor([1, 5])})
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
        model({"frames": torch.rand(2, 6, 1, 16, 16), "frames_mask": torch.zeros(2, 6, dtype=torch.bool)})


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
    output = model({"frames": torch.rand(2, 6, 1, 16, 16), "frames_mask": mask})
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


# --------------------------------------------------------------------------- distances in frames (Eqs. 3, 7)


def test_window_and_decay_are_measured_in_frames():
    # four nodes at frames 1, 2, 4, 8 after the onset; w = 2: edges where |t_i - t_j| <= 2
    features = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])  # similarity 1 everywhere
    node_mask = torch.ones(1, 4, dtype=torch.bool)
    times = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    adjacency, edges = build_adjacency(features, node_mask, torch.tensor([0]), 2, tau=10.0, lambda_local=1.0,
                                       lambda_global=2.0, node_times=times)
    expected_edges = torch.tensor([
        [1, 1, 1, 1],  # node 0 is the global node: edges to all (Eq. 5)
        [1, 1, 1, 0],  # 2 -> 1 (d 1), 2 -> 4 (d 2), 2 -> 8 (d 6) none
        [1, 1, 1, 0],  # 4 -> 1 (d 3) only as local -> global (Eq. 4)
        [1, 0, 0, 1],  # 8 -> global, itself
    ], dtype=torch.bool)
    assert torch.equal(edges[0], expected_edges)
    assert adjacency[0, 1, 2].item() == pytest.approx(math.exp(-2 / 10))
    assert adjacency[0, 0, 3].item() == pytest.approx(2.0 * math.exp(-7 / 10))
    assert adjacency[0, 3, 0].item() == pytest.approx(math.exp(-7 / 10))
    in_slots, _ = build_adjacency(features, node_mask, torch.tensor([0]), 2)
    assert in_slots[0, 0, 3].item() == pytest.approx(2.0 * math.exp(-3 / 10))  # slots: 0 and 3


def test_model_reads_frame_positions_unless_told_to_count_slots():
    torch.manual_seed(0)
    frames = torch.rand(1, 4, 1, 16, 16)
    spaced = {"frames": frames, "frames_position": torch.tensor([[0.0, 5.0, 10.0, 15.0]])}
    in_frames = small_model(window=2, num_frames=16).eval()
    torch.nn.init.normal_(in_frames.encoder.position_embedding.weight)
    in_slots = small_model(window=2, num_frames=16, temporal_distance="slots").eval()
    in_slots.load_state_dict(in_frames.state_dict())
    # slot positions 0..3 are what the model assumes without a position entry
    assert torch.allclose(in_frames({"frames": frames})["logits"], in_slots(spaced)["logits"], atol=1e-6)
    assert not torch.allclose(in_frames(spaced)["logits"], in_slots(spaced)["logits"], atol=1e-3)
    # the graph alone (no T(i)) also sees the spacing: the window and the decay are in frames
    plain = small_model(window=2, temporal_encoding="none").eval()
    plain_slots = small_model(window=2, temporal_encoding="none", temporal_distance="slots").eval()
    plain_slots.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain(spaced)["logits"], plain_slots(spaced)["logits"], atol=1e-5)


# --------------------------------------------------------------------------- T(i) (Eq. 2)


def test_sinusoidal_temporal_code_by_hand():
    code = sinusoidal_encoding(torch.tensor([0.0, 1.0, 2.5]), 4)
    expected = torch.tensor([
        [0.0, 1.0, 0.0, 1.0],
        [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
        [math.sin(2.5), math.cos(2.5), math.sin(0.025), math.cos(0.025)],
    ])
    assert torch.allclose(code, expected, atol=1e-6)


@pytest.mark.parametrize("encoding", ["learned", "sinusoidal"])
def test_temporal_code_is_added_to_the_stem_output(encoding):
    torch.manual_seed(0)
    model = small_model(temporal_encoding=encoding, num_frames=9).eval()
    encoder = model.encoder
    if encoding == "learned":
        torch.nn.init.normal_(encoder.position_embedding.weight)
    images, times = torch.rand(3, 1, 16, 16), torch.tensor([1.0, 4.0, 8.0])
    features, maps = encoder(images, times)
    code = encoder.position_embedding.weight[[1, 4, 8]] if encoding == "learned" else sinusoidal_encoding(times, 4)
    x, expected_maps = encoder.blocks(encoder.stem(images) + code[:, :, None, None])
    expected = encoder.head(F.adaptive_avg_pool2d(x, encoder.pool_grid).flatten(1))
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.allclose(maps[0], expected_maps[0], atol=1e-6)


def test_temporal_code_tells_equal_motions_at_different_frames_apart():
    """Every frame differs from the onset by the same image: only T(i) makes their nodes differ."""
    torch.manual_seed(0)
    onset = torch.rand(1, 1, 1, 16, 16)
    frames = torch.cat([onset, (onset + 0.2).expand(1, 5, 1, 16, 16)], dim=1)
    views = {"frames": frames, "frames_position": torch.tensor([[0.0, 1.0, 2.0, 3.0, 6.0, 9.0]])}
    with_code = small_model(num_frames=10).eval()
    torch.nn.init.normal_(with_code.encoder.position_embedding.weight)
    maps = with_code(views)["attention_maps"][0]
    assert all(not torch.allclose(maps[0], maps[k], atol=1e-4) for k in range(1, 5))
    without = small_model(num_frames=10, temporal_encoding="none").eval()
    maps = without(views)["attention_maps"][0]
    assert all(torch.allclose(maps[0], maps[k], atol=1e-6) for k in range(1, 5))


# --------------------------------------------------------------------------- the w/o motion ablation (Table IV)


def test_full_model_sees_differences_and_no_motion_sees_frames():
    torch.manual_seed(0)
    frames = torch.rand(2, 6, 1, 16, 16) * 0.5
    apex = torch.tensor([3, 4])
    brighter = frames + 0.3  # the same motion on a brighter face
    new_onset = frames.clone()
    new_onset[:, 0] = torch.rand(2, 1, 16, 16)
    full = small_model().eval()
    no_motion = small_model(variant="no_motion").eval()
    no_motion.load_state_dict(full.state_dict())

    def logits(model, clip):
        return model({"frames": clip, "apex_index": apex})["logits"]

    assert torch.allclose(logits(full, brighter), logits(full, frames), atol=1e-5)  # f_i - f_onset unchanged
    assert not torch.allclose(logits(no_motion, brighter), logits(no_motion, frames), atol=1e-4)
    assert not torch.allclose(logits(full, new_onset), logits(full, frames), atol=1e-4)
    assert torch.allclose(logits(no_motion, new_onset), logits(no_motion, frames), atol=1e-6)  # onset not a node


# --------------------------------------------------------------------------- Eq. 9: direction and normalisation


def _identity_layer(normalization: str, propagation: str) -> TemporalMotionGCNLayer:
    layer = TemporalMotionGCNLayer(3, 3, normalization, propagation)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(3))
    return layer


def test_messages_flow_along_the_edges_from_source_to_target():
    h = torch.eye(3)[None]  # node k carries the unit vector e_k
    adjacency = torch.zeros(1, 3, 3)
    adjacency[0, 0, 2] = 2.0  # edge v_0 -> v_2
    adjacency[0, 1, 2] = 6.0  # edge v_1 -> v_2
    adjacency[0, 2, 2] = 0.0
    mask = torch.ones(1, 3, dtype=torch.bool)
    raw = _identity_layer("none", "source_to_target")(h, adjacency, mask)[0]
    assert torch.allclose(raw, torch.tensor([[0.0, 0, 0], [0, 0, 0], [2.0, 6.0, 0]]))  # v_2 receives 2 e_0 + 6 e_1
    normalised = _identity_layer("row", "source_to_target")(h, adjacency, mask)[0]
    assert torch.allclose(normalised[2], torch.tensor([0.25, 0.75, 0.0]))  # divided by 2 + 6
    reverse = _identity_layer("none", "target_to_source")(h, adjacency, mask)[0]
    assert torch.allclose(reverse, torch.tensor([[0.0, 0, 2], [0, 0, 6], [0, 0, 0]]))  # v_0, v_1 read from v_2


def test_row_normalisation_divides_by_the_absolute_incoming_sum_and_keeps_lambda_ratios():
    h = torch.eye(3)[None]
    adjacency = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 1.0]]])  # into v_0: 1 (self), 3 (from v_2)
    layer = _identity_layer("row", "source_to_target")
    with torch.no_grad():
        layer.bias.fill_(0.1)
    out = layer(h, adjacency, torch.ones(1, 3, dtype=torch.bool))[0]
    assert torch.allclose(out[0], torch.tensor([0.25 + 0.1, 0.1, 0.75 + 0.1]))
    # into v_2: -1 from v_0 and 1 from itself, |-1| + |1| = 2: ReLU(-0.5 e_0 + 0.5 e_2 + 0.1)
    assert torch.allclose(out[2], torch.tensor([0.0, 0.1, 0.6]))
    assert torch.allclose(out[1], torch.full((3,), 0.1))  # no incoming edge: bias only


# --------------------------------------------------------------------------- Eq. 11: attention -> pooling -> FC


def test_classifier_is_self_attention_then_masked_mean_then_fc():
    torch.manual_seed(0)
    classifier = AttentionPoolingClassifier(dim=4, num_classes=2, heads=2, pooling="mean", dropout=0.0).eval()
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    attention = classifier.attention
    normed = F.layer_norm(h, (4,), classifier.norm.weight, classifier.norm.bias)
    q, k, v = (normed @ w.T + b for w, b in zip(attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3)))
    heads = []
    for head in range(2):
        part = slice(2 * head, 2 * head + 2)
        scores = q[0, :, part] @ k[0, :, part].T / math.sqrt(2)
        scores[:, ~mask[0]] = float("-inf")  # padding nodes are never attended to
        heads.append(torch.softmax(scores, dim=-1) @ v[0, :, part])
    attended = torch.cat(heads, dim=-1) @ attention.out_proj.weight.T + attention.out_proj.bias
    pooled = (h[0] + attended)[:3].mean(dim=0)
    expected = pooled @ classifier.fc.weight.T + classifier.fc.bias
    assert torch.allclose(classifier(h, mask)[0], expected, atol=1e-5)
    without = AttentionPoolingClassifier(4, 2, 2, "mean", 0.0, use_attention=False).eval()
    without.fc.load_state_dict(classifier.fc.state_dict())
    assert not torch.allclose(without(h, mask), classifier(h, mask), atol=1e-3)


# --------------------------------------------------------------------------- the paper configs


def test_casme3_config_is_the_papers_main_setting():
    config = load_config("atm-gcn-casme3")
    model = create(config.model_name, num_classes=7, **config.model_kwargs)
    assert len(model.encoder.blocks.blocks) == 4  # "4 CA blocks"
    assert len(model.graph.layers) == 4 and len(model.graph.adaptive) == 4  # "4 ATM-GCN layers"
    assert model.graph.window == 2 and model.graph.tau == 10.0  # "w = 2", "tau ... set to 10"
    assert model.input_spec[0].size == (224, 224) and model.input_spec[0].channels == 3  # "224 x 224", RGB
    train = config.train
    assert (train.optimizer, train.lr, train.epochs, train.schedule.type) == ("adamw", 1e-4, 50, "exponential")
    assert train.batch_size == 64  # "16 per GPU" on "4 x 40GB A100"
    assert (config.views.sampling, config.views.fps) == ("all", 30)  # every frame of the clip is a node
    assert model.takes_padded_sequences and model.temporal_distance == "frames"
    assert isinstance(model.focal_loss, FocalLoss)


def test_small_dataset_config_is_the_papers_small_setting():
    config = load_config("atm-gcn-small")
    model = create(config.model_name, num_classes=3, **config.model_kwargs)
    assert len(model.encoder.blocks.blocks) == 2 and len(model.graph.layers) == 2 and model.graph.window == 1
    assert (config.views.sampling, config.views.fps, config.views.size) == ("all", 30, (224, 224))
    assert config.train.augment.random_crop > 0 and config.train.augment.color_jitter > 0
    assert (config.train.optimizer, config.train.lr, config.train.batch_size) == ("adamw", 1e-4, 64)
