"""Multi-scale retention and the RetNet block (Sun et al., "Retentive Network", 2023).

Retention (TSFmicro Eq. 2, RetNet Eq. 1-6) replaces softmax attention by a decayed,
position-rotated linear kernel. For one head with decay rate ``gamma``::

    o_n = sum_m D_nm (Q_n e^{i n theta}) (K_m e^{i m theta})^dagger V_m

The complex rotation ``e^{i n theta}`` is implemented in real arithmetic as a rotary embedding
(pairs of channels rotated by ``n * theta_j``, ``theta_j = 10000^{-j/(d/2 - 1)}``, the RetNet /
torchscale choice), so ``Q_n . K_m`` depends on ``n - m`` only. Two decay masks ``D`` are offered:

* ``"causal-1d"`` (default; what the TSFmicro text and Eq. 2 describe): tokens form a 1-D
  sequence (raster order of the token grid) and ``D_nm = gamma^(n - m)`` for ``n >= m``, else 0.
  This mode has three equivalent computation forms: *parallel* ``(Q K^T * D) V`` (training),
  *recurrent* ``S_n = gamma S_{n-1} + K_n^T V_n, o_n = Q_n S_n`` (inference, O(1) memory per
  step) and *chunkwise* (parallel inside chunks, recurrent across them).
* ``"manhattan-2d"`` (what the authors' public code does, following RMT, Fan et al. CVPR 2024):
  non-causal, ``D_nm = gamma^(|x_n - x_m| + |y_n - y_m|)`` on the token grid. It has no
  recurrent form; asking for one raises :class:`~merkit.errors.ConfigError`. (RMT additionally
  puts a softmax over ``Q K^T + log D`` and a depth-wise-conv position term; merkit keeps the
  RetNet kernel, group norm and gate in both modes so that only the decay geometry differs.)

Per-head decay rates (``decay_schedule``): ``"retnet"`` ``gamma_h = 1 - 2^(-5-h)`` (RetNet) or
``"rmt"`` ``gamma_h = 1 - 2^(-2 - 4h/H)`` (RMT's stronger, more local decay).

The multi-scale retention layer follows RetNet: ``Y = GroupNorm_heads(Retention(X))``,
``MSR(X) = W_O (swish(X W_G) * Y)``; keys are scaled by ``d_k^-1/2``. RetNet's extra per-row
rescalings of ``D`` and of the scores are omitted: GroupNorm cancels per-row scales, and the
token counts here (<= a few hundred) do not need them for float32 range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.blocks.transformer import DropPath, FeedForward

RETENTION_MODES = ("causal-1d", "manhattan-2d")
RETENTION_FORMS = ("parallel", "recurrent", "chunkwise")
DECAY_SCHEDULES = ("retnet", "rmt")


def decay_rates(num_heads: int, schedule: str = "retnet") -> torch.Tensor:
    """Per-head decay rates ``gamma``, shape ``(H,)`` float32.

    Args:
        num_heads: ``H``.
        schedule: ``"retnet"`` (``1 - 2^(-5-h)``) or ``"rmt"`` (``1 - 2^(-2 - 4h/H)``).

    Raises:
        ConfigError: unknown schedule.
    """
    heads = torch.arange(num_heads, dtype=torch.float64)
    if schedule == "retnet":
        exponent = -5.0 - heads
    elif schedule == "rmt":
        exponent = -2.0 - 4.0 * heads / num_heads
    else:
        raise ConfigError(f"unknown decay schedule {schedule!r}; expected one of {DECAY_SCHEDULES}")
    return (1.0 - 2.0**exponent).float()


def causal_decay_mask(gammas: torch.Tensor, length: int) -> torch.Tensor:
    """Causal decay mask of Eq. 2: ``D[h, n, m] = gamma_h^(n-m)`` if ``n >= m`` else 0, ``(H, L, L)``."""
    index = torch.arange(length, device=gammas.device)
    distance = (index[:, None] - index[None, :]).to(gammas.dtype)  # (L, L)
    decay = gammas[:, None, None] ** distance.clamp(min=0)
    return decay * (distance >= 0)


def manhattan_decay_mask(gammas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Non-causal 2-D decay ``D[h, n, m] = gamma_h^(|x_n-x_m| + |y_n-y_m|)``, ``(H, L, L)``, ``L = h*w``.

    Tokens are numbered in raster order over the ``grid = (h, w)``.
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=gammas.device),
                                torch.arange(grid[1], device=gammas.device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    return gammas[:, None, None] ** distance.to(gammas.dtype)


def rotary_sin_cos(length: int, key_dim: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin(n theta)`` and ``cos(n theta)`` for positions ``n = 0..L-1``, each ``(L, d_k)``.

    ``theta`` holds ``d_k / 2`` frequencies ``10000^(-linspace(0, 1))``, each repeated for its
    channel pair.
    """
    if key_dim % 2:
        raise ConfigError(f"rotary position needs an even key dimension, got {key_dim}")
    theta = 1.0 / (10000.0 ** torch.linspace(0.0, 1.0, key_dim // 2, device=device, dtype=torch.float64))
    angles = torch.arange(length, device=device, dtype=torch.float64)[:, None] * theta.repeat_interleave(2)
    return angles.sin().to(dtype), angles.cos().to(dtype)


def rotate_pairs(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x_2j, x_2j+1)`` of ``x (..., L, d)`` by the angles behind ``sin, cos (L, d)``.

    This is ``x * e^{i n theta}`` with the pair read as a complex number.
    """
    pairs = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + pairs * sin


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay_mask: torch.Tensor) -> torch.Tensor:
    """Parallel retention ``(Q K^T * D) V``.

    Args:
        q, k: ``(B, H, L, d_k)``, already rotated (and ``k`` scaled).
        v: ``(B, H, L, d_v)``.
        decay_mask: ``(H, L, L)``.

    Returns:
        ``(B, H, L, d_v)``.
    """
    return (q @ k.transpose(-1, -2) * decay_mask) @ v


def retention_step(q_n: torch.Tensor, k_n: torch.Tensor, v_n: torch.Tensor, state: torch.Tensor,
                   gammas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: ``S_n = gamma S_{n-1} + K_n^T V_n``, ``o_n = Q_n S_n``.

    Args:
        q_n, k_n: ``(B, H, d_k)`` for position ``n`` (rotated by ``n theta``).
        v_n: ``(B, H, d_v)``.
        state: ``S_{n-1}``, ``(B, H, d_k, d_v)`` (zeros before the first token).
        gammas: ``(H,)``.

    Returns:
        ``o_n (B, H, d_v)`` and the new state ``S_n``.
    """
    state = gammas[None, :, None, None] * state + k_n[..., :, None] * v_n[..., None, :]
    return (q_n[..., None, :] @ state).squeeze(-2), state


def retention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """Causal retention token by token with :func:`retention_step`; same shapes as :func:`retention_parallel`."""
    batch, heads, length, key_dim = q.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    outputs = []
    for n in range(length):
        out, state = retention_step(q[:, :, n], k[:, :, n], v[:, :, n], state, gammas)
        outputs.append(out)
    return torch.stack(outputs, dim=2)


def retention_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gammas: torch.Tensor,
                        chunk_size: int) -> torch.Tensor:
    """Causal retention in chunks of ``chunk_size`` tokens (RetNet Eq. 7).

    Inside a chunk: parallel form; across chunks: the state ``R_i = K_[i]^T (V_[i] * zeta) +
    gamma^B R_{i-1}`` carries the past, read with ``(Q_[i] R_{i-1}) * xi``, ``xi_j = gamma^(j+1)``.
    Same shapes as :func:`retention_parallel`.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1, got {chunk_size}")
    batch, heads, length, key_dim = q.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    gamma = gammas[None, :, None, None]
    outputs = []
    for start in range(0, length, chunk_size):
        q_chunk, k_chunk, v_chunk = (t[:, :, start:start + chunk_size] for t in (q, k, v))
        size = q_chunk.shape[2]
        offsets = torch.arange(size, device=q.device, dtype=q.dtype)[None, None, :, None]  # (1, 1, c, 1)
        inner = retention_parallel(q_chunk, k_chunk, v_chunk, causal_decay_mask(gammas, size))
        cross = (q_chunk @ state) * gamma ** (offsets + 1)
        outputs.append(inner + cross)
        state = gamma**size * state + (k_chunk * gamma ** (size - 1 - offsets)).transpose(-1, -2) @ v_chunk
    return torch.cat(outputs, dim=2)


class MultiScaleRetention(nn.Module):
    """RetNet multi-scale retention: ``(B, L, D) -> (B, L, D)``.

    Args:
        dim: token width ``D``; divisible by ``num_heads`` with an even per-head key width.
        num_heads: ``H``; head ``h`` uses decay rate ``gamma_h``.
        mode: ``"causal-1d"`` or ``"manhattan-2d"`` (see module docstring).
        decay_schedule: ``"retnet"`` or ``"rmt"``.
        value_factor: per-head value width is ``value_factor * D / H`` (RetNet uses 2, RMT 1).

    Raises:
        ConfigError: inconsistent widths or unknown mode/schedule.
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "causal-1d", decay_schedule: str = "retnet",
                 value_factor: int = 1):
        super().__init__()
        check_choice("retention mode", mode, RETENTION_MODES)
        if dim % num_heads or (dim // num_heads) % 2:
            raise ConfigError(f"retention: dim {dim} must split into {num_heads} heads of even width")
        self.mode = mode
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.value_dim = self.key_dim * value_factor
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, num_heads * self.value_dim)
        self.gate_proj = nn.Linear(dim, num_heads * self.value_dim)
        self.out_proj = nn.Linear(num_heads * self.value_dim, dim)
        self.group_norm = nn.GroupNorm(num_heads, num_heads * self.value_dim, eps=1e-6)
        self.register_buffer("gammas", decay_rates(num_heads, decay_schedule), persistent=False)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.gate_proj):
            nn.init.xavier_uniform_(projection.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.out_proj):
            nn.init.zeros_(projection.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, form: str = "parallel",
                chunk_size: int = 64) -> torch.Tensor:
        """``x``: ``(B, L, D)`` tokens in raster order of ``grid = (h, w)`` -> ``(B, L, D)``.

        Args:
            grid: token grid, needed by ``"manhattan-2d"``.
            form: ``"parallel"``, ``"recurrent"`` or ``"chunkwise"`` (the last two: causal-1d only).
            chunk_size: tokens per chunk of the chunkwise form.

        Raises:
            ConfigError: unknown form, or a recurrent/chunkwise form for ``"manhattan-2d"``.
        """
        check_retention_form(self.mode, form)
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_heads, self.key_dim).transpose(1, 2) * self.key_dim**-0.5
        v = self.v_proj(x).view(batch, length, self.num_heads, self.value_dim).transpose(1, 2)
        sin, cos = rotary_sin_cos(length, self.key_dim, device=x.device, dtype=x.dtype)
        q, k = rotate_pairs(q, sin, cos), rotate_pairs(k, sin, cos)
        gammas = self.gammas.to(x.dtype)
        if form == "parallel":
            retained = retention_parallel(q, k, v, self._decay_mask(gammas, length, grid))
        elif form == "recurrent":
            retained = retention_recurrent(q, k, v, gammas)
        else:
            retained = retention_chunkwise(q, k, v, gammas, chunk_size)
        retained = retained.transpose(1, 2).reshape(batch * length, -1)  # (B*L, H*d_v)
        retained = self.group_norm(retained).view(batch, length, -1)
        return self.out_proj(F.silu(self.gate_proj(x)) * retained)

    def _decay_mask(self, gammas: torch.Tensor, length: int, grid: tuple[int, int] | None) -> torch.Tensor:
        """This layer's ``D``, ``(H, L, L)``."""
        if self.mode == "causal-1d":
            return causal_decay_mask(gammas, length)
        if grid is None or grid[0] * grid[1] != length:
            raise ModelInputError(f"manhattan-2d retention needs the token grid of its {length} tokens, got {grid}")
        return manhattan_decay_mask(gammas, grid)


def check_retention_form(mode: str, form: str) -> None:
    """Raise :class:`ConfigError` unless ``form`` exists for retention ``mode``."""
    check_choice("retention form", form, RETENTION_FORMS)
    if mode == "manhattan-2d" and form != "parallel":
        raise ConfigError(
            f"retention form {form!r} exists only for causal-1d retention; manhattan-2d decay is "
            "non-causal and has only the parallel form")


class RetNetBlock(nn.Module):
    """RetNet layer: ``x = x + MSR(LN(x)); x = x + FFN(LN(x))``, ``(B, L, D) -> (B, L, D)``.

    Args:
        dim, num_heads, mode, decay_schedule, value_factor: see :class:`MultiScaleRetention`.
        mlp_ratio: FFN hidden width is ``mlp_ratio * D``.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 3.0, mode: str = "causal-1d",
                 decay_schedule: str = "retnet", value_factor: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.retention = MultiScaleRetention(dim, num_heads, mode, decay_schedule, value_factor)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, form: str = "parallel",
                chunk_size: int = 64) -> torch.Tensor:
        x = x + self.drop_path(self.retention(self.norm1(x), grid, form, chunk_size))
        return x + self.drop_path(self.ffn(self.norm2(x)))
