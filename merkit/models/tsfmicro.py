"""TSFmicro: temporal and spatial feature fusion for dynamic micro-expression recognition.

Feng Liu, Bingyu Nan, Xuezhong Qian, Xiaolan Fu, "Temporal and Spatial Feature Fusion Framework for
Dynamic Micro Expression Recognition", 2025 (``/work/shared/papers/003-tsfmicro.txt``).

Architecture (paper sizes; ``D = embed_dim = 512``, input ``224 x 224``, token grid ``14 x 14``)::

    motion (diff = apex - onset, Eq. 1, or flow u/v/strain)
      -> conv stem: log2(16) x [3x3 conv stride 2, BN, GELU] (Eq. 3-5)   -> (B, 196, D)
      -> 5 RetNet blocks (multi-scale retention, Eq. 2, + FFN)            -> F_t (B, 196, D)
    onset frame
      -> 16x16 patch embedding (Eq. 6-7) + learnable position (Eq. 8)    -> (B, 196, D)
      -> 2 ViT blocks -> LayerNorm                                        -> F_s (B, 196, D)
    F = F_t + F_s (Eq. 9, "T-S (late)" fusion)
      -> FC D->1024 per token -> norm (Eq. 10) -> swish (Eq. 11) -> mean over tokens (Eq. 12)
      -> linear classifier -> logits (B, K); trained with cross-entropy (Eq. 13).

Fusion strategies of the fusion study (Sec. 4.4, Table 7), option ``fusion``:

* ``"late"`` (default): the two branches run independently and their outputs are summed (Eq. 9).
* ``"early"``: "fuses temporal and spatial information prior to the recognition backbone following
  a simple convolutional extraction": conv-stem tokens of the motion + patch/position tokens of
  the face are summed and fed to the RetNet blocks (the recognition backbone); no ViT blocks.
  (The authors' released code extracts the face with a second conv stem instead of the patch
  embedding.)
* ``"t_to_s"``: "first extracts temporal features, then fuses them with spatial information and
  inputs spatial sub-branches": ``F_t`` is added to the face's patch/position tokens, which then
  go through the ViT blocks and LayerNorm. (The authors' released code instead adds ``F_t`` after
  the ViT blocks, before the LayerNorm; merkit follows the paper's text.)
* ``"s_to_t"``: "extracts spatial features first, then fuses them with temporal information and
  inputs temporal sub-branches": ``F_s`` is added to the motion's conv-stem tokens, which then go
  through the RetNet blocks (as in the released code).

Ablation variants (Table 6), option ``branches``: ``"both"`` (default), ``"temporal"`` (W/O S: stem
+ RetNet blocks + head; declares only the motion view) and ``"spatial"`` (W/O T: patch embedding +
ViT + LayerNorm + head; declares only the face view).

Paper ambiguities and the choices made here (each alternative is an option where plausible):

* Retention geometry: the text (Eq. 2) describes RetNet's causal 1-D retention over the token
  sequence; the authors' code uses RMT's non-causal Manhattan decay on the token grid. Option
  ``retention="causal-1d"`` (default) or ``"manhattan-2d"``; see
  :mod:`merkit.models.blocks.retention`. Decay rates: ``decay_schedule="retnet"``
  (``1 - 2^(-5-h)``) or ``"rmt"``.
* Temporal backbone layout: the text gives a conv stem, "RetNet blocks", a five-layer RetNet and a
  ``14 x 14 x 512`` output, i.e. an isotropic stack after a stride-16 stem (implemented). The
  authors' code is RMT-T3-like instead (stride-2 stem, four stages of widths 64-128-256-512 with
  1-1-2-1 blocks and strided-conv merging); not offered.
* Stem: the paper gives one 3x3 conv + BN + GELU but a 14x14 output at 224 input, so the stem
  stacks ``log2(stem_stride)`` stride-2 such layers with widths doubling up to ``D``
  (64-128-256-512 at paper size).
* Spatial patch size equals the stem stride so both branches share one token grid (16 at paper
  size, as the paper says). The released code instead resizes the onset frame to 14x14 and uses
  1x1 patches.
* Head normalisation (Eq. 10) is unnamed: ``head_norm="batch"`` (default; BatchNorm over the
  1024 channels, as in the released code and RMT) or ``"layer"``.
* Widths not given by the paper follow the released code: 2 retention heads (key width 256, as
  RetNet recommends), FFN ratio 3, 4 ViT heads with MLP ratio 4, stochastic depth 0.1 over the
  RetNet blocks, value factor 1.
* Retention form: training uses the parallel form; ``retention_form="recurrent"`` or
  ``"chunkwise"`` (causal-1d only) computes the same output token by token / chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.blocks.retention import RetNetBlock, check_retention_form
from merkit.models.blocks.transformer import LearnedPositionEmbedding, PatchEmbedding, TransformerBlock
from merkit.models.registry import register
from merkit.views import ViewSpec

FUSION_MODES = ("late", "early", "t_to_s", "s_to_t")
BRANCHES = ("both", "temporal", "spatial")
MOTION_VIEWS = ("diff", "flow")
SPATIAL_VIEWS = ("onset", "apex")
HEAD_NORMS = ("batch", "layer")


class ConvStem(nn.Module):
    """Motion tokens: ``log2(stride)`` x [3x3 conv stride 2, BatchNorm, GELU] (TSFmicro Eq. 3-5).

    ``(B, C, H, W) -> (B, (H/stride) * (W/stride), D)`` tokens in raster order. Layer widths
    double up to ``D`` (``D/8, D/4, D/2, D`` for stride 16).
    """

    def __init__(self, in_channels: int, embed_dim: int, stride: int):
        super().__init__()
        num_layers = int(math.log2(stride))
        widths = [max(embed_dim // 2 ** (num_layers - 1 - i), min(8, embed_dim)) for i in range(num_layers)]
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU()]
            in_channels = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)


class ClassifierHead(nn.Module):
    """``(B, N, D) -> (B, K)``: per-token FC ``D -> P`` -> norm -> swish -> mean over tokens -> linear.

    TSFmicro Eq. 10-12 followed by the classifier; ``norm`` is ``"batch"`` (statistics over batch
    and tokens per channel) or ``"layer"`` (per token over channels).
    """

    def __init__(self, embed_dim: int, projection_dim: int, num_classes: int, norm: str = "batch"):
        super().__init__()
        self.proj = nn.Linear(embed_dim, projection_dim)
        self.norm_kind = norm
        self.norm = nn.BatchNorm1d(projection_dim) if norm == "batch" else nn.LayerNorm(projection_dim)
        self.classifier = nn.Linear(projection_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(tokens)  # (B, N, P)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2) if self.norm_kind == "batch" else self.norm(x)
        return self.classifier(F.silu(x).mean(dim=1))


@register("tsfmicro", "TSFmicro (Liu et al. 2025): RetNet motion branch + ViT face branch, fused")
class TSFmicro(MERModel):
    """TSFmicro: RetNet temporal branch on motion + ViT spatial branch on a face frame, fused.

    Args:
        num_classes: ``K``.
        image_size: ``H`` (square) or ``(H, W)``; both divisible by ``stem_stride``.
        in_channels: 1 (grey) or 3 (RGB) for the ``diff`` and face views (``flow`` is always 3).
        embed_dim: token width ``D`` of both branches.
        temporal_depth: RetNet blocks (paper: 5).
        spatial_depth: ViT blocks (paper: 2).
        retention_heads, spatial_heads: heads of the retention and attention layers.
        retention_mlp_ratio, spatial_mlp_ratio: FFN widths as multiples of ``D``.
        stem_stride: total stride of the conv stem = spatial patch size (power of 2; paper 16).
        retention: ``"causal-1d"`` or ``"manhattan-2d"``.
        decay_schedule: ``"retnet"`` or ``"rmt"`` per-head decay rates.
        value_factor: retention value width multiplier.
        retention_form: ``"parallel"``, ``"recurrent"`` or ``"chunkwise"`` (same output).
        chunk_size: tokens per chunk of the chunkwise form.
        fusion: ``"late"``, ``"early"``, ``"t_to_s"`` or ``"s_to_t"`` (two branches only).
        branches: ``"both"``, ``"temporal"`` or ``"spatial"``.
        motion: temporal input view, ``"diff"`` (apex - onset) or ``"flow"`` (u, v, strain).
        spatial_view: spatial input view, ``"onset"`` (paper) or ``"apex"``.
        projection_dim: width of the head's FC layer (paper: 1024).
        head_norm: ``"batch"`` or ``"layer"``.
        drop_path_rate: stochastic depth, rising linearly to this value over the RetNet blocks.

    Attributes:
        input_spec: the views consumed, e.g. ``(ViewSpec("diff", (224, 224), 3),
            ViewSpec("onset", (224, 224), 3))``.
        grid: the token grid ``(H / stem_stride, W / stem_stride)``.

    Raises:
        ConfigError: an option out of range or inconsistent with another.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int | Sequence[int] = 224,
        in_channels: int = 3,
        embed_dim: int = 512,
        temporal_depth: int = 5,
        spatial_depth: int = 2,
        retention_heads: int = 2,
        spatial_heads: int = 4,
        retention_mlp_ratio: float = 3.0,
        spatial_mlp_ratio: float = 4.0,
        stem_stride: int = 16,
        retention: str = "causal-1d",
        decay_schedule: str = "retnet",
        value_factor: int = 1,
        retention_form: str = "parallel",
        chunk_size: int = 64,
        fusion: str = "late",
        branches: str = "both",
        motion: str = "diff",
        spatial_view: str = "onset",
        projection_dim: int = 1024,
        head_norm: str = "batch",
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        _check_choice("fusion", fusion, FUSION_MODES)
        _check_choice("head_norm", head_norm, HEAD_NORMS)
        specs = self.input_spec_from({"image_size": image_size, "in_channels": in_channels, "branches": branches,
                                      "motion": motion, "spatial_view": spatial_view})
        if branches != "both" and fusion != "late":
            raise ConfigError(f"fusion {fusion!r} needs both branches, but branches={branches!r}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if stem_stride < 2 or stem_stride & (stem_stride - 1):
            raise ConfigError(f"stem_stride must be a power of 2 >= 2, got {stem_stride}")
        size = _image_size(image_size)
        if size[0] % stem_stride or size[1] % stem_stride:
            raise ConfigError(f"image_size {size} is not divisible by stem_stride {stem_stride}")
        check_retention_form(retention, retention_form)

        self.fusion = fusion
        self.branches = branches
        self.motion = motion
        self.spatial_view = spatial_view
        self.retention_form = retention_form
        self.chunk_size = chunk_size
        self.grid = (size[0] // stem_stride, size[1] // stem_stride)
        self.uses_temporal = branches in ("both", "temporal")
        self.uses_spatial = branches in ("both", "spatial")

        if self.uses_temporal:
            self.stem = ConvStem(specs[0].channels, embed_dim, stem_stride)
            drop_paths = torch.linspace(0.0, drop_path_rate, temporal_depth).tolist()
            self.temporal_blocks = nn.ModuleList(
                RetNetBlock(embed_dim, retention_heads, retention_mlp_ratio, retention, decay_schedule,
                            value_factor, drop_path=p)
                for p in drop_paths)
        if self.uses_spatial:
            self.patch_embedding = PatchEmbedding(in_channels, embed_dim, stem_stride, size)
            self.position_embedding = LearnedPositionEmbedding(self.patch_embedding.num_tokens, embed_dim)
            if fusion != "early":
                self.spatial_blocks = nn.ModuleList(
                    TransformerBlock(embed_dim, spatial_heads, spatial_mlp_ratio) for _ in range(spatial_depth))
                self.spatial_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.input_spec: tuple[ViewSpec, ...] = specs
        self.head = ClassifierHead(embed_dim, projection_dim, num_classes, head_norm)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """The motion view (``diff`` or ``flow``) and/or the face view, as ``branches`` says."""
        _check_choice("branches", options["branches"], BRANCHES)
        _check_choice("motion", options["motion"], MOTION_VIEWS)
        _check_choice("spatial_view", options["spatial_view"], SPATIAL_VIEWS)
        in_channels, motion = options["in_channels"], options["motion"]
        _check_choice("in_channels", in_channels, (1, 3))
        size = _image_size(options["image_size"])
        specs = []
        if options["branches"] in ("both", "temporal"):
            specs.append(ViewSpec(motion, size=size, channels=3 if motion == "flow" else in_channels))
        if options["branches"] in ("both", "spatial"):
            specs.append(ViewSpec(options["spatial_view"], size=size, channels=in_channels))
        return tuple(specs)

    def classifier_keys(self) -> list[str]:
        """The head's final linear layer."""
        return ["head.classifier.weight", "head.classifier.bias"]

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """``views``: the tensors named in :attr:`input_spec`, each ``(B, C, H, W)`` -> logits ``(B, K)``.

        Raises:
            ModelInputError: a view is missing or has the wrong shape.
        """
        return self.head(self.features(views))

    def features(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused token features before the head, ``(B, N, D)`` with ``N = grid[0] * grid[1]``."""
        self._check_views(views)
        if self.branches == "temporal":
            return self._retain(self.stem(views[self.motion]))
        if self.branches == "spatial":
            return self._attend(self._embed(views[self.spatial_view]))
        motion, face = views[self.motion], views[self.spatial_view]
        if self.fusion == "late":
            return self._retain(self.stem(motion)) + self._attend(self._embed(face))
        if self.fusion == "early":
            return self._retain(self.stem(motion) + self._embed(face))
        if self.fusion == "t_to_s":
            return self._attend(self._embed(face) + self._retain(self.stem(motion)))
        return self._retain(self.stem(motion) + self._attend(self._embed(face)))  # s_to_t

    def _retain(self, tokens: torch.Tensor) -> torch.Tensor:
        """RetNet blocks: ``(B, N, D) -> (B, N, D)``."""
        for block in self.temporal_blocks:
            tokens = block(tokens, self.grid, self.retention_form, self.chunk_size)
        return tokens

    def _embed(self, face: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding: ``(B, C, H, W) -> (B, N, D)``."""
        return self.position_embedding(self.patch_embedding(face))

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT blocks then LayerNorm: ``(B, N, D) -> (B, N, D)``."""
        for block in self.spatial_blocks:
            tokens = block(tokens)
        return self.spatial_norm(tokens)

    def _check_views(self, views: dict[str, torch.Tensor]) -> None:
        batch_sizes = set()
        for spec in self.input_spec:
            if spec.name not in views:
                raise ModelInputError(f"TSFmicro needs view {spec.name!r}; got views {sorted(views)}")
            tensor = views[spec.name]
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != spec.shape():
                raise ModelInputError(
                    f"TSFmicro view {spec.name!r} must be (B, {', '.join(map(str, spec.shape()))}), "
                    f"got {tuple(tensor.shape)}")
            batch_sizes.add(tensor.shape[0])
        if len(batch_sizes) > 1:
            raise ModelInputError(f"TSFmicro views have different batch sizes: {sorted(batch_sizes)}")


def _check_choice(option: str, value: object, choices: tuple[object, ...]) -> None:
    check_choice(f"TSFmicro option {option!r}", value, choices)


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ConfigError(f"image_size must be an int or (H, W), got {image_size!r}")
    return size

