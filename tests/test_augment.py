import torch

from merkit.config import AugmentConfig
from merkit.train.augment import augment_batch


def _flow_batch():
    torch.manual_seed(0)
    flow = torch.randn(4, 3, 8, 8)
    return {"flow": flow, "onset": torch.rand(4, 1, 8, 8), "au": torch.randn(4, 5, 3)}


def test_hflip_mirrors_images_and_negates_u_only():
    views = _flow_batch()
    gen = torch.Generator().manual_seed(1)
    out = augment_batch(views, AugmentConfig(hflip=True), gen)
    mask = torch.rand(4, generator=torch.Generator().manual_seed(1)) < 0.5
    assert mask.any() and not mask.all(), "seed chosen so that some but not all samples flip"
    for i in range(4):
        if mask[i]:
            assert torch.equal(out["onset"][i], views["onset"][i].flip(-1))
            assert torch.equal(out["flow"][i, 0], -views["flow"][i, 0].flip(-1))
            assert torch.equal(out["flow"][i, 1], views["flow"][i, 1].flip(-1))
            assert torch.equal(out["flow"][i, 2], views["flow"][i, 2].flip(-1))
        else:
            assert torch.equal(out["flow"][i], views["flow"][i])
    assert torch.equal(out["au"], views["au"])


def test_vflip_negates_v_of_flow_sequences():
    seq = torch.randn(2, 4, 3, 6, 6)
    gen = torch.Generator().manual_seed(3)
    out = augment_batch({"flow_seq": seq}, AugmentConfig(vflip=True), gen)
    mask = torch.rand(2, generator=torch.Generator().manual_seed(3)) < 0.5
    for i in range(2):
        expected = seq[i].flip(-2).clone() if mask[i] else seq[i]
        if mask[i]:
            expected[:, 1] = -expected[:, 1]
        assert torch.equal(out["flow_seq"][i], expected)


def test_shift_is_the_same_translation_for_every_view_of_a_sample():
    base = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    views = {"onset": base.clone(), "apex": base.clone() + 100}
    out = augment_batch(views, AugmentConfig(random_crop=2), torch.Generator().manual_seed(0))
    assert out["onset"].shape == base.shape
    assert torch.equal(out["apex"] - 100, out["onset"])
    assert not all(torch.equal(out["onset"][i], base[i]) for i in range(3))


def test_colour_jitter_keeps_range_and_scales_diff_by_the_same_gain():
    views = {"onset": torch.full((2, 1, 4, 4), 0.5), "diff": torch.full((2, 1, 4, 4), 0.1)}
    out = augment_batch(views, AugmentConfig(color_jitter=0.3), torch.Generator().manual_seed(0))
    assert out["onset"].min() >= 0 and out["onset"].max() <= 1
    gain = out["diff"][:, 0, 0, 0] / 0.1
    assert torch.all((gain >= 0.7 - 1e-6) & (gain <= 1.3 + 1e-6))
    assert not torch.allclose(gain, torch.ones(2))
