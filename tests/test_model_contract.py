"""The model contract (merkit.models.base.MERModel) holds for every registered model.

Every registered model under every config of it shipped with merkit (``test_model_contract``):
on random views of the declared input spec (with the ``<view>_mask``, ``<view>_position`` and
``apex_index`` entries the pipeline adds to sequence views) the forward gives ``(B, K)``
logits, the model's loss reaches every parameter, a checkpoint in the LOSO fold format
(``model.pt``) read back with :func:`merkit.models.pretrained.read_checkpoint` into a model built
from the recorded config gives the same logits, and the same seed builds the same weights and
the same training-mode forward.

Paper-size configs (16 x 134 x 134 flow for the 3D-ResNet, 70 M parameters) take minutes per
forward on one core. Every config is built at its declared size and its parameter count and
names are checked; the forward/backward contract then runs on the same architecture with the
smallest input the model accepts (:data:`SHRUNK_INPUTS`: only sizes and frame counts change;
the check that no parameter name changes with them is part of the test). Models with configs
of at most 64 x 64 inputs run at their declared size. Batch 2 everywhere (BatchNorm needs two
samples in training mode). About 30 s of one core (process time) for all configs.
"""

from __future__ import annotations

import math

import pytest
import torch

from merkit.config import config_names, load_config
from merkit.errors import ConfigError, check_choice
from merkit.models import MERModel, available, create, input_spec, logits_of, model_class
from merkit.models.pretrained import read_checkpoint
from merkit.train.loso import check_views_config



#: small options per model: the reduced configs the demo runs
SMALL = {
    "logreg": "logreg-cpu",
    "tsfmicro": "tsfmicro-cpu",
    "atm-gcn": "atm-gcn-cpu",
    "madv-net": "madv-net-synthme",
    "ms3d-resnet": "ms3d-resnet-cpu",
    "ststnet": "ststnet-megc2019-flow",
    "htnet": "htnet-cpu",
}


def small_options(name: str) -> dict:
    return load_config(SMALL[name]).model_kwargs


def test_every_registered_model_has_small_options_here():
    assert set(available()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_input_spec_without_building_equals_the_built_models(name):
    options = small_options(name)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    declared = input_spec(name, **options)
    assert torch.equal(state, torch.random.get_rng_state())  # nothing was built
    model = create(name, num_classes=3, **options)
    assert isinstance(model, MERModel) and model.registry_name == name
    assert declared == model.input_spec and declared


@pytest.mark.parametrize("name", sorted(SMALL))
def test_classifier_keys_are_exactly_the_entries_sized_by_the_class_count(name):
    options = small_options(name)
    torch.manual_seed(0)
    three, four = create(name, num_classes=3, **options), create(name, num_classes=4, **options)
    state, wider = three.state_dict(), four.state_dict()
    by_shape = {key for key in state if wider[key].shape != state[key].shape}
    assert by_shape and set(three.classifier_keys()) == by_shape
    assert all(state[key].shape[0] == 3 for key in by_shape)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_misspelt_option_or_a_value_of_the_wrong_type_names_the_option(name):
    with pytest.raises(ConfigError, match=f"model '{name}': no option 'no_such_option'"):
        create(name, num_classes=3, no_such_option=1)
    first_int = next(k for k, v in model_class(name).options({}).items() if type(v) is int)
    with pytest.raises(ConfigError, match=f"option '{first_int}'.*got 'big'"):
        input_spec(name, **{first_int: "big"})


def test_unknown_model_lists_the_models():
    with pytest.raises(ConfigError, match="unknown model 'nosuch'; available models: atm-gcn, htnet, logreg"):
        create("nosuch", num_classes=3)


def test_options_fill_defaults_and_convert_lax_types():
    options = model_class("logreg").options({"image_size": "8"})
    assert options == {"image_size": 8, "in_channels": 1, "view": "diff"}


def test_check_choice_names_the_option_the_value_and_the_choices():
    check_choice("flow", "dis", ("dis", "tvl1"))
    with pytest.raises(ConfigError, match=r"flow must be one of 'dis', 'tvl1'; got 'di'"):
        check_choice("flow", "di", ("dis", "tvl1"))


#: model -> options that shrink its input, not its architecture, for configs with large inputs
SHRUNK_INPUTS: dict[str, dict] = {
    "atm-gcn": {"image_size": [32, 32], "num_frames": 4},
    "tsfmicro": {"image_size": [32, 32]},
    "ms3d-resnet": {"input_size": [32, 32], "num_frames": 8},
    "madv-net": {"image_size": 32, "num_frames": 8},
}
LARGE_INPUT = 64 * 64
MAX_PARAMETERS = 200_000_000  # a gross blow-up; the largest shipped config (htnet-megc2019-flow) has 140 M
BATCH = 2
NUM_CLASSES = 3

CONFIGS = config_names()


def _config_model(name: str) -> str:
    return load_config(name).model_name


def test_every_registered_model_has_a_config():
    covered = {_config_model(name) for name in CONFIGS}
    assert set(available()) <= covered, f"models without a config in merkit/configs/: {set(available()) - covered}"


def random_views(model: torch.nn.Module, batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random views of ``model.input_spec``, with the entries the pipeline adds to sequence views."""
    generator = torch.Generator().manual_seed(seed)
    views: dict[str, torch.Tensor] = {}
    for spec in model.input_spec:
        shape = spec.shape(getattr(model, "num_aus", None))
        views[spec.name] = torch.rand(batch, *shape, generator=generator)
        if spec.length is not None:
            real = torch.full((batch,), spec.length)
            if getattr(model, "takes_padded_sequences", False):
                real[-1] = max(2, spec.length - 1)  # one padded clip
            mask = torch.arange(spec.length)[None] < real[:, None]
            views[spec.name] = views[spec.name] * mask.view(batch, spec.length, *[1] * (len(shape) - 1))
            views[f"{spec.name}_mask"] = mask
            views[f"{spec.name}_position"] = torch.arange(spec.length, dtype=torch.float32).expand(batch, -1) * mask
            views["apex_index"] = real // 2
    return views


def _is_large(model: torch.nn.Module) -> bool:
    return any(spec.name != "au" and spec.size[0] * spec.size[1] > LARGE_INPUT for spec in model.input_spec)


def _build(model_config: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {k: v for k, v in model_config.items() if k != "name"}
    return create(model_config["name"], num_classes=NUM_CLASSES, **options)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_model_contract(config_name, tmp_path):
    config = load_config(config_name)
    declared = _build(config.model, seed=0)
    check_views_config(declared.input_spec, config, declared)
    names = [name for name, _ in declared.named_parameters()]
    count = sum(p.numel() for p in declared.parameters())
    assert 0 < count <= MAX_PARAMETERS, f"{config_name}: {count} parameters"

    model_config = dict(config.model)
    if _is_large(declared):
        assert config.model_name in SHRUNK_INPUTS, f"{config_name}: large inputs and no SHRUNK_INPUTS entry"
        model_config.update(SHRUNK_INPUTS[config.model_name])
        model = _build(model_config, seed=0)
        assert [name for name, _ in model.named_parameters()] == names, "shrinking the input changed the blocks"
    else:
        model = declared
    del declared

    # forward: (B, K) logits, in training and in eval mode
    views = random_views(model)
    model.train()
    torch.manual_seed(1)
    output = model(views)
    logits = logits_of(output)
    assert logits.shape == (BATCH, NUM_CLASSES) and torch.isfinite(logits).all()

    # backward: the model's loss reaches every trainable parameter
    loss = model.loss(output, torch.tensor([0, NUM_CLASSES - 1]))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached, f"{config_name}: no gradient reaches {unreached}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # seeded determinism: same seed, same weights, same training-mode forward (dropout, drop path)
    twin = _build(model_config, seed=0).train()
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters()))  # no step was taken
    torch.manual_seed(1)
    torch.testing.assert_close(logits_of(twin(views)), logits.detach(), rtol=0, atol=0)
    del twin

    # checkpoint round trip in the LOSO fold format, into a model built from the recorded config
    model.eval()
    with torch.no_grad():
        expected = logits_of(model(views))
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "model": model_config, "classes": ["a", "b", "c"]}, path)
    state, classes = read_checkpoint(path)
    recorded = torch.load(path, weights_only=True)["model"]
    restored = _build(recorded, seed=123)
    restored.load_state_dict(state)
    restored.eval()
    assert classes == ["a", "b", "c"]
    with torch.no_grad():
        torch.testing.assert_close(logits_of(restored(views)), expected, rtol=0, atol=0)
