import pytest

from merkit.config import CONFIG_DIR, config_from_dict, load_config
from merkit.errors import ConfigError


def test_every_shipped_config_validates():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert "logreg-cpu" in names
    for name in names:
        cfg = load_config(name)
        assert cfg.model_name


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
