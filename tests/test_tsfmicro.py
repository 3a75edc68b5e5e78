"""TSFmicro: views declared, shapes for every fusion mode and variant, gradients, forms, configs."""

import pytest
import torch
import torch.nn.functional as F

from merkit.train.loso import check_views_config

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models import create
from merkit.models.blocks.retention import RMTBlock
from merkit.models.tsfmicro import FUSION_MODES, TSFmicro
from merkit.views import ViewSpec

SMALL = dict(image_size=32, in_channels=1, embed_dim=16, temporal_depth=2, spatial_depth=1, retention_heads=2,
             spatial_heads=2, stem_stride=8, projection_dim=32)


def small_model(**options) -> TSFmicro:
    return TSFmicro(num_classes=3, **{**SMALL, **options})


def random_views(model: TSFmicro, batch: int = 2) -> dict[str, torch.Tensor]:
    return {spec.name: torch.randn(batch, *spec.shape()) for spec in model.input_spec}


@pytest.mark.parametrize("retention", ["causal-1d", "manhattan-2d", "rmt"])
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_every_fusion_mode_gives_logits_and_uses_both_inputs(fusion, retention):
    torch.manual_seed(0)
    model = small_model(fusion=fusion, retention=retention).eval()
    views = random_views(model, batch=3)
    logits = model(views)
    assert logits.shape == (3, 3)
    assert model.features(views).shape == (3, 16, 16)  # 4 x 4 tokens of width 16
    for name in ("diff", "onset"):
        changed = dict(views, **{name: views[name] + 1.0})
        assert not torch.allclose(model(changed), logits), f"{fusion}: logits ignore {name}"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, (ViewSpec("diff", (32, 32), 1), ViewSpec("onset", (32, 32), 1))),
        ({"branches": "temporal"}, (ViewSpec("diff", (32, 32), 1),)),
        ({"branches": "spatial"}, (ViewSpec("onset", (32, 32), 1),)),
        ({"motion": "flow", "spatial_view": "apex", "in_channels": 3},
         (ViewSpec("flow", (32, 32), 3), ViewSpec("apex", (32, 32), 3))),
        ({"image_size": [32, 48], "branches": "temporal", "motion": "flow"}, (ViewSpec("flow", (32, 48), 3),)),
    ],
)
def test_input_spec_matches_variant(options, expected):
    torch.manual_seed(0)
    model = small_model(**options)
    assert model.input_spec == expected
    assert model(random_views(model)).shape == (2, 3)


def test_single_branch_variants_build_only_their_branch():
    temporal_only = small_model(branches="temporal")
    assert not hasattr(temporal_only, "patch_embedding") and not hasattr(temporal_only, "spatial_blocks")
    spatial_only = small_model(branches="spatial")
    assert not hasattr(spatial_only, "stem") and not hasattr(spatial_only, "temporal_blocks")
    assert not hasattr(small_model(fusion="early"), "spatial_blocks")  # early: one backbone, the RetNet stack


def test_late_fusion_gradients_reach_both_branches():
    torch.manual_seed(0)
    model = small_model()
    views = random_views(model, batch=4)
    F.cross_entropy(model(views), torch.tensor([0, 1, 2, 0])).backward()
    stem_grad = model.stem.layers[0].weight.grad
    patch_grad = model.patch_embedding.proj.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert patch_grad is not None and patch_grad.abs().sum() > 0
    assert model.position_embedding.weight.grad.abs().sum() > 0


def test_late_fusion_is_the_sum_of_the_branch_outputs():
    torch.manual_seed(0)
    model = small_model().eval()
    views = random_views(model)
    temporal = model._retain(model.stem(views["diff"]))
    spatial = model._attend(model._embed(views["onset"]))
    torch.testing.assert_close(model.features(views), temporal + spatial)


@pytest.mark.parametrize("layout", ["flat", "hierarchical"])
def test_fusion_modes_are_the_compositions_of_table_7(layout):
    """Each fusion mode composes the branch parts in its own order, and T->S differs from S->T."""
    layout_options = {"stage_depths": (1, 1, 1), "temporal_depth": 3} if layout == "hierarchical" else {}
    modes = FUSION_MODES if layout == "flat" else ("late", "t_to_s")  # the others need the flat layout
    features = {}
    for fusion in modes:
        torch.manual_seed(0)
        model = small_model(retention="rmt", temporal_layout=layout, fusion=fusion, **layout_options).eval()
        views = random_views(model)
        motion, face = views["diff"], views["onset"]
        with torch.no_grad():
            temporal = model._temporal(motion)
            expected = {
                "late": lambda: temporal + model._attend(model._embed(face)),
                "early": lambda: model._retain(model.stem(motion) + model._embed(face)),
                "t_to_s": lambda: model._attend(model._embed(face) + temporal),
                "s_to_t": lambda: model._retain(model.stem(motion) + model._attend(model._embed(face))),
            }[fusion]()
            features[fusion] = model.features(views)
        torch.testing.assert_close(features[fusion], expected)
    if layout == "flat":
        assert not torch.allclose(features["t_to_s"], features["s_to_t"], atol=1e-3)


def test_t_to_s_ends_in_the_spatial_layer_norm_and_s_to_t_in_the_retention_blocks():
    """The last step of T->S is the spatial branch's LayerNorm (tokens of mean 0, variance 1); of S->T a
    residual retention block (not normalised). Swapping the two orders breaks this."""
    for fusion, normalised in (("t_to_s", True), ("s_to_t", False), ("late", False)):
        torch.manual_seed(0)
        model = small_model(fusion=fusion).eval()
        with torch.no_grad():
            tokens = model.features(random_views(model, batch=3))
        mean, variance = tokens.mean(-1), tokens.var(-1, unbiased=False)
        is_normalised = torch.allclose(mean, torch.zeros_like(mean), atol=1e-4) and torch.allclose(
            variance, torch.ones_like(variance), atol=1e-3)
        assert is_normalised == normalised, fusion


@pytest.mark.parametrize("embedding", ["patch", "resize"])
def test_spatial_branch_ends_in_a_layer_norm(embedding):
    """Sec. 3.2: a LayerNorm after the ViT blocks. Tokens leave it with mean 0 and variance 1 (unit
    affine at initialisation), and its affine parameters act on F_s in late fusion."""
    torch.manual_seed(0)
    model = small_model(branches="spatial", spatial_embedding=embedding).eval()
    views = random_views(model, batch=2)
    with torch.no_grad():
        before_norm = model._embed(views["onset"])
        for block in model.spatial_blocks:
            before_norm = block(before_norm)
        tokens = model.features(views)
    torch.testing.assert_close(tokens, F.layer_norm(before_norm, (16,), eps=1e-6))
    assert not torch.allclose(before_norm.var(-1), torch.ones(2, 16), atol=0.1)  # the norm does something
    torch.manual_seed(0)
    late = small_model().eval()
    views = random_views(late)
    with torch.no_grad():
        late.spatial_norm.bias.fill_(0.5)
        shifted = late.features(views)
        late.spatial_norm.bias.zero_()
        torch.testing.assert_close(shifted - late.features(views), torch.full_like(shifted, 0.5))


@pytest.mark.parametrize("head_norm", ["batch", "layer"])
def test_head_is_fc_norm_swish_mean_linear(head_norm):
    """Eqs. 10-12 by hand: FC -> norm -> x * 1 / (1 + e^-x) -> mean over tokens -> linear."""
    torch.manual_seed(0)
    model = small_model(head_norm=head_norm).eval()
    head = model.head
    with torch.no_grad():
        if head_norm == "batch":
            head.norm.running_mean.uniform_(-0.5, 0.5)
            head.norm.running_var.uniform_(0.5, 2.0)
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.5, 0.5)
        tokens = torch.randn(2, 16, 16)
        projected = tokens @ head.proj.weight.T + head.proj.bias
        if head_norm == "batch":
            normed = (projected - head.norm.running_mean) / torch.sqrt(head.norm.running_var + head.norm.eps)
        else:
            mean, variance = projected.mean(-1, keepdim=True), projected.var(-1, unbiased=False, keepdim=True)
            normed = (projected - mean) / torch.sqrt(variance + head.norm.eps)
        normed = normed * head.norm.weight + head.norm.bias
        swish = normed / (1 + torch.exp(-normed))
        expected = swish.mean(dim=1) @ head.classifier.weight.T + head.classifier.bias
        torch.testing.assert_close(head(tokens), expected, atol=1e-5, rtol=1e-5)
        relu_instead = F.relu(normed).mean(dim=1) @ head.classifier.weight.T + head.classifier.bias
        assert not torch.allclose(head(tokens), relu_instead, atol=1e-3)


def test_hierarchical_layout_stages_and_grids():
    torch.manual_seed(0)
    model = small_model(retention="rmt", temporal_layout="hierarchical", stage_depths=(1, 2, 1), temporal_depth=4)
    assert isinstance(model.stem, torch.nn.Module) and not hasattr(model, "temporal_blocks")
    widths = [stage.blocks[0].norm1.normalized_shape[0] for stage in model.temporal_stages]
    assert widths == [4, 8, 16] and [len(stage.blocks) for stage in model.temporal_stages] == [1, 2, 1]
    assert [stage.blocks[0].retention.decomposed for stage in model.temporal_stages] == [True, False, False]
    assert [stage.merge is None for stage in model.temporal_stages] == [False, False, True]
    views = random_views(model)
    assert model._temporal(views["diff"]).shape == (2, 16, 16)  # 32 px -> 16 -> 8 -> 4 x 4 tokens
    assert model(views).shape == (2, 3)


@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_recurrent_and_chunkwise_forms_give_the_parallel_logits(form):
    torch.manual_seed(0)
    parallel = small_model().eval()
    other = small_model(retention_form=form, chunk_size=5).eval()
    other.load_state_dict(parallel.state_dict())
    views = random_views(parallel)
    torch.testing.assert_close(other(views), parallel(views), atol=1e-5, rtol=1e-5)


def test_head_pools_over_tokens():
    torch.manual_seed(0)
    model = small_model().eval()
    tokens = torch.randn(2, 16, 16)
    permuted = tokens[:, torch.randperm(16)]
    torch.testing.assert_close(model.head(permuted), model.head(tokens))


def test_training_steps_reduce_loss_on_separable_toy_batch():
    torch.manual_seed(0)
    model = small_model(drop_path_rate=0.0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    diff = 0.05 * torch.randn(8, 1, 32, 32)
    for index, label in enumerate(labels.tolist()):  # class k moves the k-th horizontal band of the face
        diff[index, :, 8 * label + 4: 8 * label + 12, 8:24] += 0.5
    views = {"diff": diff, "onset": torch.rand(8, 1, 32, 32)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(views), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_views_raise_model_input_error():
    model = small_model()
    views = random_views(model)
    with pytest.raises(ModelInputError, match="'onset'"):
        model({"diff": views["diff"]})
    with pytest.raises(ModelInputError, match="diff"):
        model({"diff": torch.randn(2, 3, 32, 32), "onset": views["onset"]})
    with pytest.raises(ModelInputError, match="batch sizes"):
        model({"diff": views["diff"], "onset": torch.randn(3, 1, 32, 32)})


@pytest.mark.parametrize(
    "options",
    [
        {"fusion": "early", "branches": "temporal"},
        {"retention": "manhattan-2d", "retention_form": "recurrent"},
        {"image_size": 36},
        {"stem_stride": 6},
        {"fusion": "middle"},
        {"in_channels": 2},
        {"head_norm": "group"},
        {"temporal_layout": "hierarchical"},  # needs retention rmt
        {"temporal_layout": "hierarchical", "retention": "rmt", "fusion": "s_to_t"},
        {"temporal_layout": "hierarchical", "retention": "rmt", "stage_depths": (1, 1)},
        {"temporal_layout": "hierarchical", "retention": "rmt", "stage_depths": (1, 1, 1)},  # sum != temporal_depth
        {"retention": "rmt", "retention_form": "chunkwise"},
        {"spatial_embedding": "crop"},
    ],
)
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        small_model(**options)


def test_registry_builds_tsfmicro_and_rejects_unknown_options():
    model = create("tsfmicro", num_classes=4, **SMALL)
    assert isinstance(model, TSFmicro)
    with pytest.raises(ConfigError):
        create("tsfmicro", num_classes=4, depth_of_field=3)


def test_paper_config_builds_the_released_architecture():
    config = load_config("tsfmicro-paper")
    assert config.model_name == "tsfmicro"
    model = create(config.model_name, num_classes=5, **config.model_kwargs).eval()
    assert model.grid == (14, 14)
    assert [len(stage.blocks) for stage in model.temporal_stages] == [1, 1, 2, 1]  # "a five-layer RetNet"
    assert [stage.blocks[0].retention.decomposed for stage in model.temporal_stages] == [True, True, False, False]
    assert [stage.blocks[0].norm1.normalized_shape[0] for stage in model.temporal_stages] == [64, 128, 256, 512]
    assert all(isinstance(block, RMTBlock) for stage in model.temporal_stages for block in stage.blocks)
    assert len(model.spatial_blocks) == 2 and model.patch_embedding.proj.kernel_size == (1, 1)
    assert model.head.proj.out_features == 1024
    # the released network has 12,793,003 parameters, 3,590 of which it never uses
    assert sum(p.numel() for p in model.parameters()) == 12_789_413
    assert model.input_spec == (ViewSpec("diff", (224, 224), 3), ViewSpec("onset", (224, 224), 3))
    assert (config.views.size, config.views.channels, config.views.face) == ((224, 224), 3, "mtcnn")
    assert config.train.optimizer == "adamw" and config.train.lr == 8e-4 and config.train.batch_size == 32
    with torch.no_grad():
        features = model.features({spec.name: torch.zeros(1, *spec.shape()) for spec in model.input_spec})
    assert features.shape == (1, 14 * 14, 512)


def test_flat_layout_at_paper_size_is_the_text_read_literally():
    config = load_config("tsfmicro-paper")
    options = {**config.model_kwargs, "temporal_layout": "flat", "retention": "causal-1d", "spatial_embedding": "patch"}
    model = create("tsfmicro", num_classes=5, **options)
    assert len(model.temporal_blocks) == 5 and model.patch_embedding.proj.kernel_size == (16, 16)
    assert [m.out_channels for m in model.stem.layers if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256, 512]
    assert sum(p.numel() for p in model.parameters()) == 23_341_573


def test_cpu_config_agrees_with_its_views_section():
    config = load_config("tsfmicro-cpu")
    model = create(config.model_name, num_classes=5, **config.model_kwargs)
    check_views_config(model.input_spec, config)  # raises on a disagreement
    assert {s.name for s in model.input_spec} == {"flow", "onset"}
