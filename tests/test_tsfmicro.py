"""TSFmicro: views declared, shapes for every fusion mode and variant, gradients, forms, configs."""

import pytest
import torch

from merkit.train.loso import check_views_config
import torch.nn.functional as F

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models import create
from merkit.models.tsfmicro import FUSION_MODES, TSFmicro
from merkit.views import ViewSpec

SMALL = dict(image_size=32, in_channels=1, embed_dim=16, temporal_depth=2, spatial_depth=1, retention_heads=2,
             spatial_heads=2, stem_stride=8, projection_dim=32)


def small_model(**options) -> TSFmicro:
    return TSFmicro(num_classes=3, **{**SMALL, **options})


def random_views(model: TSFmicro, batch: int = 2) -> dict[str, torch.Tensor]:
    return {spec.name: torch.randn(batch, *spec.shape()) for spec in model.input_spec}


@pytest.mark.parametrize("retention", ["causal-1d", "manhattan-2d"])
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


def test_paper_config_builds_the_paper_architecture():
    config = load_config("tsfmicro-paper")
    assert config.model_name == "tsfmicro"
    model = create(config.model_name, num_classes=5, **config.model_kwargs).eval()
    assert model.grid == (14, 14)
    assert len(model.temporal_blocks) == 5 and len(model.spatial_blocks) == 2
    assert model.patch_embedding.proj.kernel_size == (16, 16)
    assert model.head.proj.out_features == 1024
    assert model.input_spec == (ViewSpec("diff", (224, 224), 3), ViewSpec("onset", (224, 224), 3))
    assert (config.views.size, config.views.channels) == ((224, 224), 3)
    assert config.train.optimizer == "adamw" and config.train.lr == 8e-4 and config.train.batch_size == 32
    with torch.no_grad():
        features = model.features({spec.name: torch.zeros(1, *spec.shape()) for spec in model.input_spec})
    assert features.shape == (1, 14 * 14, 512)


def test_cpu_config_agrees_with_its_views_section():
    config = load_config("tsfmicro-cpu")
    model = create(config.model_name, num_classes=5, **config.model_kwargs)
    check_views_config(model.input_spec, config)  # raises on a disagreement
    assert {s.name for s in model.input_spec} == {"flow", "onset"}
