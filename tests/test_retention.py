"""Retention (TSFmicro Eq. 2 / RetNet): decay masks, rotary position, the three computation forms."""

import math

import pytest
import torch

from merkit.errors import ConfigError
from merkit.models.blocks.retention import (
    MultiScaleRetention,
    RetNetBlock,
    causal_decay_mask,
    decay_rates,
    manhattan_decay_mask,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
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
