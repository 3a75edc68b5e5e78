"""Multi-scale 3D-ResNet50 on optical flow with a discriminative network (paper 004).

H. Jin, N. He, Z. Li, P. Yang, "Micro-expression recognition based on multi-scale 3D residual
convolutional neural network", Mathematical Biosciences and Engineering, 2024.

Input: the ``flow_seq`` view ``(B, T, 3, H, W)`` (u, v, optical strain of onset -> frame flow;
the paper: T = 16 key frames at 134 x 134, TV-L1 flow after Eulerian magnification), or the
``frames`` view ``(B, T, C, H, W)`` for the "without optical flow" ablation. The model permutes
to ``(B, C, T, H, W)`` itself; every internal tensor has that layout. Any T, H, W of at least 1
after the strides works; ``input_size`` and ``num_frames`` only declare what the preprocessing
pipeline should build (the ``input_spec``).

Network (Sec. 3.3, Fig. 3) and how we read what the text leaves open:

* **Backbone** (:mod:`merkit.models.blocks.resnet3d`). Block 1 is a ``3x7x7`` convolution
  (stride (1, 2, 2): the paper gives none; we follow ResNet's stem). Blocks 2-5 have "6, 8, 12
  and 6 convolution layers where every 2 form a residual structure": basic blocks 3-4-6-3
  (``layout="paper-basic"``, the default): 32 convolutions in the stages, with the stem and a
  classifier the ResNet-34 layout, although the paper calls it ResNet50.
  ``layout="bottleneck50"`` builds the true bottleneck ResNet-50 (3-4-6-3 bottlenecks, 4x wider
  stage outputs, 2.2x the parameters of the full model at base width 64). A 3x3x3 max pool with
  stride (1, 2, 2) opens block 2 as in ResNet's conv2_x; blocks 3-5 halve T, H and W. At the
  paper's 16 x 134 x 134 the maps are T x H: 16 x 67 (block 1), 16 x 34, 8 x 17, 4 x 9, 2 x 5.
* **Attention after block 1**: the text only says "temporal and spatial attention". We apply,
  after the stem's ReLU and before the pool, a temporal attention (per-frame descriptor = spatial
  mean ``(B, C, T)``, Conv1d(k=3) C -> C/r -> ReLU -> Conv1d(k=3) -> 1, sigmoid, one weight per
  frame ``(B, 1, T, 1, 1)``) and then a CBAM-style spatial attention (channel mean and max ->
  ``1x7x7`` convolution -> sigmoid, one weight per voxel ``(B, 1, T, H, W)``), each multiplying
  the features.
* **Spatial multi-scale**: RC1, RC2, RC3 (:mod:`merkit.models.blocks.multiscale`, Eqs. 3.8 and
  3.9) follow blocks 2, 3 and 4 and replace their output with the fused map K, as the text says;
  X2..X4 are taken after them. The paper never expands "RC" and its figures are lost; read as
  "residual convolution" the modules would return ``x + K`` (``multiscale_residual=True``),
  which trains much faster from scratch on small data (the CPU config uses it).
* **Temporal multi-scale fusion** (Sec. 3.3.3): four outputs, ``O1 = X5``,
  ``O2 = AFF(up(X5), X4)``, ``O3 = AFF(up(X4), X3)``, ``O4 = AFF(up(X3), X2)`` as written
  (``fusion_chain="pairwise"``); ``"cascade"`` feeds the previous fused output instead
  (``O3 = AFF(up(O2), X3)``, ``O4 = AFF(up(O3), X2)``, FPN-style), the other reading of
  Fig. 3. ``up`` is a ``3x3x3`` transposed convolution with the deeper block's stride, channels
  C_{k+1} -> C_k, output size set to the shallower map's exact (T, H, W) (odd sizes like
  9 -> 17 included), then BatchNorm and ReLU. AFF (:mod:`merkit.models.blocks.fusion`,
  Eqs. 3.10-3.11) takes the up-sampled deeper map as X and the shallower map as Y;
  ``fusion_iterations=2`` is the paper's "two fusion operations" per AFFA.
* **Discriminative network** (Sec. 3.4): each output passes "two fully connected layers". A
  5-D map cannot be flattened into a fully connected layer at this size (X2 alone has ~1.2 M
  values per clip), so each output is average-pooled first: over time and to a ``g x g`` grid
  (``head_grid``, default 1 = global average pooling), then
  ``Linear(C_k g^2, head_hidden) -> ReLU -> Dropout(head_dropout) -> Linear(head_hidden, K)``.
  Global pooling forgets where on the face the motion was (brow or mouth corner), which on
  aligned faces is much of a micro-expression's meaning; a 2 x 2 grid keeps a coarse layout
  at 4x the first layer's inputs. The paper gives no widths; ``head_hidden`` defaults to 128.
* **Loss**: the sum of the cross-entropy losses of the outputs (:meth:`loss`). CAM's
  BatchNorm layers see one pooled value per sample, so training batches need two or more clips
  (as for every BatchNorm; the trainer folds a one-clip last batch away).
* **Inference**: the paper picks "the most optimal solution" among the four without saying how.
  ``selection="max_confidence"`` (default) takes, per sample, the output whose softmax maximum is
  highest (ties: the earliest output); ``"mean"`` averages the four softmax distributions and
  returns their log (so ``softmax(logits)`` is the mean distribution); ``"fixed"`` returns output
  ``fixed_output`` (0 = O1 from X5 ... 3 = O4 from X3 + X2).

Variants (the ablations of Fig. 11): ``"full"``; ``"no_flow"`` (raw ``frames`` in,
``frame_channels`` channels); ``"no_attention"``; ``"no_spatial_ms"`` (no RC modules);
``"no_temporal_ms"`` (no fusion, a single output from X5); ``"plain"`` (none of the four
additions: the "basic 3D-ResNet" that Fig. 11 starts from, and the baseline of the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.blocks.fusion import AttentionalFeatureFusion
from merkit.models.blocks.multiscale import rc1, rc2, rc3
from merkit.models.blocks.resnet3d import resnet3d
from merkit.models.registry import register
from merkit.views import ViewSpec

Selection = Literal["max_confidence", "mean", "fixed"]
SELECTIONS = ("max_confidence", "mean", "fixed")


@dataclass(frozen=True)
class Variant:
    """Which of the paper's additions a variant keeps, and which view it reads."""

    attention: bool
    spatial_multiscale: bool
    temporal_multiscale: bool
    view: Literal["flow_seq", "frames"]


VARIANTS: dict[str, Variant] = {
    "full": Variant(True, True, True, "flow_seq"),
    "no_flow": Variant(True, True, True, "frames"),
    "no_attention": Variant(False, True, True, "flow_seq"),
    "no_spatial_ms": Variant(True, False, True, "flow_seq"),
    "no_temporal_ms": Variant(True, True, False, "flow_seq"),
    "plain": Variant(False, False, False, "flow_seq"),
}


class TemporalAttention(nn.Module):
    """One weight per frame from the frames' spatially pooled features.

    ``(B, C, T, H, W) -> (B, 1, T, 1, 1)`` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 3):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.score = nn.Sequential(
            nn.Conv1d(channels, hidden, kernel, padding=kernel // 2),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, 1, kernel, padding=kernel // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame_descriptor = x.mean(dim=(3, 4))
        return torch.sigmoid(self.score(frame_descriptor))[..., None, None]


class SpatialAttention(nn.Module):
    """One weight per voxel from the channel mean and max (CBAM-style, per frame).

    ``(B, C, T, H, W) -> (B, 1, T, H, W)`` in (0, 1).
    """

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.score = nn.Conv3d(2, 1, (1, kernel, kernel), padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.score(pooled))


class SpatioTemporalAttention(nn.Module):
    """Temporal then spatial re-weighting of a feature map; ``(B, C, T, H, W)`` in and out."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.temporal = TemporalAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.temporal(x)
        return x * self.spatial(x)


class UpsampleFuse(nn.Module):
    """Transposed-conv up-sampling of a deeper map, then attentional fusion with a shallower one.

    ``deep (B, C_deep, T', H', W')``, ``shallow (B, C, T, H, W)`` -> ``(B, C, T, H, W)``.
    """

    def __init__(self, deep_channels: int, channels: int, stride: Sequence[int], reduction: int, iterations: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(deep_channels, channels, 3, stride=tuple(stride), padding=1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        self.fuse = AttentionalFeatureFusion(channels, reduction, iterations)

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        up = torch.relu(self.bn(self.up(deep, output_size=list(shallow.shape[2:]))))
        return self.fuse(up, shallow)


class ClassifierHead(nn.Module):
    """Average pooling to a ``1 x grid x grid`` map and two fully connected layers:
    ``(B, C, T, H, W) -> (B, K)``; ``grid=1`` is global average pooling."""

    def __init__(self, channels: int, num_classes: int, hidden: int, dropout: float, grid: int = 1):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d((1, grid, grid))
        self.layers = nn.Sequential(
            nn.Linear(channels * grid * grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.pool(x).flatten(1))


def select_output(all_logits: torch.Tensor, rule: Selection = "max_confidence", fixed_output: int = 0) -> torch.Tensor:
    """The discriminative network's choice among several outputs.

    Args:
        all_logits: ``(N, B, K)`` logits of N outputs.
        rule: ``"max_confidence"``: per sample, the output with the highest softmax maximum
            (the earliest on ties); ``"mean"``: log of the mean softmax distribution;
            ``"fixed"``: output ``fixed_output``.
        fixed_output: index into the N outputs for ``"fixed"``.

    Returns:
        ``(B, K)`` logits.

    Raises:
        ConfigError: unknown rule or ``fixed_output`` out of range.
    """
    num_outputs, batch = all_logits.shape[:2]
    if rule == "max_confidence":
        confidence = torch.softmax(all_logits, dim=-1).amax(dim=-1)
        best = confidence.argmax(dim=0)
        return all_logits[best, torch.arange(batch, device=all_logits.device)]
    if rule == "mean":
        log_probs = torch.log_softmax(all_logits, dim=-1)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(num_outputs)))
    if rule == "fixed":
        if not 0 <= fixed_output < num_outputs:
            raise ConfigError(f"fixed_output must be in [0, {num_outputs - 1}], got {fixed_output}")
        return all_logits[fixed_output]
    raise ConfigError(f"unknown output selection {rule!r}; expected one of {SELECTIONS}")


@register("ms3d-resnet", "Multi-scale 3D-ResNet50 on optical flow sequences (Jin et al. 2024)")
class MultiScale3dResNet(MERModel):
    """The multi-scale 3D-ResNet of paper 004 (see the module docstring for every choice).

    Args:
        num_classes: K.
        variant: one of :data:`VARIANTS`.
        layout: ``"paper-basic"`` (3-4-6-3 basic blocks, as the text describes) or
            ``"bottleneck50"`` (true ResNet-50).
        base_width: channels of block 1 and stage 2's blocks (64 in ResNet).
        input_size: (H, W) of the view to request (paper: 134 x 134).
        num_frames: T of the view to request (paper: 16).
        frame_channels: 1 or 3, channels of the ``frames`` view for ``variant="no_flow"``.
        selection: inference rule, ``"max_confidence"`` | ``"mean"`` | ``"fixed"``.
        fixed_output: output used by ``selection="fixed"`` (0..3).
        fusion_chain: ``"pairwise"`` (as written) or ``"cascade"``.
        fusion_iterations: 2 (the paper's AFFA) or 1 (Eq. 3.11 alone).
        fusion_reduction: channel ratio r of CAM.
        multiscale_reduction: channel ratio of the RC modules' 1x1x1 reduce convolutions.
        multiscale_weighting: ``"free"`` (Eqs. 3.8-3.9 as written) or ``"softmax"``.
        multiscale_residual: RC modules return ``x + K`` instead of ``K`` (see the module docstring).
        attention_reduction: channel ratio of the temporal attention.
        head_hidden: width of the first fully connected layer of each head.
        head_dropout: dropout between the two fully connected layers.
        zero_init_residual: start every residual block's last BatchNorm at zero (not in the paper;
            eases training from scratch on small data).
        stem_pool: the max pool that opens block 2 (ResNet's; the paper names no pooling). Off,
            every map is twice as large per side: for inputs much smaller than 134 x 134.
        head_grid: each head average-pools its map to ``1 x head_grid x head_grid`` before the
            fully connected layers (1: global average pooling; see the module docstring).

    Attributes:
        input_spec: the one view this model reads.
        num_outputs: 4, or 1 for the variants without temporal multi-scale fusion.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "full",
        layout: str = "paper-basic",
        base_width: int = 64,
        input_size: Sequence[int] = (134, 134),
        num_frames: int = 16,
        frame_channels: int = 3,
        selection: Selection = "max_confidence",
        fixed_output: int = 0,
        fusion_chain: Literal["pairwise", "cascade"] = "pairwise",
        fusion_iterations: int = 2,
        fusion_reduction: int = 4,
        multiscale_reduction: int = 2,
        multiscale_weighting: Literal["free", "softmax"] = "free",
        multiscale_residual: bool = False,
        attention_reduction: int = 4,
        head_hidden: int = 128,
        head_dropout: float = 0.0,
        zero_init_residual: bool = False,
        stem_pool: bool = True,
        head_grid: int = 1,
    ):
        super().__init__()
        self.input_spec: tuple[ViewSpec, ...] = self.input_spec_from(
            {"variant": variant, "input_size": input_size, "num_frames": num_frames, "frame_channels": frame_channels})
        check_choice("ms3d-resnet: selection", selection, SELECTIONS)
        check_choice("ms3d-resnet: fusion_chain", fusion_chain, ("pairwise", "cascade"))
        if num_classes < 2:
            raise ConfigError(f"ms3d-resnet: num_classes must be >= 2, got {num_classes}")
        if head_grid < 1:
            raise ConfigError(f"ms3d-resnet: head_grid must be >= 1, got {head_grid}")
        self.variant = VARIANTS[variant]
        self.num_outputs = 4 if self.variant.temporal_multiscale else 1
        if selection == "fixed" and not 0 <= fixed_output < self.num_outputs:
            raise ConfigError(f"ms3d-resnet ({variant}): fixed_output must be in [0, {self.num_outputs - 1}], got {fixed_output}")
        self.selection: Selection = selection
        self.fixed_output = fixed_output
        self.fusion_chain = fusion_chain

        in_channels = self.input_spec[0].channels
        self.backbone = resnet3d(layout, in_channels=in_channels, base_width=base_width,
                                 zero_init_residual=zero_init_residual, stem_pool=stem_pool)
        channels = self.backbone.stage_channels
        self.attention = (
            SpatioTemporalAttention(base_width, attention_reduction) if self.variant.attention else nn.Identity()
        )
        # RC1, RC2, RC3 after stages 2, 3, 4 (backbone stages 0, 1, 2); nothing after stage 5
        if self.variant.spatial_multiscale:
            rc_modules = [
                build(c, multiscale_reduction, multiscale_weighting, multiscale_residual)
                for build, c in zip((rc1, rc2, rc3), channels)
            ]
        else:
            rc_modules = [nn.Identity() for _ in range(3)]
        self.multiscale = nn.ModuleList([*rc_modules, nn.Identity()])
        if self.variant.temporal_multiscale:
            # fusions[i] up-samples stage i+1 (deeper) onto stage i; used deepest first
            self.fusions = nn.ModuleList(
                UpsampleFuse(channels[i + 1], channels[i], self.backbone.stage_strides[i + 1], fusion_reduction, fusion_iterations)
                for i in range(3)
            )
            head_channels = [channels[3], channels[2], channels[1], channels[0]]
        else:
            self.fusions = nn.ModuleList()
            head_channels = [channels[3]]
        self.heads = nn.ModuleList(ClassifierHead(c, num_classes, head_hidden, head_dropout, head_grid) for c in head_channels)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """One sequence view: ``flow_seq`` (3 channels), or ``frames`` (``frame_channels``) for
        the ``no_flow`` variant."""
        check_choice("ms3d-resnet: variant", options["variant"], VARIANTS)
        view = VARIANTS[options["variant"]].view
        channels = options["frame_channels"] if view == "frames" else 3
        return (ViewSpec(view, size=tuple(options["input_size"]), channels=channels, length=options["num_frames"]),)

    def classifier_keys(self) -> list[str]:
        """The last fully connected layer of every head."""
        return [f"heads.{i}.layers.{len(head.layers) - 1}.{p}" for i, head in enumerate(self.heads) for p in ("weight", "bias")]

    def _input(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        spec = self.input_spec[0]
        if spec.name not in views:
            raise ModelInputError(f"ms3d-resnet needs the {spec.name!r} view, got {sorted(views)}")
        x = views[spec.name]
        if x.dim() != 5 or x.shape[2] != spec.channels:
            raise ModelInputError(
                f"ms3d-resnet: view {spec.name!r} must be (B, T, {spec.channels}, H, W), got {tuple(x.shape)}"
            )
        return x.permute(0, 2, 1, 3, 4)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``views[name]: (B, T, C, H, W)`` -> ``{"logits": (B, K), "all_logits": (N, B, K)}``.

        ``all_logits[0]`` comes from X5, then X5+X4, X4+X3, X3+X2 (N = 4), or X5 alone (N = 1).

        Raises:
            ModelInputError: the view is missing or not 5-D with the declared channels.
        """
        x = self.attention(self.backbone.stem(self._input(views)))
        x = self.backbone.stem_pool(x)
        stage_outputs = []
        for stage, multiscale in zip(self.backbone.stages, self.multiscale):
            x = multiscale(stage(x))
            stage_outputs.append(x)
        outputs = [stage_outputs[3]]
        if self.variant.temporal_multiscale:
            for level in (2, 1, 0):
                deeper = outputs[-1] if self.fusion_chain == "cascade" else stage_outputs[level + 1]
                outputs.append(self.fusions[level](deeper, stage_outputs[level]))
        all_logits = torch.stack([head(out) for head, out in zip(self.heads, outputs)])
        return {"logits": select_output(all_logits, self.selection, self.fixed_output), "all_logits": all_logits}

    def loss(self, output: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Sum of the cross-entropy losses of all outputs; ``target (B,)`` class indices."""
        return sum(F.cross_entropy(logits.float(), target) for logits in output["all_logits"])

