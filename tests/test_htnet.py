import numpy as np
import pytest
import torch

from merkit.config import load_config
from merkit.errors import ConfigError, ModelInputError
from merkit.models import create
from merkit.models.htnet import (
    HTNet,
    BlockAggregation,
    LocalTransformer,
    LocalTransformerBlock,
    merge_blocks,
    split_blocks,
)

SMALL = dict(dim=8, heads=2, block_repeats=(1, 1, 1))


def test_shapes_and_spec():
    torch.manual_seed(0)
    model = create("htnet", num_classes=3, **SMALL)
    assert model.input_spec[0].name == "flow_regions" and model.input_spec[0].shape() == (3, 28, 28)
    regions = torch.rand(4, 3, 28, 28)
    assert model({"flow_regions": regions}).shape == (4, 3)
    assert model.features(regions).shape == (4, 32)  # 8 doubled twice
    # the widths and heads double per hierarchy; blocks hold one token at 28 px / patch 7
    assert [h.blocks[0].attention.num_heads for h in model.hierarchies] == [2, 4, 8]
    assert [h.per_side for h in model.hierarchies] == [4, 2, 1]
    assert all(h.position.shape == (1,) for h in model.hierarchies)
    bigger = HTNet(5, image_size=16, patch_size=2, **SMALL)  # 8 x 8 tokens: blocks of 2 x 2 tokens
    assert all(h.position.shape == (4,) for h in bigger.hierarchies)
    assert bigger({"flow_regions": torch.rand(2, 3, 16, 16)}).shape == (2, 5)


def test_paper_widths_and_head_width():
    with torch.device("meta"):  # shapes only: the 140 M parameters are not allocated
        model = HTNet(3)  # dim 256, heads 3, blocks (2, 2, 10)
    assert [len(h.blocks) for h in model.hierarchies] == [2, 2, 10]
    attention = model.hierarchies[0].blocks[0].attention
    assert attention.head_dim == 85  # 256 // 3: the heads are jointly 255 wide
    assert tuple(attention.qkv.weight.shape) == (3 * 255, 256) and attention.qkv.bias is None
    assert tuple(attention.proj.weight.shape) == (256, 255)
    top = model.hierarchies[2].blocks[0]
    assert top.attention.num_heads == 12 and top.attention.head_dim == 85 and top.mlp.fc1.out_features == 4096
    assert model.classifier.in_features == 1024
    assert 139e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_block_split_by_hand():
    x = torch.arange(16.0).reshape(1, 4, 4, 1)  # token (r, c) holds 4 r + c
    blocks = split_blocks(x, 2)
    assert blocks.shape == (4, 4, 1)
    assert blocks[..., 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert torch.equal(merge_blocks(blocks, 2, (4, 4)), x)
    two = torch.stack([x[0], x[0] + 100])  # batch-major: the blocks of sample 0 come first
    assert split_blocks(two, 2)[4, :, 0].tolist() == [100, 101, 104, 105]


def test_patch_embedding_aggregates_exactly_its_patch():
    torch.manual_seed(0)
    model = HTNet(3, **SMALL)
    embed = model.patch_embedding
    base = embed(torch.zeros(1, 3, 28, 28))
    for row, col in ((0, 0), (10, 3), (27, 27), (13, 14)):
        x = torch.zeros(1, 3, 28, 28)
        x[0, 1, row, col] = 1.0
        changed = (embed(x) - base).abs().sum(-1)[0]  # (16,) per token
        expected = (row // 7) * 4 + col // 7
        assert changed.nonzero().flatten().tolist() == [expected]
        # token = conv weights of that pixel: the change is the weight column of (channel 1, row % 7, col % 7)
        torch.testing.assert_close(embed(x)[0, expected] - base[0, expected],
                                   embed.proj.weight[:, 1, row % 7, col % 7])


def test_block_aggregation_by_hand():
    """Identity convolution, then layer norm over (v, -v) gives (sign v, -sign v), then 3 x 3 max
    pooling with stride 2 and padding 1: output (i, j) is the max over rows 2i-1..2i+1, columns
    2j-1..2j+1 of the 4 x 4 map."""
    aggregation = BlockAggregation(2, 2)
    with torch.no_grad():
        aggregation.conv.weight.zero_()
        aggregation.conv.weight[0, 0, 1, 1] = 1.0
        aggregation.conv.weight[1, 1, 1, 1] = 1.0
        aggregation.conv.bias.zero_()
    v = -torch.ones(4, 4)
    v[3, 3] = 1.0  # only the window of output (1, 1) sees it
    x = torch.stack([v, -v], dim=-1)[None]  # (1, 4, 4, 2)
    out = aggregation(x)
    assert out.shape == (1, 2, 2, 2)
    scale = 1 / np.sqrt(1 + 1e-5)
    torch.testing.assert_close(out[0, ..., 0], torch.tensor([[-1.0, -1.0], [-1.0, 1.0]]) * scale)
    torch.testing.assert_close(out[0, ..., 1], torch.ones(2, 2) * scale)


def test_attention_over_one_token_is_the_projected_value():
    """The paper setting: a block of one token; softmax over one key is 1, so the attention
    output is proj(value) whatever the queries and keys."""
    torch.manual_seed(0)
    block = LocalTransformerBlock(6, heads=2)
    x = torch.randn(5, 1, 6)
    attention = block.attention
    value = attention.qkv(x)[..., 2 * 6 :]  # q, k, v of 2 heads x 3
    torch.testing.assert_close(attention(x), attention.proj(value))


def test_attention_is_local_to_its_block():
    torch.manual_seed(0)
    layer = LocalTransformer(4, heads=2, depth=2, per_side=2, tokens_per_block=4)
    x = torch.randn(1, 4, 4, 4)
    changed = x.clone()
    changed[0, 0, 0] += torch.tensor([5.0, -3.0, 1.0, 0.0])  # a token of the top-left block (not a constant shift,
    # which the layer norms would remove)
    out, out_changed = layer(x), layer(changed)
    moved = (out - out_changed).abs().sum(-1)[0] > 1e-6
    assert moved[:2, :2].all() and not moved[2:, :].any() and not moved[:, 2:].any()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = HTNet(3, image_size=16, patch_size=2, **SMALL)  # blocks of 2 x 2 tokens: attention has work to do
    loss = torch.nn.functional.cross_entropy(model({"flow_regions": torch.rand(4, 3, 16, 16)}), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    last_position = "hierarchies.2.position"
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if name == last_position:
            # a scalar shared by all channels is removed by every layer norm that reads it (docstring)
            assert parameter.grad.abs().max() < 1e-6  # zero up to rounding
        else:
            assert parameter.grad.abs().max() > 1e-5, name


def test_training_learns():
    torch.manual_seed(0)
    model = HTNet(3, **SMALL)
    patterns = torch.rand(3, 3, 28, 28)
    x = patterns.repeat_interleave(4, 0) + 0.05 * torch.randn(12, 3, 28, 28)
    y = torch.arange(3).repeat_interleave(4)
    losses = []
    for _ in range(25):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model({"flow_regions": x}), y)
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.05 * parameter.grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert (model({"flow_regions": x}).argmax(1) == y).all()


def test_input_scale_multiplies_the_input():
    torch.manual_seed(0)
    release = HTNet(3, input_scale=255.0, **SMALL)
    unit = HTNet(3, **SMALL)
    unit.load_state_dict(release.state_dict())
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(release({"flow_regions": x}), unit({"flow_regions": x * 255}))


def test_bad_input_and_options():
    model = HTNet(3, **SMALL)
    with pytest.raises(ModelInputError, match="needs view 'flow_regions'"):
        model({"flow": torch.zeros(1, 3, 28, 28)})
    with pytest.raises(ModelInputError, match=r"\(B, 3, 28, 28\)"):
        model({"flow_regions": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ConfigError, match="cannot be cut into 4 x 4 blocks"):
        HTNet(3, image_size=28, patch_size=14, **SMALL)
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        HTNet(3, image_size=30, patch_size=7, **SMALL)
    with pytest.raises(ConfigError, match="block_repeats"):
        HTNet(3, dim=8, heads=2, block_repeats=(1, 1))


@pytest.mark.parametrize("name", ["htnet-megc2019-flow", "htnet-cpu"])
def test_registered_configs(name):
    config = load_config(name)
    model = create("htnet", num_classes=3, **config.model_kwargs) if name != "htnet-megc2019-flow" else None
    if name == "htnet-megc2019-flow":  # the paper's setting (about 140 M parameters: not built here)
        assert config.model_kwargs == {"image_size": 28, "patch_size": 7, "dim": 256, "heads": 3, "num_hierarchies": 3,
                                       "block_repeats": [2, 2, 10], "mlp_mult": 4, "dropout": 0.0, "input_scale": 1.0}
        assert (config.train.optimizer, config.train.lr, config.train.batch_size, config.train.epochs) == ("adam", 5e-5, 256, 800)
        assert (config.dataset.name, config.dataset.protocol, config.selection.policy) == ("megc2019-flow", "megc2019-3", "last")
    else:
        assert isinstance(model, HTNet) and model.input_spec[0].size == (28, 28)
