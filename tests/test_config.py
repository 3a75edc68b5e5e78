import pytest

from merkit.config import config_from_dict, config_names, load_config
from merkit.errors import ConfigError
from merkit.models import input_spec


def test_every_shipped_config_validates():
    names = config_names()
    assert "logreg-cpu" in names
    for name in names:
        cfg = load_config(name)
        assert input_spec(cfg.model_name, **cfg.model_kwargs)  # the model takes every option, with the right types


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="train.epoch"):
        config_from_dict({"model": {"name": "logreg"}, "train": {"epoch": 3}})


def test_overrides_merge_into_nested_sections():
    cfg = load_config("logreg-cpu", {"train": {"epochs": 2}, "selection": {"policy": "val-split"}})
    assert cfg.train.epochs == 2
    assert cfg.train.lr == 0.01  # untouched sibling kept
    assert cfg.selection.policy == "val-split"


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ConfigError, match="logreg-cpu"):
        load_config("no-such-config")


def test_base_config_is_merged_under_the_file(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: logreg-cpu\ntrain: {epochs: 4}\nmodel: {image_size: 16}\n")
    cfg = load_config(child)
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.01
    assert cfg.model == {"name": "logreg", "image_size": 16, "in_channels": 1}


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\nmodel: {{name: logreg}}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_a_config_that_is_not_a_mapping_or_has_a_negative_seed_is_refused(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n- train\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(listed)
    with pytest.raises(ConfigError, match="seed"):
        config_from_dict({"model": {"name": "logreg"}, "seed": -1})
    with pytest.raises(ConfigError, match="fps must be null"):
        config_from_dict({"model": {"name": "logreg"}, "views": {"sampling": "interpolate", "fps": 30}})


def test_view_sizes_below_one_pixel_are_refused():
    from merkit.views import ViewSpec

    with pytest.raises(ConfigError, match="at least 1 pixel"):
        ViewSpec("onset", size=(0, 16))
    assert ViewSpec("au", size=(0, 0), length=4).length == 4  # the au view has no image size
