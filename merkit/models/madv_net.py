"""MADV-Net: multi-level adaptive dynamic visual attention network (paper 002).

Kong, You, Lv, "3D Micro-Expression Recognition Based on Adaptive Dynamic Vision", Sensors 25
(2025) 3175. Three input streams, all views of :mod:`merkit.views`:

* texture video ``frames`` ``(B, T, C, H, W)``;
* depth video ``depth_seq`` ``(B, T, 1, H, W)`` (dataset depth, SynthME depth, or Depth Anything
  estimates, built by the preprocess pipeline);
* AU stream ``au`` ``(B, T, A)``: per-frame AU intensities minus the onset frame's
  (``V = V_x - V_t``, Sec. 3.2.2).

Architecture (``L`` = low, mid, high):

1. **Video paths.** Each video, with its onset difference ``x_t - x_0`` (the paper's
   "inter-frame difference signals of texture and depth"; see ``video_input``), passes a
   three-stage pyramid of :class:`~merkit.models.blocks.conv_attention.ConvTransformerStage`.
   Every stage starts with a 3D-video-to-tokens module (Eq. 2: Conv3d -> BN -> MaxPool3d; stage 1
   on the video, stages 2 and 3 on the previous stage's token map, which shrinks the map: the
   "cascaded pyramid"), adds a class token and a learnable position embedding (Eq. 13) and runs
   blocks whose Q/K/V projections are depthwise-separable convolutions (Eq. 1, Eq. 16).
   The class tokens of stages 1, 2, 3 are the low-, mid- and high-level features.
2. **AU encoder** (Eqs. 3-12, :class:`AUEncoder`): layers ``v_i = F_i(v~_{i-1})`` over time, each
   with a sigmoid compression gate, an information-bottleneck term (Eq. 8) and a classifier
   ``y^ = F_n(v~_{n-1})`` trained with Eq. 11.
3. **Multi-level heads** (Eqs. 20-23): ``p_low``, ``p_mid``, ``p_high`` = linear heads on the
   level features.
4. **Final prediction** (Eqs. 14-17): ``y' = softmax(FC[f_Att || f_Conv])`` with
   ``f_Att = MLP(high-level class tokens || AU feature)`` and ``f_Conv`` = a 3D convolution
   (stride 2) -> BN -> ReLU -> average pool to ``conv_pool`` (default global) -> flatten, over the
   stage-1 token embedding ``f_{p x q}``.

Where the streams are fused (the paper's Figure 1 is not available; its text says the texture,
depth and AU paths are "integrated", AU features "with the local features of dynamic visual
attention"):

* ``video_fusion="level"`` (default): texture and depth have separate encoders (same shape,
  separate weights); at every level their class tokens are concatenated before the level head,
  the high-level ones before ``F_MLP``; ``F_Conv`` sees both stage-1 embeddings stacked along
  channels. ``video_fusion="early"``: depth is stacked onto the texture channels at the input and
  one encoder serves both (half the cost).
* The AU feature joins at ``F_MLP`` only (the attention feature ``f_Att``); the level heads see
  video features only.

Losses (Eq. 18): ``L = L_multi-class + L_freq + L_AU`` with

* Eq. 19 focal loss ``-mu_y (1 - p_y)^lambda log p_y`` on the final logits
  (:class:`~merkit.models.blocks.losses.FocalLoss` with ``alpha = focal_mu`` (a float or one value per
  class) and ``gamma = focal_lambda``);
* Eqs. 20-23 ``alpha L_low + beta L_mid + gamma L_high``, cross-entropy of each level head
  (``frequency_weights = (alpha, beta, gamma)``, off with ``multi_frequency=False``);
* Eq. 12 ``L_AU = sum_i eta_i + eta_n``: per-layer Eq. 8 terms plus the Eq. 11 classifier term,
  scaled by ``au_loss_weight``.

Choices where the paper is silent or garbled (all exposed as options):

* No widths, depths or heads are given. The defaults follow CvT-13, whose convolutional
  projection Eq. 1 restates: widths (64, 192, 384), depths (1, 2, 10), heads (1, 3, 6), MLP
  ratio 4, projection kernel 3, K/V stride 2 ("considering cost savings"); 16 frames of 112 x 112.
* Eq. 8 ``v~_i = beta (v_i . mu_i)^2 + ||v_i - mu_i . r_i||^2`` is read as a variational
  information bottleneck whose variance is not learnt ("only the mean value is optimized"):
  ``mu_i = sigmoid(theta_i)`` is a per-channel compression gate (the conclusion's "Sigmoid is
  used to regularize the compression parameters"), the compressed code ``mu_i * v_i`` goes on
  to the next layer, the rate ``beta ||mu_i * v_i||^2`` is the KL to a unit Gaussian prior, and
  the distortion ``||v_i - mu_i * r_i||^2`` uses ``r_i = R_i(mu_i * v_i)`` from a linear decoder
  ``R_i`` (the mean of the variational ``Q``). Squared norms are means over channels, frames and
  the batch so that the term's scale does not grow with the width. ``beta = au_ib_beta``.
* Eq. 11 is written as a binary cross-entropy over one-hot labels although the text says
  "multinomial": ``au_classifier_loss="bce"`` (default, as written; summed over classes) or
  ``"ce"`` (softmax cross-entropy).
* The AU encoder's layers are temporal convolutions (kernel 3) -> BatchNorm (no affine, so the
  features cannot shrink to zero under the rate term) -> GELU; the clip feature is the mean and
  the max over time of the last code.
* The paper gives no values for mu, lambda, alpha, beta, gamma: defaults mu = 1, lambda = 2 (the
  usual focal setting), alpha = beta = gamma = 1/3.
* The difference signals are "auxiliary learning features": ``video_input="frames+difference"``
  (default) stacks ``x_t - x_0`` onto the frames' channels; ``"difference"`` feeds the difference
  only (what the reduced CPU config uses: on SynthME at 32 x 32 it lifts the video paths alone
  from UF1 0.35 to 0.60, the static face texture otherwise swamps the tiny motion signal);
  ``"frames"`` feeds the frames only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.blocks.conv_attention import PROJECTIONS, ConvTransformerStage
from merkit.models.registry import register
from merkit.models.blocks.losses import FocalLoss
from merkit.views import ViewSpec

VARIANTS = ("full", "no_depth", "no_au")
VIDEO_FUSIONS = ("level", "early")
VIDEO_INPUTS = ("frames+difference", "difference", "frames")
AU_CLASSIFIER_LOSSES = ("bce", "ce")
LEVELS = ("low", "mid", "high")


class VideoEncoder(nn.Module):
    """The three-stage convolutional-transformer pyramid of one video path.

    Args:
        in_channels: channels of the video ``C``.
        input_grid: ``(T, H, W)`` of the video.
        dims, depths, heads: width, number of blocks and heads of each of the three stages.
        embed_kernel, embed_stride: ``(temporal, spatial)`` kernel and stride of the first stage's
            3D convolution (later stages use kernel 3, stride 1).
        pools: ``(temporal, spatial)`` max-pooling factor of each stage's embedding.
        drop_path: stochastic depth, rising linearly from 0 to this over all blocks.
        **block_options: ``mlp_ratio``, ``kernel``, ``kv_stride``, ``projection``, ``dropout``.

    Shapes: ``forward(video (B, C, T, H, W))`` returns ``(levels, embedded)``: three class-token
    features ``(B, dims[l])`` (low, mid, high) and the first stage's Eq. 2 embedding
    ``(B, dims[0], T_1, H_1, W_1)``.
    """

    def __init__(self, in_channels: int, input_grid: tuple[int, int, int], dims: Sequence[int],
                 depths: Sequence[int], heads: Sequence[int], embed_kernel: tuple[int, int],
                 embed_stride: tuple[int, int], pools: Sequence[tuple[int, int]], drop_path: float = 0.0,
                 **block_options: Any):
        super().__init__()
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        stages, grid, channels, first = [], tuple(input_grid), in_channels, 0
        for level, (dim, depth, num_heads, pool) in enumerate(zip(dims, depths, heads, pools)):
            stage = ConvTransformerStage(
                channels, dim, grid, depth, num_heads,
                embed_kernel=tuple(embed_kernel) if level == 0 else (3, 3),
                embed_stride=tuple(embed_stride) if level == 0 else (1, 1),
                embed_pool=tuple(pool), drop_path=rates[first:first + depth], **block_options)
            stages.append(stage)
            grid, channels, first = stage.grid, dim, first + depth
        self.stages = nn.ModuleList(stages)

    def forward(self, video: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        levels, x = [], video
        for stage in self.stages:
            cls, x, stage_embedding = stage(x)
            if not levels:
                first_embedding = stage_embedding
            levels.append(cls)
        return levels, first_embedding


class AUEncoder(nn.Module):
    """AU feature encoder with per-layer information-bottleneck supervision (Eqs. 3-12).

    Layer ``i``: ``v_i = GELU(BN(Conv1d_k(v~_{i-1})))`` over time (``v~_{-1}`` = the AU stream),
    compression gate ``mu_i = sigmoid(theta_i)`` per channel, code ``v~_i = mu_i * v_i``,
    decoder output ``r_i = R_i(v~_i)`` (linear). Eq. 8 parts per layer (means over batch, frames
    and channels): rate ``mean((mu_i v_i)^2)`` and distortion ``mean((v_i - mu_i r_i)^2)``.
    Classifier (Eq. 3's ``y^ = F_n(v_{n-1})``): linear on ``[mean_t v~_{n-1}, max_t v~_{n-1}]``.

    Args:
        num_aus: ``A``.
        widths: channels of each layer (``n`` layers).
        num_classes: ``K`` of the classifier.
        kernel: temporal kernel of the layers.
        gate_init: initial ``theta`` (``sigmoid(2) = 0.88``: gates start nearly open).

    Shapes: ``forward(au (B, T, A))`` returns a dict with ``feature (B, 2 * widths[-1])``,
    ``logits (B, K)``, ``rate (n,)`` and ``distortion (n,)``.
    """

    def __init__(self, num_aus: int, widths: Sequence[int], num_classes: int, kernel: int = 3, gate_init: float = 2.0):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ConfigError(f"AU encoder needs at least one layer of positive width, got {list(widths)}")
        self.layers = nn.ModuleList()
        self.gates = nn.ParameterList()
        self.decoders = nn.ModuleList()
        channels = num_aus
        for width in widths:
            self.layers.append(nn.Sequential(nn.Conv1d(channels, width, kernel, padding=kernel // 2),
                                             nn.BatchNorm1d(width, affine=False), nn.GELU()))
            self.gates.append(nn.Parameter(torch.full((width,), float(gate_init))))
            self.decoders.append(nn.Linear(width, width))
            channels = width
        self.feature_dim = 2 * channels
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, au: torch.Tensor) -> dict[str, torch.Tensor]:
        code = au.transpose(1, 2)  # (B, A, T)
        rates, distortions = [], []
        for layer, gate_logits, decoder in zip(self.layers, self.gates, self.decoders):
            features = layer(code)  # v_i (B, d, T)
            gate = torch.sigmoid(gate_logits)[None, :, None]  # mu_i
            code = gate * features  # v~_i
            reconstruction = decoder(code.transpose(1, 2)).transpose(1, 2)  # r_i
            rates.append(code.float().pow(2).mean())
            distortions.append((features - gate * reconstruction).float().pow(2).mean())
        feature = torch.cat([code.mean(dim=2), code.amax(dim=2)], dim=1)
        return {"feature": feature, "logits": self.classifier(feature),
                "rate": torch.stack(rates), "distortion": torch.stack(distortions)}


@register("madv-net", "MADV-Net: texture + depth + AU streams, convolutional-projection attention (Kong et al. 2025)")
class MADVNet(MERModel):
    """MADV-Net (see the module docstring for the architecture, the losses and every choice).

    Args:
        num_classes: ``K``.
        variant: ``"full"`` (texture + depth + AU), ``"no_depth"`` or ``"no_au"`` (ablations).
        num_frames: ``T`` of every stream.
        image_size: ``H = W`` of the videos.
        in_channels: ``C`` of the texture video (1 grey, 3 RGB).
        num_aus: ``A``, AU channels of the ``au`` view.
        stage_dims, stage_depths, stage_heads: per-stage width, blocks, heads (three stages).
        embed_kernel, embed_stride: ``(temporal, spatial)`` first-stage 3D convolution.
        stage_pools: per-stage ``(temporal, spatial)`` max-pooling factors of Eq. 2.
        mlp_ratio: MLP width / token width in the blocks.
        projection_kernel: ``s`` of Eq. 1.
        kv_stride: spatial stride of the key/value projections (1 = no squeezing).
        projection: ``"2d"`` (per time slice, Eq. 1 as written) or ``"3d"``.
        video_fusion: ``"level"`` (separate texture/depth encoders, fused per level) or ``"early"``.
        video_input: what each video path sees: ``"frames+difference"`` (the frames with their
            onset difference ``x_t - x_0`` stacked as extra channels), ``"difference"`` (only
            ``x_t - x_0``) or ``"frames"``.
        au_widths: AU encoder layer widths (``n`` layers).
        conv_dim: channels of the ``F_Conv`` path.
        conv_pool: ``(temporal, spatial)`` size the ``F_Conv`` map is average-pooled to before
            flattening (``(1, 1)``: global pooling; larger keeps where the motion is).
        attention_dim: width of ``f_Att``.
        dropout: dropout in the blocks' MLPs and before the final FC.
        drop_path: stochastic-depth rate of the last block.
        focal_mu, focal_lambda: Eq. 19's balance factor (float or K values) and focusing rate.
        multi_frequency: add ``L_freq`` (Eqs. 20-23).
        frequency_weights: ``(alpha, beta, gamma)`` of Eq. 20.
        au_ib_beta: ``beta`` of Eq. 8.
        au_loss_weight: weight of ``L_AU`` in Eq. 18.
        au_classifier_loss: ``"bce"`` (Eq. 11 as written) or ``"ce"``.

    Input: ``views`` with the names of :attr:`input_spec`. Output of ``forward``: a dict with
    ``logits (B, K)`` (pre-softmax of Eq. 14), ``p_low``, ``p_mid``, ``p_high`` ``(B, K)`` logits
    of the level heads and, unless ``no_au``, ``au_logits (B, K)``, ``au_rate (n,)``,
    ``au_distortion (n,)``.

    Raises:
        ConfigError: an unknown variant/fusion/projection/loss, or sizes that leave no tokens.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "full",
        num_frames: int = 16,
        image_size: int = 112,
        in_channels: int = 3,
        num_aus: int = 12,
        stage_dims: Sequence[int] = (64, 192, 384),
        stage_depths: Sequence[int] = (1, 2, 10),
        stage_heads: Sequence[int] = (1, 3, 6),
        embed_kernel: Sequence[int] = (3, 7),
        embed_stride: Sequence[int] = (1, 2),
        stage_pools: Sequence[Sequence[int]] = ((2, 2), (2, 2), (1, 2)),
        mlp_ratio: float = 4.0,
        projection_kernel: int = 3,
        kv_stride: int = 2,
        projection: str = "2d",
        video_fusion: str = "level",
        video_input: str = "frames+difference",
        au_widths: Sequence[int] = (64, 64),
        conv_dim: int = 128,
        conv_pool: Sequence[int] = (1, 1),
        attention_dim: int = 384,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        focal_mu: float | Sequence[float] = 1.0,
        focal_lambda: float = 2.0,
        multi_frequency: bool = True,
        frequency_weights: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
        au_ib_beta: float = 0.01,
        au_loss_weight: float = 1.0,
        au_classifier_loss: str = "bce",
    ):
        super().__init__()
        for value, allowed, what in ((video_fusion, VIDEO_FUSIONS, "video_fusion"),
                                     (video_input, VIDEO_INPUTS, "video_input"),
                                     (projection, PROJECTIONS, "projection"),
                                     (au_classifier_loss, AU_CLASSIFIER_LOSSES, "au_classifier_loss")):
            check_choice(f"madv-net: {what}", value, allowed)
        self.input_spec: tuple[ViewSpec, ...] = self.input_spec_from(
            {"variant": variant, "num_frames": num_frames, "image_size": image_size, "in_channels": in_channels})
        stage_pools = [tuple(p) for p in stage_pools]
        if not len(stage_dims) == len(stage_depths) == len(stage_heads) == len(stage_pools) == len(LEVELS):
            raise ConfigError(f"madv-net has three stages (low, mid, high): stage_dims {list(stage_dims)}, stage_depths "
                              f"{list(stage_depths)}, stage_heads {list(stage_heads)}, stage_pools {stage_pools} must each have 3 entries")
        if len(frequency_weights) != 3 or min(frequency_weights) < 0:
            raise ConfigError(f"madv-net: frequency_weights must be three non-negative numbers, got {list(frequency_weights)}")
        if len(conv_pool) != 2 or min(conv_pool) < 1:
            raise ConfigError(f"madv-net: conv_pool must be two sizes >= 1 (temporal, spatial), got {list(conv_pool)}")
        if au_ib_beta < 0 or au_loss_weight < 0:
            raise ConfigError(f"madv-net: au_ib_beta ({au_ib_beta}) and au_loss_weight ({au_loss_weight}) must be >= 0")
        self.variant = variant
        self.num_classes = num_classes
        self.num_frames, self.image_size, self.in_channels, self.num_aus = num_frames, image_size, in_channels, num_aus
        self.video_fusion = video_fusion
        self.video_input = video_input
        self.use_depth = variant != "no_depth"
        self.use_au = variant != "no_au"
        self.multi_frequency = multi_frequency
        self.frequency_weights = tuple(float(w) for w in frequency_weights)
        self.au_ib_beta, self.au_loss_weight = float(au_ib_beta), float(au_loss_weight)
        self.au_classifier_loss = au_classifier_loss
        self.focal = FocalLoss(alpha=focal_mu, gamma=focal_lambda)


        factor = 2 if video_input == "frames+difference" else 1
        encoder_options = dict(
            input_grid=(num_frames, image_size, image_size), dims=stage_dims, depths=stage_depths, heads=stage_heads,
            embed_kernel=tuple(embed_kernel), embed_stride=tuple(embed_stride), pools=stage_pools, drop_path=drop_path,
            mlp_ratio=mlp_ratio, kernel=projection_kernel, kv_stride=kv_stride, projection=projection, dropout=dropout)
        self.encoders = nn.ModuleDict()
        if self.use_depth and video_fusion == "early":
            self.encoders["texture_depth"] = VideoEncoder(factor * (in_channels + 1), **encoder_options)
        else:
            self.encoders["texture"] = VideoEncoder(factor * in_channels, **encoder_options)
            if self.use_depth:
                self.encoders["depth"] = VideoEncoder(factor, **encoder_options)
        paths = len(self.encoders)
        self.level_heads = nn.ModuleDict({level: nn.Linear(paths * dim, num_classes)
                                          for level, dim in zip(LEVELS, stage_dims)})
        self.au_encoder = AUEncoder(num_aus, au_widths, num_classes) if self.use_au else None
        au_dim = self.au_encoder.feature_dim if self.au_encoder is not None else 0
        self.attention_mlp = nn.Sequential(nn.Linear(paths * stage_dims[-1] + au_dim, attention_dim), nn.GELU())
        pool_t, pool_s = conv_pool
        self.conv_path = nn.Sequential(
            nn.Conv3d(paths * stage_dims[0], conv_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(conv_dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d((pool_t, pool_s, pool_s)), nn.Flatten(1))
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(attention_dim + conv_dim * pool_t * pool_s**2, num_classes)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """``frames``, plus ``depth_seq`` unless ``no_depth`` and ``au`` unless ``no_au``, all of
        ``num_frames``."""
        check_choice("madv-net: variant", options["variant"], VARIANTS)
        size, length = (options["image_size"], options["image_size"]), options["num_frames"]
        specs = [ViewSpec("frames", size=size, channels=options["in_channels"], length=length)]
        if options["variant"] != "no_depth":
            specs.append(ViewSpec("depth_seq", size=size, channels=1, length=length))
        if options["variant"] != "no_au":
            specs.append(ViewSpec("au", length=length))
        return tuple(specs)

    def classifier_keys(self) -> list[str]:
        """The classifier, the three level heads and the AU stream's classifier."""
        heads = [f"level_heads.{level}" for level in LEVELS] + ["classifier"]
        if self.au_encoder is not None:
            heads.append("au_encoder.classifier")
        return [f"{head}.{p}" for head in heads for p in ("weight", "bias")]

    # ------------------------------------------------------------------ inputs

    def _video(self, views: dict[str, torch.Tensor], name: str, channels: int) -> torch.Tensor:
        """``views[name]`` ``(B, T, C, H, W)`` -> ``(B, C[*2], T, H, W)`` with the onset difference."""
        video = views[name]
        expected = (self.num_frames, channels, self.image_size, self.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ModelInputError(f"madv-net: view {name!r} must be (B, {', '.join(map(str, expected))}), "
                                  f"got {tuple(video.shape)}")
        video = video.transpose(1, 2)
        if self.video_input == "difference":
            return video - video[:, :, :1]
        if self.video_input == "frames+difference":
            video = torch.cat([video, video - video[:, :, :1]], dim=1)
        return video

    def _check_views(self, views: dict[str, torch.Tensor]) -> None:
        for spec in self.input_spec:
            if spec.name in views:
                continue
            if spec.name == "depth_seq":
                raise ModelInputError(
                    f"madv-net (variant {self.variant!r}) needs the depth video 'depth_seq' but the views hold only "
                    f"{sorted(views)}; give a depth source (views.depth: dataset, synthme, or Depth Anything weights) "
                    "or use variant 'no_depth'")
            raise ModelInputError(f"madv-net (variant {self.variant!r}) needs view {spec.name!r}, got {sorted(views)}")
        if self.use_au:
            au = views["au"]
            if au.dim() != 3 or tuple(au.shape[1:]) != (self.num_frames, self.num_aus):
                raise ModelInputError(f"madv-net: view 'au' must be (B, {self.num_frames}, {self.num_aus}) (num_aus = "
                                      f"{self.num_aus}), got {tuple(au.shape)}")

    # ------------------------------------------------------------------ forward

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """See the class docstring for the inputs and outputs.

        Raises:
            ModelInputError: a view of the input spec is missing (depth without ``no_depth``
                included) or has the wrong shape.
        """
        self._check_views(views)
        texture = self._video(views, "frames", self.in_channels)
        if "texture_depth" in self.encoders:
            videos = {"texture_depth": torch.cat([texture, self._video(views, "depth_seq", 1)], dim=1)}
        else:
            videos = {"texture": texture}
            if self.use_depth:
                videos["depth"] = self._video(views, "depth_seq", 1)
        path_levels, embeddings = [], []
        for name, encoder in self.encoders.items():
            levels, embedded = encoder(videos[name])
            path_levels.append(levels)
            embeddings.append(embedded)
        level_features = [torch.cat([levels[k] for levels in path_levels], dim=1) for k in range(len(LEVELS))]
        output = {f"p_{level}": self.level_heads[level](feature) for level, feature in zip(LEVELS, level_features)}

        attention_input = [level_features[-1]]
        if self.au_encoder is not None:
            au = self.au_encoder(views["au"].to(texture.dtype))
            attention_input.append(au["feature"])
            output.update(au_logits=au["logits"], au_rate=au["rate"], au_distortion=au["distortion"])
        f_att = self.attention_mlp(torch.cat(attention_input, dim=1))
        f_conv = self.conv_path(torch.cat(embeddings, dim=1))
        output["logits"] = self.classifier(self.head_dropout(torch.cat([f_att, f_conv], dim=1)))
        return output

    # ------------------------------------------------------------------ losses

    def loss_terms(self, output: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms of Eq. 18 (their sum is :meth:`loss`), float32 scalars.

        Keys: ``multi_class`` (Eq. 19); with ``multi_frequency`` ``low``, ``mid``, ``high``
        (``alpha L_low`` ... of Eq. 20); unless ``no_au`` ``au_bottleneck`` (the per-layer Eq. 8
        terms, summed) and ``au_classifier`` (Eq. 11), both times ``au_loss_weight``.
        """
        target = target.long()
        terms = {"multi_class": self.focal(output["logits"], target)}
        if self.multi_frequency:
            for level, weight in zip(LEVELS, self.frequency_weights):
                terms[level] = weight * F.cross_entropy(output[f"p_{level}"].float(), target)
        if self.use_au:
            bottleneck = (self.au_ib_beta * output["au_rate"].float() + output["au_distortion"].float()).sum()
            au_logits = output["au_logits"].float()
            if self.au_classifier_loss == "bce":
                one_hot = F.one_hot(target, self.num_classes).float()
                classifier = F.binary_cross_entropy_with_logits(au_logits, one_hot, reduction="sum") / len(target)
            else:
                classifier = F.cross_entropy(au_logits, target)
            terms["au_bottleneck"] = self.au_loss_weight * bottleneck
            terms["au_classifier"] = self.au_loss_weight * classifier
        return terms

    def loss(self, output: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Eq. 18: ``L_multi-class + L_freq + L_AU`` (a float32 scalar); ``target`` ``(B,)`` class indices."""
        return torch.stack(list(self.loss_terms(output, target).values())).sum()

