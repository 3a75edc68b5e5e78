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
