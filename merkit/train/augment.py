"""Training-time augmentation on batched views, the same transform for every view of a sample.

Image-like views have their spatial axes last: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; the
facial-region arrangement ``flow_regions`` is never flipped or shifted (its regions would trade places).
Flips of flow views change the sign of the matching flow component (u for horizontal flips,
v for vertical ones): a mirrored face moves the other way. Strain is unchanged by flips.
Random draws come from a CPU generator whatever the views' device (the same seed gives the
same augmentation on every device); what they decide is moved to the views' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from merkit.config import AugmentConfig
from merkit.views import AUGMENTED_VIEWS, FLOW_VIEWS, INTENSITY_VIEWS, VIEWS


def _flip_sign(name: str, view: torch.Tensor, component: int, mask: torch.Tensor) -> torch.Tensor:
    """Negate flow component ``component`` (0 = u, 1 = v) of the samples in ``mask``."""
    if name not in FLOW_VIEWS:
        return view
    sign = torch.ones_like(view)
    channel = (slice(None),) * (view.dim() - 3) + (component,)
    index = (_on(mask, view),) + channel[1:]
    sign[index] = -1.0
    return view * sign


def augment_batch(views: dict[str, torch.Tensor], config: AugmentConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Return augmented copies of ``views`` (a batch); non-spatial views pass through.

    Args:
        views: view name -> batched tensor.
        config: which augmentations and how strong.
        generator: the torch RNG driving every random choice (one seed -> same batches).
    """
    out = dict(views)
    names = [n for n in out if n in AUGMENTED_VIEWS]
    if not names:
        return out
    batch = out[names[0]].shape[0]
    for flip, component, axis in ((config.hflip, 0, -1), (config.vflip, 1, -2)):
        if not flip:
            continue
        mask = torch.rand(batch, generator=generator) < 0.5
        if mask.any():
            _flip(out, names, mask, component, axis)
    pad = max(config.random_crop, config.shift)
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
        for name in names:
            out[name] = _shift(out[name], offsets, pad)
    if config.color_jitter > 0:
        gain = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * config.color_jitter
        bias = (torch.rand(batch, generator=generator) * 2 - 1) * config.color_jitter * 0.5
        for name in out:
            if name in INTENSITY_VIEWS:
                shape = (batch,) + (1,) * (out[name].dim() - 1)
                out[name] = (out[name] * _on(gain, out[name]).view(shape) + _on(bias, out[name]).view(shape)).clamp(0, 1)
            elif name in VIEWS and VIEWS[name].content == "difference":
                out[name] = out[name] * _on(gain, out[name]).view((batch,) + (1,) * (out[name].dim() - 1))
    return out


def mirror_views(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every sample of a batch mirrored left to right, as a training-time horizontal flip mirrors
    it (flow's u negated; views that are never augmented pass through)."""
    out = dict(views)
    names = [n for n in out if n in AUGMENTED_VIEWS]
    if names:
        _flip(out, names, torch.ones(out[names[0]].shape[0], dtype=torch.bool), component=0, axis=-1)
    return out


def _flip(views: dict[str, torch.Tensor], names: list[str], mask: torch.Tensor, component: int, axis: int) -> None:
    """Flip the samples in ``mask`` along ``axis`` in place of ``views`` (flow component negated)."""
    for name in names:
        view = views[name]
        flipped = torch.where(_bmask(mask, view), view.flip(axis), view)
        views[name] = _flip_sign(name, flipped, component, mask)


Copy = tuple[int, int, bool]


def offline_copies(config: AugmentConfig) -> list[Copy]:
    """The fixed copies of every training clip (paper 004's offline expansion), as
    ``(dy, dx, vflip)``: content translated by ``(dy, dx)`` pixels, then flipped upside down.

    The first copy is the clip itself; ``offline_shift = s`` adds ``(0, -s)``, ``(0, s)``,
    ``(-s, 0)``, ``(s, 0)`` (the face box moved right, left, down, up), ``offline_vflip`` adds
    ``(0, 0, True)``. Without either, the one copy ``(0, 0, False)``.
    """
    copies: list[Copy] = [(0, 0, False)]
    s = config.offline_shift
    if s > 0:
        copies += [(0, -s, False), (0, s, False), (-s, 0, False), (s, 0, False)]
    if config.offline_vflip:
        copies.append((0, 0, True))
    return copies


def apply_offline_copies(views: dict[str, torch.Tensor], copy_index: torch.Tensor, copies: list[Copy]) -> dict[str, torch.Tensor]:
    """Turn a batch of clips into the offline copies ``copies[copy_index[i]]`` of its samples.

    Args:
        views: view name -> batched tensor ``(B, ...)``.
        copy_index: ``(B,)`` index into ``copies`` per sample.
        copies: from :func:`offline_copies`.

    Returns:
        new views; translations replicate the border, the upside-down copy negates flow's v.
    """
    out = dict(views)
    names = [n for n in out if n in AUGMENTED_VIEWS]
    if not names or len(copies) == 1:
        return out
    offsets = torch.tensor([copies[int(c)][:2] for c in copy_index], dtype=torch.long)
    pad = int(offsets.abs().max())
    if pad > 0:
        for name in names:
            out[name] = _shift(out[name], pad - offsets, pad)
    upside_down = torch.tensor([copies[int(c)][2] for c in copy_index])
    if upside_down.any():
        _flip(out, names, upside_down, component=1, axis=-2)
    return out


def _bmask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _on(mask, like).view((-1,) + (1,) * (like.dim() - 1))


def _on(drawn: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor drawn on the CPU generator, on the device of the view it applies to."""
    return drawn.to(like.device)


def _shift(view: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by ``pad`` (replicate) and crop back at per-sample ``offsets`` (dy, dx)."""
    shape = view.shape
    flat = view.reshape(shape[0], -1, shape[-2], shape[-1])
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")
    h, w = shape[-2], shape[-1]
    crops = [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    return torch.stack(crops).reshape(shape)
