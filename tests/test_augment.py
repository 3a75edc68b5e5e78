import torch

from merkit.config import AugmentConfig
from merkit.train.augment import augment_batch, mirror_views


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


def test_mirror_views_mirrors_every_sample_as_a_training_flip_does():
    views = _flow_batch()
    out = mirror_views(views)
    assert torch.equal(out["onset"], views["onset"].flip(-1))
    assert torch.equal(out["flow"][:, 0], -views["flow"][:, 0].flip(-1))  # u changes sign
    assert torch.equal(out["flow"][:, 1:], views["flow"][:, 1:].flip(-1))  # v and strain do not
    assert torch.equal(out["au"], views["au"])
    twice = mirror_views(out)
    assert all(torch.equal(twice[name], views[name]) for name in views)
    # a training flip of a sample that flips is the same image
    flipped = augment_batch(views, AugmentConfig(hflip=True), torch.Generator().manual_seed(1))
    mask = torch.rand(4, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(flipped["flow"][mask], out["flow"][mask])


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


def test_offline_copies_are_paper_004s_four_shifts_and_a_vertical_flip():
    from merkit.train.augment import offline_copies

    assert offline_copies(AugmentConfig()) == [(0, 0, False)]
    copies = offline_copies(AugmentConfig(offline_shift=15, offline_vflip=True))
    assert copies == [(0, 0, False), (0, -15, False), (0, 15, False), (-15, 0, False), (15, 0, False), (0, 0, True)]


def test_offline_copy_translates_content_and_flips_flow_upside_down():
    from merkit.train.augment import apply_offline_copies, offline_copies

    copies = offline_copies(AugmentConfig(offline_shift=2, offline_vflip=True))
    seq = torch.randn(6, 2, 3, 8, 8)  # flow_seq (B, T, 3, H, W)
    out = apply_offline_copies({"flow_seq": seq, "au": torch.ones(6, 2, 4)}, torch.arange(6), copies)["flow_seq"]
    assert torch.equal(out[0], seq[0])
    # copy 2 = (dy, dx) = (0, +2): content moves two columns right, the left border is replicated
    assert torch.equal(out[2][..., 2:], seq[2][..., :-2]) and torch.equal(out[2][..., 0], seq[2][..., 0])
    # copy 1 = (0, -2): two columns left; copy 3 = (-2, 0): two rows up; copy 4: two rows down
    assert torch.equal(out[1][..., :-2], seq[1][..., 2:])
    assert torch.equal(out[3][..., :-2, :], seq[3][..., 2:, :]) and torch.equal(out[4][..., 2:, :], seq[4][..., :-2, :])
    # copy 5: upside down, v negated (the face moves the other way vertically), u and strain kept
    flipped = seq[5].flip(-2)
    assert torch.equal(out[5][:, 0], flipped[:, 0]) and torch.equal(out[5][:, 1], -flipped[:, 1])
    assert torch.equal(out[5][:, 2], flipped[:, 2])


def test_fit_visits_every_offline_copy_once_per_epoch():
    from merkit.config import TrainConfig
    from merkit.train.trainer import fit

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(2))

        def forward(self, views):
            seen.append(views["flow"].clone())
            return self.bias.expand(len(views["flow"]), 2)

        def loss(self, output, target):
            return torch.nn.functional.cross_entropy(output, target)

    flow = torch.zeros(3, 3, 8, 8)
    flow[:, 1, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # v at the top-left corner tells the clips and the flip apart
    config = TrainConfig(epochs=1, batch_size=4, augment=AugmentConfig(offline_shift=1, offline_vflip=True))
    fit(Recorder(), {"flow": flow}, torch.tensor([0, 1, 0]), config, seed=0)
    batch = torch.cat(seen)
    assert len(batch) == 3 * 6  # 3 clips x (the clip, 4 shifts, 1 flip)
    assert sorted(batch[:, 1, -1, 0].tolist()) == [-3.0, -2.0, -1.0] + [0.0] * 15  # one upside-down copy each
