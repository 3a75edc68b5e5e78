"""ATM-GCN: Adaptive Temporal Motion guided Graph Convolution Network (paper 001).

F. Zhang, X. Zhang, Z. Huang, Q. Jin, "Adaptive Temporal Motion Guided Graph Convolution Network
for Micro-expression Recognition".

Pipeline, for a clip of T sampled frames ``f_1 .. f_T`` (``f_1`` the onset; the paper's L = T):

1. **Temporal motion pairing** (Eq. 1): every frame i = 2..T is paired with the onset,
   ``delta_f_i = f_i - f_onset``.
2. **Motion encoder** (Eq. 2): ``m_i = M(delta_f_i, T(i))``: stem (3x3 conv -> BN -> ReLU), plus the
   temporal positional encoding ``T(i)`` of the pair's distance from the onset, then a stack of
   MMNet Continuous Attention blocks (:mod:`merkit.models.blocks.attention`), average pooling
   to a ``pool_grid x pool_grid`` grid and a linear map to ``feature_dim`` (N_m).
3. **Graph**: node ``v_i`` (i = 2..T) starts as ``m_i``; the apex pair's node is the global
   motion node, the others are local. Directed edges ``v_i -> v_j`` for ``|i - j| <= w``
   (Eq. 3, self-loops included), every local node -> global (Eq. 4), global -> every node
   (Eq. 5). Weights (Eqs. 6-8): ``A_ij = (1 - arccos(cos(h_i, h_j)) / pi) * exp(-|i - j| / tau)``,
   times ``lambda_global`` for the global node's outgoing edges and ``lambda_local`` for the
   others. :func:`build_adjacency` is this construction as a pure function.
4. **Adaptive-TM + TM-GCN layers** (Eqs. 9-10): before GCN layer l,
   ``A~(l) = FC_l(A~(l-1)) * (1 - f_l) + A~(0) * f_l``; the layer propagates node features
   with ``A~(l)``.
5. **Classifier** (Eq. 11): self-attention over the final node features -> masked pooling -> FC.
6. **Loss**: focal loss (:class:`merkit.models.blocks.losses.FocalLoss`, ``focal_alpha``, ``focal_gamma``).

Variants (Table IV): ``full``; ``no_gcn`` (motion features pooled straight into the final FC:
no graph and no self-attention, as the paper says this variant "fuses all motion features using
Pooling layers"); ``no_motion`` (the encoder sees the frames ``f_2 .. f_T`` themselves, no onset
subtraction; the graph over those T - 1 nodes is unchanged, the global node is the apex frame's);
``no_atm`` (no Adaptive-TM layers: every GCN layer uses ``A~(0)``).

Paper ambiguities and the choices made here (an option where both readings are plausible):

* ``T(i)`` "added into the input": added channel-wise to the stem's output, i.e. the input of the
  first CA block (adding a per-channel constant to the raw difference image would be absorbed by
  the first conv's bias). ``temporal_encoding``: ``"learned"`` (default; an embedding per
  distance, initialised near 0), ``"sinusoidal"`` (fixed Transformer code) or ``"none"``.
  The distance is counted in sampled frames (1 .. T-1).
* CA strides: 1 for the first block, 2 for the others, as MMNet. The stem's stride
  (``stem_stride``) is not given; the paper configs use 2 so that 224 px ends at 14 x 14, the
  final map size of MMNet.
* Eq. 9 indexes the layer-l adjacency as ``A~(l-1)`` while the text says an Adaptive-TM layer
  precedes *each* TM-GCN layer: here GCN layer l (1-based) uses the adapted ``A~(l)``, so the
  first layer is adapted too.
* Eq. 6 defines ``A(l)`` from the layer-l features, Eq. 10 from the previous adjacency. Default:
  literal Eq. 10 (the FC acts on the previous *adapted* matrix; only ``A~(0)`` is built from
  features). ``recompute_adjacency=True``: the FC input of layer l is rebuilt by Eqs. 6-8 from
  the features entering that layer.
* ``FC`` acts on each row (a node's outgoing weights) as ``Linear(N_max, N_max)`` with
  ``N_max = num_frames - 1``, one FC per layer, initialised to the identity so that training
  starts from ``A~(0)``. Shorter clips use the leading ``N x N`` block (same as zero padding).
* ``keep_sparsity`` (default True): the FC output is masked to the edge set of Eqs. 3-5. The
  paper limits edges to a window precisely because a dense graph overfits small datasets; an
  unmasked FC would make every adapted graph dense. False: masked only to valid nodes.
* ``learn_forget_rate`` (default True): ``f_l = sigmoid(theta_l)`` with ``theta_l`` initialised
  so that ``f_l = forget_rate``; the paper gives no value for f_l, so it is learnt from data.
  False: ``f_l = forget_rate`` fixed (0 and 1 allowed).
* Message direction: an edge ``(v_i, v_j)`` is "from v_i to v_j", so by default node j aggregates
  ``sum_i A_ij h_i`` (``propagation="source_to_target"``): the global node broadcasts to every
  node with weight lambda_global. ``"target_to_source"`` reads the matrix the other way round.
* Normalisation is not stated; ``adjacency_normalization="row"`` (default) divides each node's
  incoming weights by their absolute sum (the adapted matrix may be negative), which keeps the
  lambda ratios; ``"none"`` propagates raw weights. A TM-GCN layer is the GCN of the paper's
  reference [6] (Kipf & Welling): ``ReLU(A_norm H W + b)``.
* The self-attention is one pre-norm multi-head attention layer, ``h + MHA(LayerNorm(h))``
  (a post-norm layer, ``LayerNorm(h + MHA(h))``, stalled at chance for the first epochs of small
  runs); ``pooling`` is ``"mean"`` (default) or ``"max"`` over valid nodes.
* The stem's BatchNorm starts its running statistics from the first training batch
  (:class:`WarmStartBatchNorm2d`): frame differences have a variance of ~1e-5, and the default
  start at variance 1 takes hundreds of steps to forget, leaving eval-mode outputs wrong in
  short runs.
* ``motion_input="flow"`` (not in the paper, off by default) replaces ``delta_f_i`` by the
  onset -> f_i optical flow (``flow_seq`` view). With a handful of training identities the
  difference carries each face's texture as much as its motion; the CPU demo config uses flow.
* Angular similarity is computed as ``1 - 2 atan2(|u - v|, |u + v|) / pi`` for unit vectors u, v,
  equal to Eq. 6 but with finite gradients when u = v (self-loops); a zero vector has similarity
  0.5 to everything. ``lambda_local < lambda_global`` is enforced, as in the paper; their
  values, tau's default (10) aside, are not given (defaults 1 and 2).

Apex (global node): ``views["apex_index"]`` (B,) long, the apex position among the T frames,
as the pipeline supplies it; an apex on the onset frame (index 0) maps to the first pair. Without
it, ``apex_rule="max_motion"`` (default) takes the pair whose motion (``f_i - f_onset``, or its
flow) has the largest mean absolute value (parameter-free, so it does not drift with training),
``"middle"`` the middle real pair.

Clips of different lengths: ``views["frame_mask"]`` (B, T) bool marks real frames (padding
False; the onset must be real). Only real pairs are encoded (so BatchNorm statistics never see
padding) and padding nodes have no edges, are ignored by attention and pooling: a padded clip
gives the same logits as the unpadded one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel, logits_of
from merkit.models.blocks.attention import ContinuousAttentionStack
from merkit.models.blocks.losses import FocalLoss
from merkit.models.registry import register
from merkit.views import ViewSpec

VARIANTS = ("full", "no_gcn", "no_motion", "no_atm")
_TEMPORAL_ENCODINGS = ("learned", "sinusoidal", "none")
_NORMALIZATIONS = ("row", "none")
_PROPAGATIONS = ("source_to_target", "target_to_source")
_POOLINGS = ("mean", "max")
_APEX_RULES = ("max_motion", "middle")
_MOTION_INPUTS = ("difference", "flow")


# --------------------------------------------------------------------------- graph construction


def angular_similarity(node_features: torch.Tensor) -> torch.Tensor:
    """Pairwise angular similarity ``1 - arccos(cos(h_i, h_j)) / pi`` (Eq. 6), in [0, 1].

    Args:
        node_features: ``(B, N, D)``.

    Returns:
        ``(B, N, N)``; exactly 1 on the diagonal of non-zero vectors.
    """
    unit = F.normalize(node_features, dim=-1, eps=1e-8)
    difference = (unit[:, :, None, :] - unit[:, None, :, :]).norm(dim=-1)
    total = (unit[:, :, None, :] + unit[:, None, :, :]).norm(dim=-1)
    return 1.0 - 2.0 * torch.atan2(difference, total) / math.pi


def temporal_motion_edges(node_mask: torch.Tensor, global_node: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The directed edge set of Eqs. 3-5.

    Args:
        node_mask: ``(B, N)`` bool, True for real nodes.
        global_node: ``(B,)`` long, the global motion node's index.
        window: w; node i reaches nodes j with ``|i - j| <= w`` (itself included).

    Returns:
        ``(edge_mask, from_global)``, both ``(B, N, N)`` bool: ``edge_mask[b, i, j]`` is True when
        the edge ``v_i -> v_j`` exists; ``from_global`` marks the edges leaving the global node
        (the set reweighted by ``lambda_global``, Eq. 8).
    """
    batch, num_nodes = node_mask.shape
    index = torch.arange(num_nodes, device=node_mask.device)
    in_window = (index[:, None] - index[None, :]).abs() <= window
    is_global = index[None, :] == global_node[:, None]  # (B, N)
    source_global = is_global[:, :, None].expand(batch, num_nodes, num_nodes)
    target_global = is_global[:, None, :].expand(batch, num_nodes, num_nodes)
    both_real = node_mask[:, :, None] & node_mask[:, None, :]
    edge_mask = (in_window[None] | source_global | target_global) & both_real
    return edge_mask, source_global & edge_mask


def build_adjacency(
    node_features: torch.Tensor,
    node_mask: torch.Tensor,
    global_node: torch.Tensor,
    window: int,
    tau: float = 10.0,
    lambda_local: float = 1.0,
    lambda_global: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reweighted adjacency ``A~`` of Eqs. 3-8.

    ``A~[b, i, j]`` is the weight of the edge ``v_i -> v_j`` (0 where there is none):
    ``angular_similarity(h_i, h_j) * exp(-|i - j| / tau) * lambda``, lambda being
    ``lambda_global`` when i is the global node and ``lambda_local`` otherwise. ``|i - j|`` is
    the distance in node positions (the frame indices differ by the same amount).

    Args:
        node_features: ``(B, N, D)`` node features h.
        node_mask: ``(B, N)`` bool, True for real nodes.
        global_node: ``(B,)`` long index of the global motion node.
        window: w of Eq. 3.
        tau: decay of Eq. 7.
        lambda_local, lambda_global: reweighting factors of Eq. 8.

    Returns:
        ``(adjacency (B, N, N) float, edge_mask (B, N, N) bool)``.
    """
    edge_mask, from_global = temporal_motion_edges(node_mask, global_node, window)
    index = torch.arange(node_features.shape[1], device=node_features.device, dtype=node_features.dtype)
    decay = torch.exp(-(index[:, None] - index[None, :]).abs() / tau)
    scale = torch.where(from_global, lambda_global, lambda_local).to(node_features.dtype)
    adjacency = angular_similarity(node_features) * decay * scale * edge_mask
    return adjacency, edge_mask


class AdaptiveTemporalMotion(nn.Module):
    """Adaptive-TM layer (Eq. 10): ``A~(l) = FC(A~(l-1)) * (1 - f_l) + A~(0) * f_l``.

    Args:
        max_nodes: N_max, the width of the row-wise FC.
        forget_rate: f_l (fixed) or its initial value (learnt).
        learn_forget_rate: learn ``f_l = sigmoid(theta)``; requires ``0 < forget_rate < 1``.
        keep_sparsity: mask the FC output to the edge set (else only to real nodes).

    Shapes: ``forward(previous (B, N, N), initial (B, N, N), edge_mask (B, N, N) bool,
    node_mask (B, N) bool) -> (B, N, N)`` with ``N <= max_nodes``.
    """

    def __init__(self, max_nodes: int, forget_rate: float = 0.5, learn_forget_rate: bool = True, keep_sparsity: bool = True):
        super().__init__()
        if learn_forget_rate and not 0.0 < forget_rate < 1.0:
            raise ConfigError(f"a learnt forget rate needs an initial value in (0, 1), got {forget_rate}")
        if not 0.0 <= forget_rate <= 1.0:
            raise ConfigError(f"forget_rate must lie in [0, 1], got {forget_rate}")
        self.fc = nn.Linear(max_nodes, max_nodes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(max_nodes))
            self.fc.bias.zero_()
        self.keep_sparsity = keep_sparsity
        if learn_forget_rate:
            self.forget_logit = nn.Parameter(torch.tensor(math.log(forget_rate / (1.0 - forget_rate))))
        else:
            self.register_buffer("fixed_forget_rate", torch.tensor(float(forget_rate)))

    @property
    def forget_rate(self) -> torch.Tensor:
        """f_l, a scalar tensor in [0, 1]."""
        if hasattr(self, "forget_logit"):
            return torch.sigmoid(self.forget_logit)
        return self.fixed_forget_rate

    def forward(
        self, previous: torch.Tensor, initial: torch.Tensor, edge_mask: torch.Tensor, node_mask: torch.Tensor
    ) -> torch.Tensor:
        num_nodes = previous.shape[-1]
        transformed = F.linear(previous, self.fc.weight[:num_nodes, :num_nodes], self.fc.bias[:num_nodes])
        allowed = edge_mask if self.keep_sparsity else node_mask[:, :, None] & node_mask[:, None, :]
        forget = self.forget_rate
        return transformed * allowed * (1.0 - forget) + initial * forget


class TemporalMotionGCNLayer(nn.Module):
    """TM-GCN layer (Eq. 9): ``h' = ReLU(A_norm H W + b)`` on real nodes, 0 on padding.

    Args:
        in_dim, out_dim: node feature sizes.
        normalization: ``"row"`` (each receiving node's incoming weights divided by their absolute
            sum) or ``"none"``.
        propagation: ``"source_to_target"`` (node j receives ``sum_i A_ij h_i``) or
            ``"target_to_source"`` (node i receives ``sum_j A_ij h_j``).

    Shapes: ``forward(h (B, N, in_dim), adjacency (B, N, N), node_mask (B, N)) -> (B, N, out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, normalization: str = "row", propagation: str = "source_to_target"):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.kaiming_normal_(self.linear.weight, nonlinearity="relu")
        self.normalization = normalization
        self.propagation = propagation

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        incoming = adjacency.transpose(1, 2) if self.propagation == "source_to_target" else adjacency
        if self.normalization == "row":
            incoming = incoming / incoming.abs().sum(dim=-1, keepdim=True).clamp(min=1e-6)
        out = F.relu(incoming @ self.linear(h) + self.bias)
        return out * node_mask[..., None]


class TemporalMotionGraph(nn.Module):
    """The ATM-GCN module: adjacency of Eqs. 3-8, then Adaptive-TM + TM-GCN layers.

    With ``adaptive=False`` (the ``no_atm`` ablation) every layer uses ``A~(0)``.

    Shapes: ``forward(h0 (B, N, in_dim), node_mask (B, N) bool, global_node (B,)) -> (B, N, dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_layers: int,
        max_nodes: int,
        *,
        window: int,
        tau: float,
        lambda_local: float,
        lambda_global: float,
        adaptive: bool,
        keep_sparsity: bool,
        learn_forget_rate: bool,
        forget_rate: float,
        recompute_adjacency: bool,
        normalization: str,
        propagation: str,
    ):
        super().__init__()
        self.window, self.tau = window, tau
        self.lambda_local, self.lambda_global = lambda_local, lambda_global
        self.recompute_adjacency = recompute_adjacency
        self.layers = nn.ModuleList(
            TemporalMotionGCNLayer(in_dim if k == 0 else dim, dim, normalization, propagation) for k in range(num_layers)
        )
        self.adaptive = (
            nn.ModuleList(
                AdaptiveTemporalMotion(max_nodes, forget_rate, learn_forget_rate, keep_sparsity) for _ in range(num_layers)
            )
            if adaptive
            else None
        )

    def adjacency(self, h: torch.Tensor, node_mask: torch.Tensor, global_node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`build_adjacency` with this module's w, tau and lambdas."""
        return build_adjacency(h, node_mask, global_node, self.window, self.tau, self.lambda_local, self.lambda_global)

    def forward(self, h0: torch.Tensor, node_mask: torch.Tensor, global_node: torch.Tensor) -> torch.Tensor:
        initial, edge_mask = self.adjacency(h0, node_mask, global_node)
        adjacency, h = initial, h0
        for k, layer in enumerate(self.layers):
            if self.adaptive is not None:
                source = self.adjacency(h, node_mask, global_node)[0] if self.recompute_adjacency and k > 0 else adjacency
                adjacency = self.adaptive[k](source, initial, edge_mask, node_mask)
            h = layer(h, adjacency, node_mask)
        return h


# --------------------------------------------------------------------------- encoder and classifier


def _sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` Transformer sinusoidal code of positions 0 .. length-1."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class WarmStartBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose running statistics start from the first training batch, not from (0, 1).

    The stem normalises raw frame differences whose variance is ~1e-5. Standard running
    statistics start at variance 1 and forget it by (1 - momentum) per step, so after the few
    dozen steps of a small-data run eval-mode BN still divides by roughly ``sqrt(0.9 ** steps)``
    instead of the true ~3e-3, and eval outputs are wrong while train-mode outputs are right.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats and int(self.num_batches_tracked) == 0:
            with torch.no_grad():
                self.running_mean.copy_(x.mean(dim=(0, 2, 3)))
                self.running_var.copy_(x.var(dim=(0, 2, 3)))
        return super().forward(x)


class MotionEncoder(nn.Module):
    """Motion encoder M (Eq. 2): stem + T(i) -> CA stack -> grid pooling -> linear.

    Shapes: ``forward(images (M, C, H, W), positions (M,) long in [1, num_frames))`` returns
    ``(features (M, feature_dim), attention_maps)`` with one ``(M, 1, H_k, W_k)`` map per CA block.
    """

    def __init__(
        self,
        in_channels: int,
        stem_channels: int,
        stem_stride: int,
        ca_channels: Sequence[int],
        pool_grid: int,
        feature_dim: int,
        temporal_encoding: str,
        num_frames: int,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=stem_stride, padding=1, bias=False),
            WarmStartBatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.temporal_encoding = temporal_encoding
        if temporal_encoding == "learned":
            self.position_embedding = nn.Embedding(num_frames, stem_channels)
            nn.init.normal_(self.position_embedding.weight, std=0.02)
        elif temporal_encoding == "sinusoidal":
            self.register_buffer("position_table", _sinusoidal_table(num_frames, stem_channels), persistent=False)
        self.blocks = ContinuousAttentionStack(stem_channels, ca_channels)
        self.pool_grid = pool_grid
        self.head = nn.Linear(self.blocks.out_channels * pool_grid * pool_grid, feature_dim)

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(images)
        if self.temporal_encoding == "learned":
            x = x + self.position_embedding(positions)[:, :, None, None]
        elif self.temporal_encoding == "sinusoidal":
            x = x + self.position_table[positions][:, :, None, None]
        x, maps = self.blocks(x)
        pooled = F.adaptive_avg_pool2d(x, self.pool_grid).flatten(1)
        return self.head(pooled), maps


def masked_pool(h: torch.Tensor, node_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean or max of ``h (B, N, D)`` over the nodes where ``node_mask (B, N)`` is True -> ``(B, D)``."""
    if pooling == "max":
        return h.masked_fill(~node_mask[..., None], float("-inf")).amax(dim=1)
    weights = node_mask.to(h.dtype)[..., None]
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AttentionPoolingClassifier(nn.Module):
    """Eq. 11: self-attention over nodes (optional) -> masked pooling -> dropout -> FC.

    Shapes: ``forward(h (B, N, dim), node_mask (B, N) bool) -> logits (B, num_classes)``.
    """

    def __init__(self, dim: int, num_classes: int, heads: int, pooling: str, dropout: float, use_attention: bool = True):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True) if use_attention else None
        self.norm = nn.LayerNorm(dim) if use_attention else None
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            normed = self.norm(h)
            attended, _ = self.attention(normed, normed, normed, key_padding_mask=~node_mask, need_weights=False)
            h = h + attended
        return self.fc(self.dropout(masked_pool(h, node_mask, self.pooling)))


# --------------------------------------------------------------------------- the model


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    check_choice(f"atm-gcn: {name}", value, choices)


@register("atm-gcn", "ATM-GCN: onset-paired motion, CA encoder, adaptive temporal-motion GCN (paper 001)")
class ATMGCN(MERModel):
    """ATM-GCN (see the module docstring for the method and every choice made).

    Input: ``views["frames"]`` ``(B, T, C, H, W)`` with ``2 <= T <= num_frames``, frame 0 the
    onset (with ``motion_input="flow"``: ``views["flow_seq"]`` ``(B, T, 3, H, W)``, entry t the
    onset -> frame t flow u, v, strain; the ``no_motion`` variant always reads ``frames``);
    optional ``views["frame_mask"]`` ``(B, T)`` bool and ``views["apex_index"]`` ``(B,)`` long.

    Output: a dict with ``logits (B, K)``, ``attention_maps (B, T-1, H_1, W_1)`` (the first CA
    block's map for every pair, 0 for padding), ``node_mask (B, T-1)`` and ``global_node (B,)``
    (index of the apex pair's node, i.e. frame ``global_node + 1``).

    Args:
        num_classes: K.
        variant: ``"full"``, ``"no_gcn"``, ``"no_motion"`` or ``"no_atm"``.
        num_frames: T of the ``frames`` view (the most frames a clip may have).
        image_size: (H, W) or one int for square frames.
        in_channels: 1 (grey) or 3 (RGB) frames.
        motion_input: what a pair's motion is: ``"difference"`` (the paper: ``f_i - f_onset``) or
            ``"flow"`` (not in the paper: the onset -> f_i optical flow and strain of the
            ``flow_seq`` view, for training sets too small to learn motion from differences).
        stem_channels, stem_stride: the stem convolution.
        ca_channels: output width of each CA block (its length is the number of CA blocks).
        pool_grid: the last CA map is average-pooled to ``pool_grid x pool_grid`` before the head.
        feature_dim: N_m, the motion feature size.
        temporal_encoding: ``"learned"``, ``"sinusoidal"`` or ``"none"``.
        window: w (Eq. 3). tau: temporal decay (Eq. 7).
        lambda_local, lambda_global: Eq. 8 reweighting, ``0 <= lambda_local < lambda_global``.
        gcn_layers: number of (Adaptive-TM +) TM-GCN layers. gcn_dim: their width.
        keep_sparsity, learn_forget_rate, forget_rate, recompute_adjacency: Adaptive-TM options.
        adjacency_normalization: ``"row"`` or ``"none"``.
        propagation: ``"source_to_target"`` or ``"target_to_source"``.
        attention_heads: heads of the classifier's self-attention (must divide gcn_dim).
        pooling: ``"mean"`` or ``"max"``. dropout: before the final FC.
        apex_rule: global node when no ``apex_index`` is given: ``"max_motion"`` or ``"middle"``.
        focal_alpha: None, one float or K per-class floats. focal_gamma: focusing parameter.

    Raises:
        ConfigError: an option out of range or not among its choices.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        variant: str = "full",
        num_frames: int = 16,
        image_size: int | Sequence[int] = 224,
        in_channels: int = 3,
        motion_input: str = "difference",
        stem_channels: int = 64,
        stem_stride: int = 2,
        ca_channels: Sequence[int] = (64, 128, 256, 512),
        pool_grid: int = 1,
        feature_dim: int = 512,
        temporal_encoding: str = "learned",
        window: int = 2,
        tau: float = 10.0,
        lambda_local: float = 1.0,
        lambda_global: float = 2.0,
        gcn_layers: int = 4,
        gcn_dim: int = 512,
        keep_sparsity: bool = True,
        learn_forget_rate: bool = True,
        forget_rate: float = 0.5,
        recompute_adjacency: bool = False,
        adjacency_normalization: str = "row",
        propagation: str = "source_to_target",
        attention_heads: int = 4,
        pooling: str = "mean",
        dropout: float = 0.0,
        apex_rule: str = "max_motion",
        focal_alpha: float | Sequence[float] | None = None,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        _check_choice("temporal_encoding", temporal_encoding, _TEMPORAL_ENCODINGS)
        _check_choice("adjacency_normalization", adjacency_normalization, _NORMALIZATIONS)
        _check_choice("propagation", propagation, _PROPAGATIONS)
        _check_choice("pooling", pooling, _POOLINGS)
        _check_choice("apex_rule", apex_rule, _APEX_RULES)
        (spec,) = self.input_spec_from({"variant": variant, "num_frames": num_frames, "image_size": image_size,
                                         "in_channels": in_channels, "motion_input": motion_input})
        if window < 1 or tau <= 0 or gcn_layers < 1 or pool_grid < 1 or stem_stride < 1:
            raise ConfigError(
                f"atm-gcn: need window >= 1, tau > 0, gcn_layers >= 1, pool_grid >= 1, stem_stride >= 1; "
                f"got window={window}, tau={tau}, gcn_layers={gcn_layers}, pool_grid={pool_grid}, stem_stride={stem_stride}"
            )
        if not 0 <= lambda_local < lambda_global:
            raise ConfigError(f"atm-gcn: Eq. 8 needs 0 <= lambda_local < lambda_global, got {lambda_local} and {lambda_global}")
        if variant != "no_gcn" and gcn_dim % attention_heads:
            raise ConfigError(f"atm-gcn: attention_heads ({attention_heads}) must divide gcn_dim ({gcn_dim})")
        if focal_alpha is not None and not isinstance(focal_alpha, (int, float)) and len(focal_alpha) != num_classes:
            raise ConfigError(f"atm-gcn: focal_alpha has {len(focal_alpha)} class weights for {num_classes} classes")

        self.variant = variant
        self.num_frames = num_frames
        self.image_size = spec.size
        self.apex_rule = apex_rule
        self.uses_flow = spec.name == "flow_seq"
        self.view_name = spec.name
        self.view_channels = spec.channels
        self.input_spec = (spec,)
        self.encoder = MotionEncoder(
            self.view_channels, stem_channels, stem_stride, ca_channels, pool_grid, feature_dim, temporal_encoding, num_frames
        )
        self.graph = None
        if variant != "no_gcn":
            self.graph = TemporalMotionGraph(
                feature_dim,
                gcn_dim,
                gcn_layers,
                num_frames - 1,
                window=window,
                tau=tau,
                lambda_local=lambda_local,
                lambda_global=lambda_global,
                adaptive=variant != "no_atm",
                keep_sparsity=keep_sparsity,
                learn_forget_rate=learn_forget_rate,
                forget_rate=forget_rate,
                recompute_adjacency=recompute_adjacency,
                normalization=adjacency_normalization,
                propagation=propagation,
            )
        classifier_dim = feature_dim if self.graph is None else gcn_dim
        self.classifier = AttentionPoolingClassifier(
            classifier_dim, num_classes, attention_heads, pooling, dropout, use_attention=self.graph is not None
        )
        self.focal_loss = FocalLoss(focal_alpha, focal_gamma)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """One sequence view of ``num_frames``: ``flow_seq`` (``motion_input="flow"``, except for
        the ``no_motion`` variant) or ``frames``."""
        _check_choice("variant", options["variant"], VARIANTS)
        _check_choice("motion_input", options["motion_input"], _MOTION_INPUTS)
        image_size, num_frames = options["image_size"], options["num_frames"]
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ConfigError(f"atm-gcn: image_size must be one int or (H, W), got {image_size!r}")
        if num_frames < 2:
            raise ConfigError(f"atm-gcn: num_frames must be >= 2 (onset + one pair), got {num_frames}")
        flow = options["motion_input"] == "flow" and options["variant"] != "no_motion"
        return (ViewSpec("flow_seq" if flow else "frames", size=size, channels=3 if flow else options["in_channels"],
                         length=num_frames),)

    def classifier_keys(self) -> list[str]:
        """The classifier's final fully connected layer."""
        return ["classifier.fc.weight", "classifier.fc.bias"]

    # ----------------------------------------------------------------------- inputs

    def _sequence_and_mask(self, views: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The input view ``(B, T, C, H, W)`` and the frame mask ``(B, T)``, validated."""
        name = self.view_name
        if name not in views:
            raise ModelInputError(f"atm-gcn needs the {name!r} view, got views {sorted(views)}")
        frames = views[name]
        expected = (self.view_channels, *self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != expected or not 2 <= frames.shape[1] <= self.num_frames:
            raise ModelInputError(
                f"atm-gcn: {name!r} must be (B, T, {expected[0]}, {expected[1]}, {expected[2]}) with 2 <= T <= "
                f"{self.num_frames}, got {tuple(frames.shape)}"
            )
        batch, length = frames.shape[:2]
        frame_mask = views.get("frame_mask")
        if frame_mask is None:
            frame_mask = torch.ones(batch, length, dtype=torch.bool, device=frames.device)
        else:
            frame_mask = frame_mask.to(torch.bool)
            if tuple(frame_mask.shape) != (batch, length):
                raise ModelInputError(f"atm-gcn: 'frame_mask' must be ({batch}, {length}), got {tuple(frame_mask.shape)}")
            bad = (~frame_mask[:, 0]) | (frame_mask[:, 1:].sum(dim=1) < 1)
            if bad.any():
                raise ModelInputError(
                    f"atm-gcn: clips {bad.nonzero().flatten().tolist()} of the batch need a real onset frame "
                    "(frame_mask[:, 0]) and at least one more real frame"
                )
        return frames, frame_mask

    def _global_node(self, views: dict[str, torch.Tensor], motion: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """Index of the apex pair's node ``(B,)``; ``motion (B, N, C, H, W)`` serves the max_motion rule."""
        batch, num_nodes = node_mask.shape
        apex_index = views.get("apex_index")
        if apex_index is not None:
            apex_index = apex_index.reshape(-1).long().to(node_mask.device)
            if apex_index.numel() != batch or (apex_index < 0).any() or (apex_index > num_nodes).any():
                raise ModelInputError(
                    f"atm-gcn: 'apex_index' must be ({batch},) positions in [0, {num_nodes}], got {apex_index.tolist()}"
                )
            global_node = (apex_index - 1).clamp(min=0)
            on_padding = ~node_mask.gather(1, global_node[:, None]).squeeze(1)
            if on_padding.any():
                raise ModelInputError(
                    f"atm-gcn: 'apex_index' of clips {on_padding.nonzero().flatten().tolist()} points at padding frames"
                )
            return global_node
        if self.apex_rule == "max_motion":
            energy = motion.abs().flatten(2).mean(dim=2)
            return energy.masked_fill(~node_mask, float("-inf")).argmax(dim=1)
        real_first = torch.argsort((~node_mask).to(torch.int8), dim=1, stable=True)
        middle = (node_mask.sum(dim=1) - 1) // 2
        return real_first.gather(1, middle[:, None]).squeeze(1)

    # ----------------------------------------------------------------------- forward and loss

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sequence, frame_mask = self._sequence_and_mask(views)
        batch, length = sequence.shape[:2]
        node_mask = frame_mask[:, 1:]
        motion = sequence[:, 1:] if self.uses_flow else sequence[:, 1:] - sequence[:, :1]
        node_inputs = sequence[:, 1:] if self.variant == "no_motion" else motion
        positions = torch.arange(1, length, device=sequence.device).expand(batch, -1)
        encoded, maps = self.encoder(node_inputs[node_mask], positions[node_mask])
        node_features = encoded.new_zeros(batch, length - 1, encoded.shape[1])
        node_features[node_mask] = encoded
        first_map = maps[0][:, 0]
        attention_maps = first_map.new_zeros(batch, length - 1, *first_map.shape[1:])
        attention_maps[node_mask] = first_map
        global_node = self._global_node(views, motion, node_mask)
        h = node_features if self.graph is None else self.graph(node_features, node_mask, global_node)
        return {
            "logits": self.classifier(h, node_mask),
            "attention_maps": attention_maps,
            "node_mask": node_mask,
            "global_node": global_node,
        }

    def loss(self, output: dict[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Focal loss (``focal_alpha``, ``focal_gamma``) of the logits against ``target (B,)``."""
        return self.focal_loss(logits_of(output), target)

