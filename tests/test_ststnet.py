import numpy as np
import pytest
import torch

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models.ststnet import STSTNet


def test_shapes_and_spec():
    torch.manual_seed(0)
    model = STSTNet(num_classes=3)
    assert model.input_spec[0].name == "flow" and model.input_spec[0].size == (28, 28)
    assert model.input_spec[0].shape() == (3, 28, 28)
    flow = torch.randn(4, 3, 28, 28)
    assert model({"flow": flow}).shape == (4, 3)
    assert model.features(flow).shape == (4, 400)  # 5 x 5 x (3 + 5 + 8)
    same = STSTNet(5, conv_padding=1)
    assert same({"flow": flow}).shape == (4, 5)
    assert same.classifier.in_features == 400


def test_parameter_count():
    # convs 3*(27+1) + 5*(27+1) + 8*(27+1) = 448, batch norms 2 * 16 = 32, dense 400 * 3 + 3 = 1203
    assert sum(p.numel() for p in STSTNet(3).parameters()) == 448 + 32 + 1203


def test_hand_computed_logits_on_zero_flow():
    """Zero input: each conv map is its bias; ReLU, eval batch norm (mean 0, var 1), max and
    average pooling keep the constant; the dense layer sees each channel's value 25 times,
    channel-major, streams in order 3, 5, 8."""
    torch.manual_seed(0)
    model = STSTNet(3).eval()
    biases = []
    with torch.no_grad():
        for k, stream in enumerate(model.streams):
            conv, bn = stream[0], stream[2]
            conv.bias.copy_(torch.linspace(-0.5, 1.0, conv.out_channels) + k)
            bn.weight.fill_(2.0)
            bn.bias.fill_(0.25)
            biases.append(conv.bias.numpy().copy())
    channel = np.concatenate([2.0 * np.maximum(b, 0) / np.sqrt(1 + 1e-5) + 0.25 for b in biases])
    features = np.repeat(channel, 25)
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    expected = weight @ features + bias
    logits = model({"flow": torch.zeros(2, 3, 28, 28)})
    np.testing.assert_allclose(logits.detach().numpy(), np.stack([expected] * 2), rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_training_learns():
    torch.manual_seed(0)
    model = STSTNet(3)
    patterns = torch.randn(3, 3, 28, 28)
    x = patterns.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 3, 28, 28)
    y = torch.arange(3).repeat_interleave(4)
    losses = []
    for _ in range(20):  # plain gradient descent (torch.optim's first use imports torch._dynamo: seconds)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model({"flow": x}), y)
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert torch.equal(model({"flow": x}), model({"flow": x}))
    assert (model({"flow": x}).argmax(1) == y).float().mean() > 0.9


def test_bad_input_and_options():
    model = STSTNet(3)
    with pytest.raises(ModelInputError, match="needs view 'flow'"):
        model({"apex": torch.zeros(1, 3, 28, 28)})
    with pytest.raises(ModelInputError, match=r"\(B, 3, 28, 28\)"):
        model({"flow": torch.zeros(1, 2, 28, 28)})
    with pytest.raises(ConfigError, match="conv_padding"):
        STSTNet(3, conv_padding=0)


def test_registered_and_published_config():
    from merkit.models.registry import create

    config = load_config("ststnet-megc2019-flow")
    assert config.model_name == "ststnet"
    assert (config.train.lr, config.train.batch_size, config.train.epochs, config.train.optimizer) == (5e-5, 256, 800, "adam")
    assert (config.dataset.name, config.dataset.protocol) == ("megc2019-flow", "megc2019-3")
    model = create("ststnet", num_classes=3, **config.model_kwargs)
    assert isinstance(model, STSTNet) and model.input_spec[0].size == tuple(config.views.size)


def _published_and_fused(seed: int = 0, **options):
    import copy

    torch.manual_seed(seed)
    published = STSTNet(3, fused=False, **options).train()
    fused = copy.deepcopy(published)
    fused.fused = True
    return published, fused


@pytest.mark.parametrize("conv_padding", [2, 1])
def test_fused_training_equals_the_published_layer_order(conv_padding, monkeypatch):
    """Three SGD steps on a batch that spans several chunks (and a partial one): the same loss,
    gradients, weights, running statistics and step count, up to float rounding."""
    import merkit.models.ststnet as ststnet

    monkeypatch.setattr(ststnet, "FUSED_CHUNK", 8)
    published, fused = _published_and_fused(conv_padding=conv_padding, dropout=0.0)
    flow, target = torch.randn(21, 3, 28, 28), torch.arange(21) % 3
    for _ in range(3):
        losses = []
        for model in (published, fused):
            model.zero_grad()
            loss = torch.nn.functional.cross_entropy(model({"flow": flow}), target)
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        for (name, a), (_, b) in zip(published.named_parameters(), fused.named_parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * a.grad.abs().max().item(), msg=name)
        with torch.no_grad():
            for a, b in zip(published.parameters(), fused.parameters()):
                a -= 0.05 * a.grad
                b -= 0.05 * b.grad
    for (name, a), (_, b) in zip(published.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert int(fused.streams[0][2].num_batches_tracked) == 3
    published.eval(), fused.eval()
    torch.testing.assert_close(fused({"flow": flow}), published({"flow": flow}), rtol=1e-4, atol=1e-5)


class _FixedMask(torch.nn.Module):
    def __init__(self, multipliers):
        super().__init__()
        self.multipliers = multipliers

    def forward(self, maps):
        return maps * self.multipliers


def test_fused_dropout_and_average_pooling_equal_the_published_layers(monkeypatch):
    """With the same dropout masks (an odd image size, so the 2 x 2 average pooling drops a row
    and a column of the pooled maps): the same features and gradients."""
    import merkit.models.ststnet as ststnet
    from merkit.models.ststnet import dropout_multipliers

    published, fused = _published_and_fused(image_size=33)
    flow, target = torch.randn(12, 3, 33, 33), torch.arange(12) % 3
    keep = dropout_multipliers((12, 12, 12, 16), 0.5)  # (B, h, w, C): 35 x 35 maps pool to 12 x 12
    start = 0
    for stream in published.streams:
        width = stream[0].out_channels
        stream[4] = _FixedMask(keep[..., start:start + width].permute(0, 3, 1, 2))
        start += width
    monkeypatch.setattr(ststnet, "dropout_multipliers", lambda shape, p, device: keep)
    for model in (published, fused):
        torch.nn.functional.cross_entropy(model({"flow": flow}), target).backward()
    torch.testing.assert_close(fused.features(flow), published.features(flow), rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(published.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * a.grad.abs().max().item(), msg=name)


def test_fused_variance_when_the_mean_dwarfs_the_spread():
    """A large conv bias lifts every ReLU map far above zero (mean^2 > 8 variances): the variance
    falls back to the two-pass formula and still matches batch norm's."""
    published, fused = _published_and_fused(dropout=0.0)
    with torch.no_grad():
        for model in (published, fused):
            for stream in model.streams:
                stream[0].bias.fill_(5.0)
    flow = torch.randn(16, 3, 28, 28)
    maps = published.streams[0][:2](flow)
    var, mean = torch.var_mean(maps, dim=(0, 2, 3), correction=0)
    assert (mean**2 > 8 * var).all()  # measured: about 70 variances
    torch.testing.assert_close(fused({"flow": flow}), published({"flow": flow}), rtol=1e-4, atol=1e-4)
    for a, b in zip(published.buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fused_path_steps_aside_for_a_non_positive_batchnorm_weight(monkeypatch):
    import merkit.models.ststnet as ststnet

    published, fused = _published_and_fused()
    with torch.no_grad():
        for model in (published, fused):
            model.streams[1][2].weight[2] = -0.5  # max pooling no longer commutes with this channel's norm

    def refuse(*args):
        raise AssertionError("the fused pass needs positive batch-norm weights")

    monkeypatch.setattr(ststnet.FusedStreams, "apply", refuse)
    flow = torch.randn(6, 3, 28, 28)
    torch.manual_seed(1)
    expected = published({"flow": flow})
    torch.manual_seed(1)
    assert torch.equal(fused({"flow": flow}), expected)  # the published layers, the same dropout stream


def test_dropout_multipliers_keep_each_element_with_probability_one_minus_p():
    from merkit.models.ststnet import dropout_multipliers

    shape = (64, 10, 10, 16)
    for p in (0.5, 0.2):
        torch.manual_seed(0)
        keep = dropout_multipliers(shape, p)
        assert keep.shape == shape and set(keep.unique().tolist()) == {0.0, 1 / (1 - p)}  # inverted dropout
        assert (keep != 0).float().mean().item() == pytest.approx(1 - p, abs=0.005)  # 102400 draws
        torch.manual_seed(0)
        assert torch.equal(dropout_multipliers(shape, p), keep)  # the global generator decides
    assert torch.equal(dropout_multipliers((2, 3), 0.0), torch.ones(2, 3))
    # the eight bits of a random byte are independent draws: no byte pattern dominates
    bits = (dropout_multipliers((8000, 8), 0.5) != 0).long()
    patterns = torch.bincount(bits @ (2 ** torch.arange(8)), minlength=256)
    assert patterns.min() > 5 and patterns.max() < 70  # expected 31 each


def test_fused_training_gives_the_same_weights_on_one_or_two_threads():
    """The fused pass does not split its own reductions across threads: one or two threads give
    the same weights, bit for bit on an AVX2 CPU; on an AVX-512 one oneDNN's weight-gradient
    kernel splits by thread count (1.5e-8 on a weight after three steps, measured 2026-12-02), so
    the check allows float rounding. Folds train on one thread either way
    (``merkit.train.loso.one_thread``), so a run does not depend on it."""
    import merkit.models.ststnet as ststnet

    flow, target = torch.randn(40, 3, 28, 28), torch.arange(40) % 3
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            model = STSTNet(3).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            for _ in range(3):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model({"flow": flow}), target).backward()
                optimizer.step()
        finally:
            torch.set_num_threads(1)
        results.append(model.state_dict())
    assert ststnet.FUSED_CHUNK < 40  # several chunks
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=1e-6, atol=1e-7, msg=name)
