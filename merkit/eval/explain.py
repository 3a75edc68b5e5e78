"""What a model looks at: explanation maps and penultimate features.

One function, :func:`explain_views`, gives every model's explanation of one clip's views:

``atm-gcn``
    The continuous-attention (CA) map of the apex pair (the first CA block's map, which the
    model returns as ``attention_maps``; the later blocks multiply into it), and the graph's edge
    weights: the Eqs. 3-8 adjacency ``A~(0)`` and the adapted matrix each TM-GCN layer used.
``madv-net``
    Grad-CAM of the first stage's 3D token embedding (Eq. 2, before its max-pooling) of the
    video path, averaged over time; the depth frames of the ``depth_seq`` view and the AU activations of the ``au`` view
    (per-frame AU intensities relative to the onset).
``tsfmicro``, ``ms3d-resnet``, ``ststnet`` and any other convolutional model
    Grad-CAM (captum's ``LayerGradCam``) of the class score at a layer with a spatial map: the
    motion stem of TSFmicro, the stage-2 output of the 3D-ResNet (after RC1, which every output
    head depends on), STSTNet's concatenated stream maps, else the last convolution of the model.
``logreg`` (no convolution)
    Input x gradient of the class score, summed over channels (for a linear model: the class's
    weights times the input).

Maps are non-negative, resized to the views' (H, W) and averaged over the models of an
ensemble (each scaled to a maximum of 1 first).

:func:`penultimate_features` returns the input of the layer that produces the logits (found by
matching a linear layer's output with the logits, per sample: a model that picks its logits among
several heads gives each sample's chosen head's input).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch import nn

from merkit.models.registry import logits_of


@dataclass
class Explanation:
    """A model's explanation of one clip.

    Attributes:
        method: how ``heatmap`` was obtained (``grad-cam:<layer>``, ``ca-attention``, ...).
        heatmap: (H, W) float32 >= 0 at the views' size; where the model looked.
        background: (H, W) float32 in [0, 1], what ``heatmap`` is drawn over (the apex frame, or
            the flow magnitude for flow-only models).
        extras: further named arrays: ``edge weights A~(l)`` (N, N), ``depth frames`` (T, H, W),
            ``AU activations`` (T, A) ...
        extra_labels: tick labels for an extra's axes (e.g. AU names), by extra name.
    """

    method: str
    heatmap: np.ndarray
    background: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_labels: dict[str, list[str]] = field(default_factory=dict)


def _tensors(views: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.ascontiguousarray(array)).to(device) for name, array in views.items()}


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _view_size(views: dict[str, np.ndarray]) -> tuple[int, int]:
    for name in ("flow", "diff", "apex", "onset", "frames", "flow_seq", "depth_seq"):
        if name in views:
            return tuple(int(s) for s in np.asarray(views[name]).shape[-2:])
    raise ValueError(f"no image view among {sorted(views)}")


def background_of(views: dict[str, np.ndarray]) -> np.ndarray:
    """(H, W) in [0, 1]: the apex frame of the views (grey), else the flow magnitude."""
    def grey(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        return image.mean(axis=0) if image.ndim == 3 else image

    if "apex" in views:
        return np.clip(grey(views["apex"][0]), 0, 1)
    if "frames" in views:
        apex = int(np.asarray(views.get("apex_index", np.zeros(1)))[0]) if "apex_index" in views else -1
        return np.clip(grey(views["frames"][0][apex]), 0, 1)
    if "onset" in views:
        return np.clip(grey(views["onset"][0]), 0, 1)
    for name in ("flow", "flow_seq"):
        if name in views:
            flow = np.asarray(views[name][0], dtype=np.float32)
            if flow.ndim == 4:  # (T, 3, H, W): the frame that moved most
                flow = flow[int(np.argmax(np.abs(flow[:, :2]).mean(axis=(1, 2, 3))))]
            magnitude = np.hypot(flow[0], flow[1])
            return magnitude / max(float(magnitude.max()), 1e-12)
    size = _view_size(views)
    return np.zeros(size, dtype=np.float32)


def _resize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    return np.maximum(cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0.0)


def _split(views: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Names of the float (attributable) views and of the others (indices, masks)."""
    floats = [n for n, v in views.items() if v.is_floating_point()]
    return floats, [n for n in views if n not in floats]


def _forward(model: nn.Module, floats: list[str], others: list[str]) -> Callable[..., torch.Tensor]:
    def run(*tensors: torch.Tensor) -> torch.Tensor:
        views = dict(zip(floats + others, tensors))
        return logits_of(model(views))

    return run


def grad_cam(model: nn.Module, views: dict[str, np.ndarray], target: int, layer: nn.Module,
             layer_input: bool = False) -> np.ndarray:
    """Grad-CAM (captum ``LayerGradCam``, ReLU'd) of class ``target`` at ``layer``'s output (its
    input with ``layer_input``).

    Returns:
        (h, w) float32 at the layer's resolution; a (B, C, T, h, w) layer is averaged over T.
    """
    from captum.attr import LayerGradCam

    tensors = _tensors(views, _device(model))
    floats, others = _split(tensors)
    cam = LayerGradCam(_forward(model, floats, others), layer)
    with torch.enable_grad():
        attribution = cam.attribute(tuple(tensors[n] for n in floats), target=target,
                                    additional_forward_args=tuple(tensors[n] for n in others) or None,
                                    relu_attributions=True, attribute_to_layer_input=layer_input)
    heat = attribution.detach().float().cpu().numpy()[0, 0]
    return heat.mean(axis=0) if heat.ndim == 3 else heat


def input_x_gradient(model: nn.Module, views: dict[str, np.ndarray], target: int) -> np.ndarray:
    """|input x gradient| of class ``target``, summed over channels of the first image view, (H, W)."""
    from captum.attr import InputXGradient

    tensors = _tensors(views, _device(model))
    floats, others = _split(tensors)
    method = InputXGradient(_forward(model, floats, others))
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        attributions = method.attribute(tuple(tensors[n] for n in floats), target=target,
                                        additional_forward_args=tuple(tensors[n] for n in others) or None)
    first = attributions[0].detach().float().cpu().numpy()[0]
    first = first.reshape(-1, *first.shape[-2:])
    return np.abs(first.sum(axis=0))


def cam_layer(model: nn.Module, model_name: str) -> tuple[str, nn.Module, bool] | None:
    """``(description, layer, read the layer's input)`` for Grad-CAM on ``model`` (see the module
    docstring), or None for a model without convolutions."""
    if model_name == "tsfmicro" and hasattr(model, "stem"):
        return "motion stem", model.stem.layers, False
    if model_name == "tsfmicro":
        return "patch embedding", model.patch_embedding, False
    if model_name == "ms3d-resnet":
        return "stage 2 (RC1)", model.multiscale[0], False
    if model_name == "madv-net":  # before the embedding's max-pooling: twice the resolution
        encoder = next(iter(model.encoders.values()))
        return "stage-1 embedding", encoder.stages[0].embed.norm, False
    if model_name == "ststnet":
        return "stream maps", model.pool, True
    convolutions = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return (convolutions[-1][0], convolutions[-1][1], False) if convolutions else None


def _atm_gcn(model: nn.Module, views: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CA map of the apex pair and the graph's edge weights."""
    captured: dict[str, Any] = {"adapted": []}
    handles = []
    if model.graph is not None:
        handles.append(model.graph.register_forward_hook(
            lambda module, inputs, output: captured.__setitem__("graph_inputs", inputs)))
        for layer in model.graph.adaptive or []:
            handles.append(layer.register_forward_hook(
                lambda module, inputs, output: captured["adapted"].append(output.detach())))
    try:
        with torch.no_grad():
            output = model(_tensors(views, _device(model)))
    finally:
        for handle in handles:
            handle.remove()
    node = int(output["global_node"][0])
    heat = output["attention_maps"][0, node].float().cpu().numpy()
    extras: dict[str, np.ndarray] = {}
    if "graph_inputs" in captured:
        with torch.no_grad():
            initial, _ = model.graph.adjacency(*captured["graph_inputs"])
        extras["edge weights A~(0)"] = initial[0].float().cpu().numpy()
        for k, adapted in enumerate(captured["adapted"]):
            extras[f"edge weights A~({k + 1})"] = adapted[0].float().cpu().numpy()
    return heat, extras


def explain_views(models: Sequence[nn.Module], views: dict[str, np.ndarray], target: int,
                  model_name: str) -> Explanation:
    """The explanation of one clip's views (batch of one) for class ``target``.

    Args:
        models: one model or an ensemble's models (eval mode, same architecture).
        views: view name -> (1, ...) arrays, as the pipeline builds them.
        target: the class index to explain (usually the predicted class).
        model_name: the registry name (chooses the method, see the module docstring).
    """
    size = _view_size(views)
    heats, extras, method = [], {}, ""
    for model in models:
        model.eval()
        if model_name == "atm-gcn":
            heat, extras = _atm_gcn(model, views)
            method = "ca-attention (apex pair)"
        else:
            layer = cam_layer(model, model_name)
            if layer is None:
                heat, method = input_x_gradient(model, views, target), "input x gradient"
            else:
                heat, method = grad_cam(model, views, target, layer[1], layer[2]), f"grad-cam: {layer[0]}"
        heat = _resize(heat, size)
        heats.append(heat / max(float(heat.max()), 1e-12))
    if model_name == "madv-net":
        if "depth_seq" in views:
            extras["depth frames"] = np.asarray(views["depth_seq"][0][:, 0], dtype=np.float32)
        if "au" in views:
            extras["AU activations"] = np.asarray(views["au"][0], dtype=np.float32)
    labels = {}
    if "AU activations" in extras:
        from merkit.preprocess.au import AU_VOCAB

        labels["AU activations"] = [f"AU{code}" for code in AU_VOCAB]
    return Explanation(method=method, heatmap=np.mean(heats, axis=0).astype(np.float32),
                       background=background_of(views).astype(np.float32), extras=extras, extra_labels=labels)


def penultimate_features(model: nn.Module, views: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, F)`` inputs of the layer that produces the logits, for a batch of views.

    The model's classifier heads (the linear layers its ``classifier_keys`` name; any linear
    layer with K outputs for a model without them) are watched; for each sample, the one whose
    output equals the sample's logits gives its input (a model that picks
    its logits among several heads per sample gets each sample's chosen head). When no single
    head gives the logits (they mix several), the inputs of all of them are concatenated.
    """
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = []
    heads = {key.rsplit(".", 1)[0] for key in model.classifier_keys()} if hasattr(model, "classifier_keys") else None
    with torch.no_grad():
        logits_probe = None
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and (heads is None or name in heads):
                handles.append(module.register_forward_hook(
                    lambda m, inputs, output: captured.append((inputs[0].detach(), output.detach()))))
        try:
            logits_probe = logits_of(model(views))
        finally:
            for handle in handles:
                handle.remove()
    outputs = [(x.flatten(1), y) for x, y in captured if y.shape == logits_probe.shape]
    if not outputs:
        raise ValueError("the model has no linear layer that produces its logits")
    rows = []
    for b in range(logits_probe.shape[0]):  # per sample: the head whose output is the logits
        match = [x[b] for x, y in reversed(outputs) if torch.allclose(y[b], logits_probe[b])]
        rows.append(match[0] if match else None)
    if all(r is not None for r in rows) and len({r.numel() for r in rows}) == 1:
        return torch.stack(rows).float().cpu()
    return torch.cat([x for x, _ in outputs], dim=1).float().cpu()
