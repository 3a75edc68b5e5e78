"""Retention (TSFmicro Eq. 2 / RetNet): decay masks, rotary position, the three computation forms."""

import math

import pytest
import torch

from merkit.errors import ConfigError, ModelInputError
from merkit.models.blocks.retention import (
    ManhattanSelfAttention,
    MultiScaleRetention,
    RetNetBlock,
    RMTBlock,
    causal_decay_mask,
    decay_rates,
    manhattan_decay_mask,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    rmt_decay_rates,
    rotary_sin_cos,
    rotate_pairs,
)


def test_causal_decay_mask_four_tokens_gamma_half():
    expected = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 1.0, 0.0, 0.0],
        [0.25, 0.5, 1.0, 0.0],
        [0.125, 0.25, 0.5, 1.0],
    ])
    mask = causal_decay_mask(torch.tensor([0.5]), 4)
    assert mask.shape == (1, 4, 4)
    torch.testing.assert_close(mask[0], expected)


def test_manhattan_decay_mask_two_by_two_grid():
    # raster order (0,0), (0,1), (1,0), (1,1); distances |dy| + |dx|
    distance = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 1], [2, 1, 1, 0]], dtype=torch.float32)
    mask = manhattan_decay_mask(torch.tensor([0.5, 0.25]), (2, 2))
    torch.testing.assert_close(mask[0], 0.5**distance)
    torch.testing.assert_close(mask[1], 0.25**distance)


def test_decay_rate_schedules():
    torch.testing.assert_close(decay_rates(3, "retnet"), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]))
    torch.testing.assert_close(decay_rates(2, "rmt"), torch.tensor([0.75, 1 - 2**-4]))
    with pytest.raises(ConfigError):
        decay_rates(2, "linear")


def test_parallel_retention_hand_computed():
    # one head, no rotation; o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m with gamma = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])[None, None]
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])[None, None]
    v = torch.tensor([[1.0], [2.0], [3.0]])[None, None]
    out = retention_parallel(q, k, v, causal_decay_mask(torch.tensor([0.5]), 3))
    # o_1 = 1*1 = 1; o_2 = 0.5*0*1 + 0*2 = 0; o_3 = 0.25*1*1 + 0.5*1*2 + 1*1*3 = 4.25
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([1.0, 0.0, 4.25]))


def test_rotary_rotates_pairs_by_position_angle():
    sin, cos = rotary_sin_cos(3, 2)  # one frequency: theta = 1 rad
    x = torch.tensor([[1.0, 0.0]] * 3)
    rotated = rotate_pairs(x, sin, cos)
    expected = torch.tensor([[math.cos(n), math.sin(n)] for n in range(3)])
    torch.testing.assert_close(rotated, expected)


def test_rotated_scores_match_complex_form_of_eq2():
    """(Q_n e^{in theta}) (K_m e^{im theta})^dagger read as complex pairs, real part = rotated dot product."""
    torch.manual_seed(0)
    length, key_dim = 5, 6
    q, k = torch.randn(length, key_dim, dtype=torch.float64), torch.randn(length, key_dim, dtype=torch.float64)
    sin, cos = rotary_sin_cos(length, key_dim, dtype=torch.float64)
    scores = rotate_pairs(q, sin, cos) @ rotate_pairs(k, sin, cos).T
    theta = 1.0 / 10000.0 ** torch.linspace(0, 1, key_dim // 2, dtype=torch.float64)
    q_complex = torch.complex(q[:, 0::2], q[:, 1::2])
    k_complex = torch.complex(k[:, 0::2], k[:, 1::2])
    for n in range(length):
        for m in range(length):
            phase_n = torch.polar(torch.ones_like(theta), n * theta)
            phase_m = torch.polar(torch.ones_like(theta), m * theta)
            expected = (q_complex[n] * phase_n * (k_complex[m] * phase_m).conj()).sum().real
            torch.testing.assert_close(scores[n, m], expected)


def test_parallel_recurrent_chunkwise_agree_functional():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 13, 4), torch.randn(2, 3, 13, 4)
    v = torch.randn(2, 3, 13, 5)
    gammas = torch.tensor([0.9, 0.6, 0.3])
    parallel = retention_parallel(q, k, v, causal_decay_mask(gammas, 13))
    torch.testing.assert_close(retention_recurrent(q, k, v, gammas), parallel, atol=1e-5, rtol=1e-5)
    for chunk in (1, 4, 5, 13, 20):
        torch.testing.assert_close(retention_chunkwise(q, k, v, gammas, chunk), parallel, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_multiscale_retention_forms_equal_parallel(form):
    torch.manual_seed(0)
    layer = MultiScaleRetention(dim=16, num_heads=2, value_factor=2)
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(layer(x, form=form, chunk_size=5), layer(x), atol=1e-5, rtol=1e-5)


def test_causal_retention_ignores_future_tokens_manhattan_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 9, 16)
    changed = x.clone()
    changed[:, -1] += 3.0
    causal = RetNetBlock(16, 2, mode="causal-1d").eval()
    torch.testing.assert_close(causal(changed, (3, 3))[:, :-1], causal(x, (3, 3))[:, :-1])
    manhattan = MultiScaleRetention(16, 2, mode="manhattan-2d")
    first_token_change = (manhattan(changed, (3, 3))[:, 0] - manhattan(x, (3, 3))[:, 0]).abs().max()
    assert first_token_change > 1e-3


def test_manhattan_has_no_recurrent_form():
    layer = MultiScaleRetention(dim=8, num_heads=2, mode="manhattan-2d")
    x = torch.randn(1, 4, 8)
    assert layer(x, grid=(2, 2)).shape == (1, 4, 8)
    for form in ("recurrent", "chunkwise"):
        with pytest.raises(ConfigError, match="only for causal-1d"):
            layer(x, grid=(2, 2), form=form)
    with pytest.raises(ConfigError):
        MultiScaleRetention(dim=8, num_heads=2)(x, form="sideways")


def test_bad_widths_raise_config_error():
    with pytest.raises(ConfigError):
        MultiScaleRetention(dim=12, num_heads=4)  # key width 3 is odd
    with pytest.raises(ConfigError):
        MultiScaleRetention(dim=8, num_heads=2, mode="3d")


# --------------------------------------------------------------------------- RMT (the released TSFmicro retention)


def test_rmt_decay_rates():
    torch.testing.assert_close(rmt_decay_rates(2, 2.0, 6.0), torch.tensor([0.75, 1 - 2**-5]))
    torch.testing.assert_close(decay_rates(4, "rmt"), rmt_decay_rates(4, 2.0, 4.0))


def _transparent_masa(decomposed: bool, dim: int = 2) -> ManhattanSelfAttention:
    """One head, decay 1/2, Q = K = 0 (uniform scores), V and the output the identity, no LePE."""
    layer = ManhattanSelfAttention(dim, 1, decomposed=decomposed, initial_value=1.0, heads_range=0.0)
    with torch.no_grad():
        for projection in (layer.q_proj, layer.k_proj):
            projection.weight.zero_()
            projection.bias.zero_()
        for projection in (layer.v_proj, layer.out_proj):
            projection.weight.copy_(torch.eye(dim))
            projection.bias.zero_()
        layer.lepe.conv.weight.zero_()
        layer.lepe.conv.bias.zero_()
    return layer


@pytest.mark.parametrize("decomposed", [False, True])
def test_manhattan_softmax_weights_by_hand_on_a_two_by_two_grid(decomposed):
    # equal scores: token n's output is sum_m 0.5^(|dx|+|dy|) x_m / sum_m 0.5^(|dx|+|dy|); the decay is
    # separable, so the row-then-column form gives the same weights here
    layer = _transparent_masa(decomposed)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 4.0]]])
    out = layer(x, (2, 2))
    # token (0,0): weights 1, 1/2, 1/2, 1/4 over tokens 0..3, sum 2.25
    expected_first = (x[0, 0] + 0.5 * x[0, 1] + 0.5 * x[0, 2] + 0.25 * x[0, 3]) / 2.25
    torch.testing.assert_close(out[0, 0], expected_first)
    # token (1,1): weights 1/4, 1/2, 1/2, 1
    expected_last = (0.25 * x[0, 0] + 0.5 * x[0, 1] + 0.5 * x[0, 2] + x[0, 3]) / 2.25
    torch.testing.assert_close(out[0, 3], expected_last)


def test_lepe_adds_a_depthwise_convolution_of_the_values():
    layer = _transparent_masa(False)
    x = torch.randn(1, 6, 2)
    plain = layer(x, (2, 3))
    with torch.no_grad():
        layer.lepe.conv.weight[:, :, 2, 2] = 3.0  # the 5 x 5 kernel's centre: LePE(V) = 3 V
    torch.testing.assert_close(layer(x, (2, 3)), plain + 3.0 * x)


def test_whole_manhattan_attention_against_a_direct_computation():
    torch.manual_seed(0)
    layer = ManhattanSelfAttention(8, 2, initial_value=1.0, heads_range=2.0)
    grid, x = (2, 3), torch.randn(2, 6, 8)
    q = layer.q_proj(x).view(2, 6, 2, 4).transpose(1, 2)
    k = layer.k_proj(x).view(2, 6, 2, 4).transpose(1, 2) / 2.0
    v = layer.v_proj(x).view(2, 6, 2, 4).transpose(1, 2)
    sin, cos = rotary_sin_cos(6, 4)
    scores = rotate_pairs(q, sin, cos) @ rotate_pairs(k, sin, cos).transpose(-1, -2)
    position = [(r, c) for r in range(2) for c in range(3)]
    distance = torch.tensor([[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in position] for a in position], dtype=torch.float32)
    gammas = torch.tensor([0.5, 0.75])  # 1 - 2^-1, 1 - 2^-(1 + 2/2)
    weights = scores.exp() * gammas[:, None, None] ** distance
    attended = (weights / weights.sum(-1, keepdim=True)) @ v
    lepe = layer.lepe.conv(layer.v_proj(x).transpose(1, 2).reshape(2, 8, 2, 3)).flatten(2).transpose(1, 2)
    expected = layer.out_proj(attended.transpose(1, 2).reshape(2, 6, 8) + lepe)
    torch.testing.assert_close(layer(x, grid), expected, atol=1e-5, rtol=1e-5)


def test_decomposed_attention_is_rows_then_columns():
    torch.manual_seed(0)
    layer = ManhattanSelfAttention(4, 1, decomposed=True, initial_value=1.0, heads_range=0.0)
    with torch.no_grad():
        layer.lepe.conv.weight.zero_()
        layer.lepe.conv.bias.zero_()
    height, width = 2, 3
    x = torch.randn(1, height * width, 4)
    sin, cos = rotary_sin_cos(height * width, 4)
    q = rotate_pairs(layer.q_proj(x), sin, cos).view(height, width, 4)
    k = rotate_pairs(layer.k_proj(x) / 2.0, sin, cos).view(height, width, 4)
    v = layer.v_proj(x).view(height, width, 4)

    def attend(queries, keys, values):  # one row or column: softmax(q k^T) weighted by 0.5^|i - j|
        index = torch.arange(len(queries))
        weights = (queries @ keys.T).exp() * 0.5 ** (index[:, None] - index[None, :]).abs().float()
        return (weights / weights.sum(-1, keepdim=True)) @ values

    rows = torch.stack([attend(q[r], k[r], v[r]) for r in range(height)])
    cols = torch.stack([attend(q[:, c], k[:, c], rows[:, c]) for c in range(width)], dim=1)
    expected = layer.out_proj(cols.reshape(1, height * width, 4))
    torch.testing.assert_close(layer(x, (height, width)), expected, atol=1e-5, rtol=1e-5)
    whole = ManhattanSelfAttention(4, 1, decomposed=False, initial_value=1.0, heads_range=0.0)
    whole.load_state_dict(layer.state_dict())
    assert not torch.allclose(whole(x, (height, width)), layer(x, (height, width)), atol=1e-4)


def test_rmt_block_is_non_causal_and_needs_its_grid():
    torch.manual_seed(0)
    block = RMTBlock(8, 2).eval()
    x = torch.randn(1, 9, 8)
    changed = x.clone()
    changed[:, -1] += 3.0
    assert (block(changed, (3, 3))[:, 0] - block(x, (3, 3))[:, 0]).abs().max() > 1e-3
    with pytest.raises(ModelInputError):
        block(x, (2, 4))
    with pytest.raises(ConfigError, match="only for causal-1d"):
        block(x, (3, 3), form="recurrent")
