"""The trainer's contract (validation mode, best-epoch restore) and the logreg baseline's input checks."""

import pytest
import torch
from torch import nn

from merkit.config import TrainConfig
from merkit.errors import ModelInputError
from merkit.models import MERModel, create
from merkit.train.trainer import fit


class TinyBatchNormNet(MERModel):
    """A BatchNorm layer in front of a linear classifier: training-mode calls move its statistics."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 2)

    @classmethod
    def input_spec_from(cls, options):
        return ()

    def classifier_keys(self):
        return ["linear.weight", "linear.bias"]

    def forward(self, views):
        return self.linear(self.norm(views["x"]))


def test_validation_runs_in_eval_mode_and_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = TinyBatchNormNet()
    views, labels = {"x": torch.randn(8, 4)}, torch.arange(8) % 2
    modes, means = [], []

    def validate(m):
        modes.append(m.training)
        before = m.norm.running_mean.clone()
        m({"x": torch.full((4, 4), 100.0)})  # validation data far from the training data
        means.append(torch.equal(before, m.norm.running_mean))
        return 0.5

    history = fit(model, views, labels, TrainConfig(epochs=3, batch_size=4, lr=0.01), seed=0, validate=validate)
    assert modes == [False, False, False] and all(means)
    assert history.best_epoch == 1 and len(history.val_uf1) == 3
    assert model.norm.running_mean.abs().max() < 5  # never moved towards the validation data


def test_logreg_names_a_missing_or_misshapen_view():
    model = create("logreg", num_classes=3, view="flow", image_size=8)
    assert model({"flow": torch.zeros(2, 3, 8, 8)}).shape == (2, 3)
    with pytest.raises(ModelInputError, match="needs the 'flow' view"):
        model({"diff": torch.zeros(2, 1, 8, 8)})
    with pytest.raises(ModelInputError, match=r"must be \(B, 3, 8, 8\), got \(2, 8, 8, 3\)"):
        model({"flow": torch.zeros(2, 8, 8, 3)})  # channels last: the same number of values
