"""The model contract (merkit.models.base.MERModel) holds for every registered model."""

import pytest
import torch

from merkit.config import load_config
from merkit.errors import ConfigError, check_choice
from merkit.models import MERModel, available, create, input_spec, model_class

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
