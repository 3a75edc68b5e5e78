"""MADV-Net (paper 002): stream shapes, Eq. 1 projection, Eqs. 8/11/19-23 losses, inputs, fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch

from merkit.config import TrainConfig, load_config
from merkit.errors import ConfigError, ModelInputError, WeightsNotFoundError
from merkit.models import create
from merkit.models.blocks.conv_attention import ConvAttention, ConvProjection, ConvTransformerStage, VideoToTokens
from merkit.models.madv_net import AUEncoder, MADVNet, VideoEncoder
from merkit.models.pretrained import load_pretrained
from merkit.train.trainer import fit

T, SIZE, A, K, B = 4, 16, 6, 3, 4
TINY = dict(num_frames=T, image_size=SIZE, in_channels=3, num_aus=A, stage_dims=(8, 12, 16), stage_depths=(1, 1, 1),
            stage_heads=(1, 2, 2), embed_kernel=(3, 4), embed_stride=(1, 4), stage_pools=((1, 1), (2, 2), (1, 1)),
            au_widths=(8, 8), conv_dim=8, attention_dim=16, drop_path=0.0)


def tiny(variant: str = "full", num_classes: int = K, **options) -> MADVNet:
    return create("madv-net", num_classes=num_classes, **{**TINY, "variant": variant, **options})


def views(batch: int = B) -> dict[str, torch.Tensor]:
    return {"frames": torch.rand(batch, T, 3, SIZE, SIZE), "depth_seq": torch.rand(batch, T, 1, SIZE, SIZE),
            "au": torch.randn(batch, T, A)}


# ---------------------------------------------------------------- shapes


def test_video_to_tokens_grid_matches_hand_computation():
    # 8 x 32 x 32 video, 3x4x4 conv stride (1, 4) -> 8 x 8 x 8, max-pool (2, 2) -> 4 x 4 x 4 (Eq. 2)
    embed = VideoToTokens(2, 5, kernel=(3, 4), stride=(1, 4), pool=(2, 2))
    assert embed.output_grid((8, 32, 32)) == (4, 4, 4)
    assert embed(torch.rand(2, 2, 8, 32, 32)).shape == (2, 5, 4, 4, 4)
    # CvT-style 7x7 stride-2 stem on 112 x 112: 56, pooled to 28
    stem = VideoToTokens(3, 4, kernel=(3, 7), stride=(1, 2), pool=(2, 2))
    assert stem.output_grid((16, 112, 112)) == (8, 28, 28)
    assert stem(torch.rand(2, 3, 16, 112, 112)).shape == (2, 4, 8, 28, 28)


def test_each_stream_alone_has_the_documented_shapes():
    torch.manual_seed(0)
    model = tiny()
    texture, depth = model.encoders["texture"], model.encoders["depth"]
    assert isinstance(texture, VideoEncoder)
    for encoder, channels in ((texture, 6), (depth, 2)):  # onset difference doubles the channels
        levels, embedded = encoder(torch.rand(B, channels, T, SIZE, SIZE))
        assert [tuple(f.shape) for f in levels] == [(B, 8), (B, 12), (B, 16)]
        assert embedded.shape == (B, 8, 4, 4, 4)
    assert [stage.grid for stage in texture.stages] == [(4, 4, 4), (2, 2, 2), (2, 2, 2)]
    au = model.au_encoder(torch.randn(B, T, A))
    assert au["feature"].shape == (B, 16) and au["logits"].shape == (B, K)
    assert au["rate"].shape == (2,) and au["distortion"].shape == (2,)


@pytest.mark.parametrize("variant, names", [("full", ["frames", "depth_seq", "au"]), ("no_depth", ["frames", "au"]),
                                            ("no_au", ["frames", "depth_seq"])])
def test_variants_declare_their_views_and_output_shapes(variant, names):
    torch.manual_seed(0)
    model = tiny(variant)
    assert [spec.name for spec in model.input_spec] == names
    spec = {s.name: s for s in model.input_spec}
    assert spec["frames"].shape() == (T, 3, SIZE, SIZE)
    if "depth_seq" in spec:
        assert spec["depth_seq"].shape() == (T, 1, SIZE, SIZE)
    if "au" in spec:
        assert spec["au"].shape(A) == (T, A)
    given = {k: v for k, v in views().items() if k in names}
    output = model(given)
    for key in ("logits", "p_low", "p_mid", "p_high"):
        assert output[key].shape == (B, K)
    assert ("au_logits" in output) == (variant != "no_au")
    assert torch.isfinite(output["logits"]).all()


def test_early_fusion_uses_one_encoder_for_texture_and_depth():
    torch.manual_seed(0)
    early, level = tiny(video_fusion="early"), tiny()
    assert list(early.encoders) == ["texture_depth"] and list(level.encoders) == ["texture", "depth"]
    assert early.encoders["texture_depth"].stages[0].embed.in_channels == 8  # (3 RGB + 1 depth) x 2
    assert early(views())["logits"].shape == (B, K)


@pytest.mark.parametrize("video_input, channels", [("frames+difference", 6), ("difference", 3), ("frames", 3)])
def test_video_input_sets_the_encoder_channels(video_input, channels):
    torch.manual_seed(0)
    model = tiny(video_input=video_input, conv_pool=(1, 2))
    assert model.encoders["texture"].stages[0].embed.in_channels == channels
    assert model.classifier.in_features == 16 + 8 * 2 * 2  # f_Att + flattened 1 x 2 x 2 F_Conv map
    data = views()
    video = model._video(data, "frames", 3)  # (B, C', T, H, W)
    frames = data["frames"].transpose(1, 2)
    difference = frames - frames[:, :, :1]
    expected = {"frames+difference": torch.cat([frames, difference], 1), "difference": difference, "frames": frames}
    assert torch.equal(video, expected[video_input])
    assert model(data)["logits"].shape == (B, K)


def test_stage_prepends_class_token_and_adds_position_embedding():
    torch.manual_seed(0)
    stage = ConvTransformerStage(2, 8, (2, 4, 4), depth=0, num_heads=1).eval()
    video = torch.rand(1, 2, 2, 4, 4)
    cls, token_map, embedded = stage(video)
    # with no blocks, the class token out is LN(cls + pos[0]) and the map is embedded + pos[1:] (Eq. 13)
    expected_cls = stage.norm(stage.cls_token[:, 0] + stage.position.weight[:, 0])
    assert torch.allclose(cls, expected_cls, atol=1e-6)
    expected_map = embedded + stage.position.weight[0, 1:].T.reshape(1, 8, 2, 4, 4)
    assert torch.allclose(token_map, expected_map, atol=1e-6)


# ---------------------------------------------------------------- Eq. 1: depthwise-separable projection


@pytest.mark.parametrize("projection, spatial", [("2d", 2), ("3d", 3)])
def test_convolutional_projection_is_depthwise_separable(projection, spatial):
    dim, s = 8, 3
    proj = ConvProjection(dim, kernel=s, projection=projection)
    params = sum(p.numel() for p in proj.parameters())
    # depthwise s^k (no bias) + BN scale/shift + pointwise D x D + bias
    assert params == dim * s**spatial + 2 * dim + dim * dim + dim
    assert proj.depthwise.groups == dim and proj.depthwise.weight.shape == (dim, 1) + (s,) * spatial
    full_conv = dim * dim * s**spatial + dim
    assert params < full_conv / 3
    attention = ConvAttention(dim, num_heads=2, kernel=s, kv_stride=2, projection=projection)
    assert sum(p.numel() for p in attention.parameters()) == 3 * params + dim * dim + dim


def test_convolutional_projection_hand_computed():
    # depthwise 3x3 ones, BN identity (eval, fresh statistics), pointwise identity:
    # every token becomes the zero-padded 3x3 box sum of its channel (Eq. 1)
    proj = ConvProjection(2, kernel=3).eval()
    with torch.no_grad():
        proj.depthwise.weight.fill_(1.0)
        proj.norm.eps = 0.0
        proj.pointwise.weight.copy_(torch.eye(2))
        proj.pointwise.bias.zero_()
    token_map = torch.zeros(1, 2, 1, 3, 3)
    token_map[0, 0, 0] = torch.arange(9.0).reshape(3, 3)
    token_map[0, 1, 0, 1, 1] = 1.0  # a single one in the middle of channel 1
    cls = torch.tensor([[[5.0, -2.0]]])
    out = proj(token_map, cls)
    assert out.shape == (1, 10, 2)
    assert torch.equal(out[0, 0], torch.tensor([5.0, -2.0]))  # class token: pointwise only
    box = torch.tensor([[8.0, 15, 12], [21, 36, 27], [20, 33, 24]])  # 3x3 sums of 0..8 with zero padding
    assert torch.allclose(out[0, 1:, 0], box.flatten())
    assert torch.allclose(out[0, 1:, 1], torch.ones(9))  # channel 1 did not leak into channel 0 or back
    # the squeezed key/value projection halves the map: 3 x 3 -> 2 x 2 tokens
    assert ConvProjection(2, kernel=3, stride=2)(token_map, cls).shape == (1, 5, 2)


def test_even_projection_kernel_is_rejected():
    with pytest.raises(ConfigError, match="odd"):
        ConvProjection(4, kernel=2)


# ---------------------------------------------------------------- losses


def test_focal_term_is_eq19_by_hand():
    model = tiny("no_au", num_classes=2, focal_mu=0.25, focal_lambda=2.0, multi_frequency=False)
    output = {"logits": torch.zeros(1, 2)}
    terms = model.loss_terms(output, torch.tensor([0]))
    # p = 0.5: -0.25 * (1 - 0.5)^2 * log 0.5
    assert list(terms) == ["multi_class"]
    assert math.isclose(float(terms["multi_class"]), 0.25 * 0.25 * math.log(2), rel_tol=1e-6)


def test_multi_frequency_and_au_classifier_terms_by_hand():
    model = tiny(num_classes=4, frequency_weights=(0.2, 0.3, 0.5), au_loss_weight=2.0, focal_lambda=0.0)
    zeros = torch.zeros(2, 4)
    output = {"logits": zeros, "p_low": zeros, "p_mid": zeros, "p_high": zeros, "au_logits": zeros,
              "au_rate": torch.tensor([1.0, 3.0]), "au_distortion": torch.tensor([0.5, 0.25])}
    terms = model.loss_terms(output, torch.tensor([1, 3]))
    assert math.isclose(float(terms["multi_class"]), math.log(4), rel_tol=1e-6)  # lambda 0: cross-entropy
    for level, weight in (("low", 0.2), ("mid", 0.3), ("high", 0.5)):  # Eqs. 20-23
        assert math.isclose(float(terms[level]), weight * math.log(4), rel_tol=1e-6)
    # Eq. 11 (BCE over the one-hot label, summed over the 4 classes): 4 log 2 per sample, times the weight 2
    assert math.isclose(float(terms["au_classifier"]), 2 * 4 * math.log(2), rel_tol=1e-6)
    # Eq. 12: sum over layers of beta * rate + distortion, times the weight 2
    assert math.isclose(float(terms["au_bottleneck"]), 2 * (0.01 * 4.0 + 0.75), rel_tol=1e-6)
    assert math.isclose(float(model.loss(output, torch.tensor([1, 3]))), sum(float(v) for v in terms.values()), rel_tol=1e-6)
    ce = tiny(num_classes=4, au_classifier_loss="ce").loss_terms(output, torch.tensor([1, 3]))
    assert math.isclose(float(ce["au_classifier"]), math.log(4), rel_tol=1e-6)


def test_eq8_rate_and_distortion_by_hand():
    torch.manual_seed(0)
    encoder = AUEncoder(num_aus=3, widths=(5,), num_classes=2)
    with torch.no_grad():
        encoder.gates[0].zero_()  # mu = sigmoid(0) = 0.5
        encoder.decoders[0].weight.copy_(torch.eye(5))  # r = code = mu * v
        encoder.decoders[0].bias.zero_()
    au = torch.randn(4, 6, 3)
    with torch.no_grad():
        out = encoder(au)
        v = encoder.layers[0](au.transpose(1, 2))
    mean_square = float(v.pow(2).mean())
    # rate (mu v)^2 = 0.25 v^2; distortion (v - mu * mu v)^2 = (0.75)^2 v^2
    assert math.isclose(float(out["rate"][0]), 0.25 * mean_square, rel_tol=1e-5)
    assert math.isclose(float(out["distortion"][0]), 0.5625 * mean_square, rel_tol=1e-5)
    code = 0.5 * v
    assert torch.allclose(out["feature"], torch.cat([code.mean(2), code.amax(2)], dim=1), atol=1e-6)


def _grad_norms(model: MADVNet, term: torch.Tensor) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    term.backward(retain_graph=True)
    return {name: (0.0 if p.grad is None else float(p.grad.abs().sum())) for name, p in model.named_parameters()}


def _reached(norms: dict[str, float], prefix: str) -> bool:
    return any(v > 0 for k, v in norms.items() if k.startswith(prefix))


def test_every_loss_term_is_finite_and_reaches_its_parameters():
    torch.manual_seed(0)
    model = tiny()
    output = model(views())
    terms = model.loss_terms(output, torch.tensor([0, 1, 2, 0]))
    assert set(terms) == {"multi_class", "low", "mid", "high", "au_bottleneck", "au_classifier"}
    for name, term in terms.items():
        assert torch.isfinite(term) and term.dtype == torch.float32, name
    expectations = {
        # term: (prefixes that must receive gradient, prefixes that must not)
        "multi_class": (["classifier.", "attention_mlp.", "conv_path.", "encoders.texture.stages.2.",
                         "encoders.depth.stages.2.", "encoders.texture.stages.0.embed.", "au_encoder.layers.0."],
                        ["level_heads.", "au_encoder.classifier.", "au_encoder.decoders."]),
        "low": (["level_heads.low.", "encoders.texture.stages.0.", "encoders.depth.stages.0."],
                ["level_heads.mid.", "encoders.texture.stages.1.", "encoders.texture.stages.2.", "classifier.",
                 "au_encoder."]),
        "mid": (["level_heads.mid.", "encoders.texture.stages.1.", "encoders.depth.stages.0."],
                ["encoders.texture.stages.2.", "level_heads.high.", "au_encoder."]),
        "high": (["level_heads.high.", "encoders.texture.stages.2.", "encoders.depth.stages.2."],
                 ["level_heads.low.", "classifier.", "au_encoder."]),
        "au_bottleneck": (["au_encoder.layers.0.", "au_encoder.layers.1.", "au_encoder.gates.", "au_encoder.decoders."],
                          ["encoders.", "au_encoder.classifier.", "classifier."]),
        "au_classifier": (["au_encoder.classifier.", "au_encoder.layers.0.", "au_encoder.gates."],
                          ["encoders.", "au_encoder.decoders.", "level_heads."]),
    }
    for name, (reached, untouched) in expectations.items():
        norms = _grad_norms(model, terms[name])
        for prefix in reached:
            assert _reached(norms, prefix), f"{name} does not reach {prefix}"
        for prefix in untouched:
            assert not _reached(norms, prefix), f"{name} reaches {prefix}"


def test_ablations_drop_their_loss_terms():
    torch.manual_seed(0)
    target = torch.tensor([0, 1, 2, 0])
    plain = tiny("no_au", multi_frequency=False)
    assert list(plain.loss_terms(plain({k: v for k, v in views().items() if k != "au"}), target)) == ["multi_class"]
    model = tiny("no_depth")
    assert "au_classifier" in model.loss_terms(model({k: v for k, v in views().items() if k != "depth_seq"}), target)


# ---------------------------------------------------------------- inputs


def test_missing_depth_is_a_clear_error_unless_no_depth():
    torch.manual_seed(0)
    given = {k: v for k, v in views().items() if k != "depth_seq"}
    for variant in ("full", "no_au"):
        with pytest.raises(ModelInputError, match="depth_seq.*no_depth"):
            tiny(variant)({k: v for k, v in given.items() if variant == "full" or k != "au"})
    assert tiny("no_depth")(given)["logits"].shape == (B, K)


def test_missing_or_malformed_au_is_an_error():
    torch.manual_seed(0)
    model = tiny()
    with pytest.raises(ModelInputError, match="'au'"):
        model({k: v for k, v in views().items() if k != "au"})
    bad = views()
    bad["au"] = torch.randn(B, T, A + 1)
    with pytest.raises(ModelInputError, match="num_aus"):
        model(bad)
    bad = views()
    bad["frames"] = torch.rand(B, T, 1, SIZE, SIZE)
    with pytest.raises(ModelInputError, match="frames"):
        model(bad)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="variant"):
        tiny("texture_only")
    with pytest.raises(ConfigError, match="three stages"):
        tiny(stage_dims=(8, 8))
    with pytest.raises(ConfigError, match="empty token map"):
        tiny(stage_pools=((1, 1), (8, 8), (1, 1)))


# ---------------------------------------------------------------- pre-train -> fine-tune


def _train_steps(model: MADVNet, steps: int = 2) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data, target = views(), torch.arange(B) % model.num_classes
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(model(data), target).backward()
        optimizer.step()


HEADS = ("level_heads.", "classifier.", "au_encoder.classifier.")


def test_fine_tune_loads_the_first_stage_weights(tmp_path):
    torch.manual_seed(0)
    first = tiny(num_classes=3)
    _train_steps(first)
    path = tmp_path / "model.pt"  # the LOSO runner's folds/<fold>/model.pt format
    torch.save({"state_dict": first.state_dict(), "model": {"name": "madv-net", **TINY}, "classes": ["a", "b", "c"]}, path)

    second = tiny(num_classes=5)
    fresh = {k: v.clone() for k, v in second.state_dict().items()}
    loaded = load_pretrained(second, path)
    state, source = second.state_dict(), first.state_dict()
    heads = [k for k in state if k.startswith(HEADS)]
    assert heads and set(loaded) == set(state) - set(heads)
    for key in loaded:
        assert torch.equal(state[key], source[key]), key
    for key in heads:  # resized heads keep their fresh initialisation
        assert torch.equal(state[key], fresh[key]), key
    assert second(views())["logits"].shape == (B, 5)

    with pytest.raises(ConfigError, match="skip_head"):
        load_pretrained(tiny(num_classes=5), path, skip_head=False)


def test_fine_tune_with_the_same_classes_loads_everything_from_a_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    first = tiny()
    _train_steps(first)
    path = tmp_path / "weights.pt"
    torch.save(first.state_dict(), path)
    second = tiny()
    assert load_pretrained(second, path, skip_head=False) == list(second.state_dict())
    first.eval(), second.eval()
    data = views()
    assert torch.allclose(first(data)["logits"], second(data)["logits"])


def test_classifier_keys_are_the_heads_output_layers():
    keys = tiny().classifier_keys()
    state = tiny().state_dict()
    assert keys and all(k.startswith(HEADS) and state[k].shape[0] == K for k in keys)
    assert {k.rsplit(".", 1)[0] for k in keys} == {"level_heads.low", "level_heads.mid", "level_heads.high",
                                                   "au_encoder.classifier", "classifier"}


def test_fine_tune_matches_heads_of_the_same_size_by_class_name(tmp_path):
    torch.manual_seed(0)
    first = tiny(num_classes=3)
    _train_steps(first)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": first.state_dict(), "classes": ["neg", "pos", "sur"]}, path)
    heads = tiny(num_classes=3).classifier_keys()
    first.eval()
    data = views()

    # the same classes in another order: the rows follow their class
    reordered = tiny(num_classes=3)
    loaded = load_pretrained(reordered, path, classes=["sur", "neg", "pos"])
    assert loaded == list(reordered.state_dict())
    reordered.eval()
    logits = reordered(data)["logits"]
    assert torch.allclose(logits, first(data)["logits"][:, [2, 0, 1]], atol=1e-5)

    # other names, same count: the heads keep their fresh initialisation, the rest loads
    other = tiny(num_classes=3)
    fresh = {k: v.clone() for k, v in other.state_dict().items()}
    loaded = load_pretrained(other, path, classes=["anger", "joy", "fear"])
    assert set(loaded) == set(fresh) - set(heads)
    assert all(torch.equal(other.state_dict()[k], fresh[k]) for k in heads)
    with pytest.raises(ConfigError, match="skip_head"):
        load_pretrained(tiny(num_classes=3), path, classes=["anger", "joy", "fear"], skip_head=False)
    # the same classes: everything loads
    assert load_pretrained(tiny(num_classes=3), path, classes=["neg", "pos", "sur"]) == list(first.state_dict())


def test_pretrained_rejects_other_architectures_and_missing_files(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": tiny(stage_dims=(8, 12, 24)).state_dict()}, path)
    with pytest.raises(ConfigError, match="other sizes"):  # widths differ beyond the heads
        load_pretrained(tiny(), path)
    torch.save({"state_dict": tiny("no_au").state_dict()}, path)
    with pytest.raises(ConfigError, match="missing au_encoder"):
        load_pretrained(tiny(), path)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_pretrained(tiny(), tmp_path / "absent.pt")


# ---------------------------------------------------------------- training


def test_training_steps_decrease_the_loss_on_a_toy_batch():
    torch.manual_seed(0)
    n = 12
    labels = torch.arange(n) % K
    data = views(n)
    # class k: a bright square appears at position k over time, in texture and depth; AU k rises
    for i, k in enumerate(labels.tolist()):
        data["frames"][i, 1:, :, 4 * k:4 * k + 4, 4:8] += 1.0
        data["depth_seq"][i, 1:, :, 4 * k:4 * k + 4, 4:8] += 1.0
        data["au"][i, :, k] += torch.linspace(0, 3, T)
    model = tiny()
    config = TrainConfig(epochs=10, batch_size=6, lr=3e-3, weight_decay=0.05, optimizer="adamw",
                         schedule={"type": "cosine"})
    history = fit(model, data, labels, config, seed=0)
    assert all(math.isfinite(x) for x in history.train_loss)
    assert history.train_loss[-1] < 0.75 * history.train_loss[0]
    model.train()
    with torch.no_grad():
        terms = model.loss_terms(model(data), labels)
    assert float(terms["multi_class"]) < 0.1  # the final classifier fits the toy batch


def test_bf16_autocast_step_is_finite():
    torch.manual_seed(0)
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(views())
        loss = model.loss(output, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---------------------------------------------------------------- configs


def test_configs_build_the_documented_models():
    cpu = load_config("madv-net-cpu")
    model = create(cpu.model_name, num_classes=5, **cpu.model_kwargs)
    assert {s.name: s.length for s in model.input_spec} == {"frames": 8, "depth_seq": 8, "au": 8}
    paper = load_config("madv-net-paper")
    assert (paper.train.lr, paper.train.weight_decay, paper.train.epochs, paper.train.batch_size) == (5e-5, 0.05, 300, 64)
    assert paper.train.schedule.type == "cosine" and paper.train.amp == "fp16" and paper.train.optimizer == "adamw"
    big = create(paper.model_name, num_classes=5, **paper.model_kwargs)
    assert [stage.grid for stage in big.encoders["texture"].stages] == [(8, 28, 28), (4, 14, 14), (4, 7, 7)]


def test_cpu_config_runs_loso_on_synthme_views(synth_samples, tmp_path):
    """The pipeline builds MADV-Net's three views (SynthME depth and AU) and the runner trains it."""
    from merkit.data.protocols import get_protocol
    from merkit.train.loso import run_loso

    config = load_config("madv-net-synthme", {"train": {"epochs": 1}})
    metrics = run_loso(synth_samples, get_protocol("casme2-5"), config, tmp_path / "run")
    assert metrics["n_samples"] == len(synth_samples) and metrics["n_folds"] == 4
    checkpoint = torch.load(tmp_path / "run" / "folds" / "sub01" / "model.pt", weights_only=True)
    fine_tuned = create("madv-net", num_classes=3, **config.model_kwargs)  # e.g. a 3-class target
    assert set(load_pretrained(fine_tuned, tmp_path / "run" / "folds" / "sub01" / "model.pt")) < set(checkpoint["state_dict"])
