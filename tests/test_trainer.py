"""The trainer's contract (validation mode, best-epoch restore) and the logreg baseline's input checks."""

import numpy as np
import pytest
import torch
from torch import nn

from merkit.config import RunConfig, TrainConfig, result_settings
from merkit.errors import ModelInputError
from merkit.models import MERModel, create
from merkit.train import trainer
from merkit.train.augment import mirror_views
from merkit.train.trainer import WeightAverage, class_probabilities, fit, predict_proba


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


def test_weight_average_is_the_bias_corrected_exponential_average_by_hand():
    model = TinyBatchNormNet()
    average = WeightAverage(model, decay=0.5)
    for value, batches in ((1.0, 3), (3.0, 5), (7.0, 9)):
        with torch.no_grad():
            model.linear.weight.fill_(value)
            model.norm.num_batches_tracked.fill_(batches)
        average.update(model)
    # (0.5 * 0.25 * 1 + 0.5 * 0.5 * 3 + 0.5 * 7) / (1 - 0.125) = 4.375 / 0.875; after one update: 1, after two: 1.75 / 0.75
    assert torch.allclose(average.state["linear.weight"], torch.full((2, 4), 5.0))
    assert int(average.state["norm.num_batches_tracked"]) == 9  # integer buffers: the last update's
    model.linear.weight.data.fill_(-1.0)
    assert float(average.state["linear.weight"][0, 0]) == 5.0  # the average is a copy, not a view


def _recorded_average(monkeypatch, decay):
    """Patch :class:`WeightAverage` to record the classifier weight at every update; returns the
    list and a function computing the bias-corrected average of its first ``t`` entries."""
    seen = []
    update = WeightAverage.update

    def recording(self, model):
        seen.append(model.linear.weight.detach().clone())
        update(self, model)

    monkeypatch.setattr(trainer.WeightAverage, "update", recording)

    def expected(t):
        weights = [(1 - decay) * decay ** (t - 1 - s) for s in range(t)]
        return sum(w * v for w, v in zip(weights, seen[:t])) / (1 - decay**t)

    return seen, expected


def test_ema_training_ends_with_the_average_of_every_step_and_validates_the_average(monkeypatch):
    views, labels = {"x": torch.randn(12, 4, generator=torch.Generator().manual_seed(1))}, torch.arange(12) % 2
    config = TrainConfig(epochs=3, batch_size=4, lr=0.05)
    torch.manual_seed(0)
    plain = TinyBatchNormNet()
    fit(plain, views, labels, config, seed=0)

    seen, expected = _recorded_average(monkeypatch, 0.7)
    torch.manual_seed(0)
    averaged = TinyBatchNormNet()
    fit(averaged, views, labels, config.model_copy(update={"ema": 0.7}), seed=0)
    assert len(seen) == 9  # three steps an epoch
    assert torch.equal(seen[-1], plain.linear.weight)  # the average does not change the training itself
    assert torch.allclose(averaged.linear.weight, expected(9), atol=1e-6)
    assert not torch.allclose(averaged.linear.weight, plain.linear.weight, atol=1e-3)

    seen.clear()
    validated = []
    scores = iter([0.1, 0.9, 0.5])

    def validate(m):
        validated.append(m.linear.weight.detach().clone())
        return next(scores)

    torch.manual_seed(0)
    kept = TinyBatchNormNet()
    history = fit(kept, views, labels, config.model_copy(update={"ema": 0.7}), seed=0, validate=validate)
    assert torch.equal(seen[-1], plain.linear.weight)  # validating the average leaves the training alone
    for epoch, weight in enumerate(validated, start=1):
        assert torch.allclose(weight, expected(3 * epoch), atol=1e-6)
    assert history.best_epoch == 2 and torch.equal(kept.linear.weight, validated[1])


def test_later_settings_off_leave_run_fingerprints_as_they_were_and_on_enter_them():
    config = RunConfig(model={"name": "logreg"})
    settings = result_settings(config)["train"]
    assert "ema" not in settings and "members" not in settings and "test_hflip" not in settings["augment"]  # runs recorded before them stay reusable
    assert "hflip" in settings["augment"]
    changed = TrainConfig(ema=0.99, members=2, augment={"test_hflip": True})
    settings = result_settings(config.model_copy(update={"train": changed}))["train"]
    assert settings["ema"] == 0.99 and settings["members"] == 2 and settings["augment"]["test_hflip"] is True
    with pytest.raises(ValueError):
        TrainConfig(ema=1.0)


def test_mirrored_prediction_averages_the_clip_and_its_mirror_image():
    torch.manual_seed(0)
    model = create("logreg", num_classes=3, view="flow", image_size=8).eval()
    views = {"flow": torch.randn(5, 3, 8, 8)}
    with torch.no_grad():
        plain = torch.softmax(model(views), dim=1)
        mirrored = torch.softmax(model({"flow": torch.cat([-views["flow"][:, :1], views["flow"][:, 1:]], 1).flip(-1)}), dim=1)
    assert torch.allclose(class_probabilities(model, views, mirror=True), (plain + mirrored) / 2, atol=1e-6)
    assert torch.allclose(class_probabilities(model, views), plain, atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # a linear model on flow pixels is no mirror-symmetric function
    assert np.allclose(predict_proba(model, views, batch_size=2, mirror=True), ((plain + mirrored) / 2).numpy(), atol=1e-6)
    # a clip and its mirror image get the same mirrored prediction
    assert torch.allclose(class_probabilities(model, mirror_views(views), mirror=True),
                          class_probabilities(model, views, mirror=True), atol=1e-6)


def test_logreg_names_a_missing_or_misshapen_view():
    model = create("logreg", num_classes=3, view="flow", image_size=8)
    assert model({"flow": torch.zeros(2, 3, 8, 8)}).shape == (2, 3)
    with pytest.raises(ModelInputError, match="needs the 'flow' view"):
        model({"diff": torch.zeros(2, 1, 8, 8)})
    with pytest.raises(ModelInputError, match=r"must be \(B, 3, 8, 8\), got \(2, 8, 8, 3\)"):
        model({"flow": torch.zeros(2, 8, 8, 3)})  # channels last: the same number of values


def test_balanced_epochs_draw_every_class_equally_often_and_shuffled_epochs_are_permutations():
    from merkit.train.trainer import epoch_order

    labels = torch.tensor([0] * 60 + [1] * 25 + [2] * 15)  # the composite's imbalance, roughly
    shuffled = epoch_order(labels, "shuffle", torch.Generator().manual_seed(0))
    assert sorted(shuffled.tolist()) == list(range(100))
    drawn = torch.cat([epoch_order(labels, "balanced", torch.Generator().manual_seed(k)) for k in range(200)])
    assert len(drawn) == 200 * 100 and drawn.min() >= 0 and drawn.max() < 100
    shares = torch.bincount(labels[drawn], minlength=3).double() / len(drawn)
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.01, rtol=0)
    per_clip = torch.bincount(drawn, minlength=100).double() / 200  # within a class, clips equally likely
    assert per_clip[:60].mean() == pytest.approx(100 / 3 / 60, rel=0.05)
    assert per_clip[85:].mean() == pytest.approx(100 / 3 / 15, rel=0.05)
    again = epoch_order(labels, "balanced", torch.Generator().manual_seed(3))
    assert torch.equal(again, epoch_order(labels, "balanced", torch.Generator().manual_seed(3)))


def test_balanced_sampling_lifts_the_minority_class_of_an_imbalanced_problem():
    """Two overlapping classes, 90 against 10: trained on shuffled epochs the classifier sides with
    the majority; on balanced epochs it recalls most of the minority class."""
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(90, 2, generator=generator), torch.randn(10, 2, generator=generator) + 1.0])
    labels = torch.tensor([0] * 90 + [1] * 10)
    recalls = {}
    for sampler in ("shuffle", "balanced"):
        torch.manual_seed(0)
        model = create("logreg", num_classes=2, view="flow", image_size=1)
        views = {"flow": torch.cat([x, torch.zeros(100, 1)], dim=1).view(100, 3, 1, 1)}
        fit(model, views, labels, TrainConfig(epochs=30, batch_size=10, lr=0.05, sampler=sampler), seed=0)
        predicted = model(views).argmax(1)
        recalls[sampler] = float((predicted[90:] == 1).float().mean())
    assert recalls["shuffle"] <= 0.4 and recalls["balanced"] >= 0.7, recalls


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("adam", 1e-2), ("adamw", 1e-2), ("sgd", 1e-3)])
def test_cpu_optimizer_updates_equal_torch_default_single_tensor_updates(optimizer, weight_decay):
    """On the CPU the trainer's optimiser runs torch's multi-tensor (foreach) implementation, which
    is faster for many small parameters; its updates are bit-identical to the default
    per-parameter loop, so the choice changes no result."""
    from merkit.models.ststnet import STSTNet
    from merkit.train.trainer import _optimizer

    torch.manual_seed(0)
    reference = STSTNet(3)  # parameters of many small shapes
    holder = nn.Module()
    holder.params = nn.ParameterList([p.detach().clone() for p in reference.parameters()])
    params = list(holder.parameters())
    ours = _optimizer(holder, TrainConfig(optimizer=optimizer, lr=1e-2, weight_decay=weight_decay))
    assert ours.defaults["foreach"] is True
    options = {"lr": 1e-2, "weight_decay": weight_decay}
    default = {"adam": lambda p: torch.optim.Adam(p, **options), "adamw": lambda p: torch.optim.AdamW(p, **options),
               "sgd": lambda p: torch.optim.SGD(p, momentum=0.9, **options)}[optimizer](reference.parameters())
    assert default.defaults["foreach"] is None  # the per-parameter loop on the CPU
    generator = torch.Generator().manual_seed(1)
    for _ in range(100):
        for a, b in zip(reference.parameters(), params):
            scale = 10.0 ** torch.randint(-6, 2, (1,), generator=generator).item()
            a.grad = torch.randn(a.shape, generator=generator) * scale
            b.grad = a.grad.clone()
        default.step()
        ours.step()
    for a, b in zip(reference.parameters(), params):
        assert torch.equal(a, b)
