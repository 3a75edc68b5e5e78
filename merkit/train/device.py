"""Where a run computes: the device, mixed precision, determinism, and moving views there.

The device is a run setting (``train.device`` / ``--device``), never a code path of a model:
the trainer moves the model, the views and the labels of a fold to it once, and models create
their own tensors on the device of their inputs.

* ``auto`` picks the first CUDA GPU, else Apple's MPS, else the CPU; ``cuda`` is the current
  CUDA device, ``cuda:N`` the N-th; ``mps``; ``cpu``.
* Mixed precision (``train.amp``): ``none`` computes in float32; ``bf16`` autocasts to
  bfloat16 (CPU, MPS, and CUDA GPUs with native bfloat16: compute capability 8.0 or newer);
  ``fp16`` autocasts to float16 with a :class:`torch.amp.GradScaler` (CUDA and MPS only).
* Determinism (``train.deterministic`` / ``--deterministic``): cuDNN deterministic, no cuDNN
  benchmark, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and ``torch.use_deterministic_algorithms``;
  an op without a deterministic implementation then stops the run with torch's error naming
  it. CPU runs are deterministic either way (the same seed gives the same predictions).

Views that fit in device memory are moved there for a whole fold; larger ones stay in CPU
memory and are streamed batch by batch through page-locked (pinned) buffers.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from merkit.errors import ConfigError

Views = dict[str, torch.Tensor]

#: the ``train.device`` / ``--device`` values
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: share of the free CUDA memory a fold's views may take to stay on the device for the fold
RESIDENT_VIEWS_SHARE = 0.5
#: the cuBLAS setting that makes its kernels deterministic (CUDA documentation, "Results reproducibility")
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def resolve_device(setting: str | torch.device) -> torch.device:
    """The torch device of a ``--device`` setting.

    Args:
        setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or a :class:`torch.device`
            (taken as it is).

    Raises:
        ConfigError: an unknown setting, or a device this machine does not have.
    """
    if isinstance(setting, torch.device):
        return setting
    if not DEVICE_PATTERN.fullmatch(setting):
        raise ConfigError(f"device {setting!r}: expected auto, cpu, cuda, cuda:N or mps")
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {setting}: this machine has no CUDA GPU that torch {torch.__version__} can use "
                              "(use --device cpu or auto)")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {setting}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps: Apple's Metal backend is not available on this machine (use --device cpu or auto)")
    return device


def describe_device(device: torch.device) -> str:
    """``cpu``, ``mps``, or ``cuda:0 (NVIDIA A100-SXM4-80GB)``: what ``history.json`` records."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """The mixed-precision setting of a run on one device.

    Attributes:
        amp: ``none``, ``bf16`` or ``fp16`` (``train.amp``).
        device_type: ``cpu``, ``cuda``, ``mps`` ... (autocast works per device type).
    """

    amp: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: float32 throughout)."""
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh gradient scaler for ``fp16`` (float16 gradients underflow without one), else None."""
        return torch.amp.GradScaler(self.device_type) if self.amp == "fp16" else None


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The precision of ``train.amp`` on ``device``.

    Raises:
        ConfigError: ``fp16`` on a CPU, or ``bf16`` on a CUDA GPU without native bfloat16.
    """
    if amp == "fp16" and device.type not in ("cuda", "mps"):
        raise ConfigError(f"amp fp16 needs a CUDA or MPS device; this run computes on {device} "
                          "(use --amp bf16 or --amp none there)")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"amp bf16: {torch.cuda.get_device_name(device)} has no native bfloat16 "
                          "(compute capability 8.0 or newer); use --amp fp16 or --amp none")
    return Precision(amp, device.type)


def configure_determinism(deterministic: bool) -> dict:
    """Set torch's determinism flags when ``deterministic`` and return the flags now in effect.

    Without ``deterministic`` the process's flags are left as they are (torch's defaults unless
    the caller changed them). Set in every process that trains (folds in worker processes set
    them themselves).

    Returns:
        the record written to ``metrics.json`` under ``compute.determinism``.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    return {
        "requested": bool(deterministic),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def views_nbytes(views: Views) -> int:
    return sum(v.numel() * v.element_size() for v in views.values())


def place_views(views: Views, device: torch.device, *, max_bytes: int | None = None) -> Views:
    """The views of a fold ready for batching on ``device``.

    Views that fit (``max_bytes``; by default on CUDA :data:`RESIDENT_VIEWS_SHARE` of the free
    device memory, elsewhere no limit) are moved to ``device`` once and batches are then cut
    there; otherwise they stay where they are and :func:`take_batch` streams each batch.

    Args:
        views: view name -> ``(N, ...)`` tensors.
        device: where the fold computes.
        max_bytes: the most bytes of views kept on the device.
    """
    if all(v.device == device for v in views.values()):
        return views
    if max_bytes is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        max_bytes = int(RESIDENT_VIEWS_SHARE * free)
    if max_bytes is not None and views_nbytes(views) > max_bytes:
        return views
    return {name: view.to(device) for name, view in views.items()}


def take_batch(views: Views, index: torch.Tensor, device: torch.device) -> Views:
    """Rows ``index`` of every view, on ``device``.

    Rows of a view already on ``device`` are gathered there. Rows of a view held in CPU memory
    for a CUDA device are gathered into a pinned buffer and copied asynchronously (the copy
    overlaps the computation queued before it); for other devices they are copied plainly.

    Args:
        views: view name -> ``(N, ...)`` tensors (from :func:`place_views`).
        index: ``(B,)`` row indices (on any device).
        device: the device the batch is needed on.

    Returns:
        view name -> ``(B, ...)`` tensors on ``device``.
    """
    batch = {}
    rows_on_device = index.to(device) if any(view.device == device for view in views.values()) else None
    for name, view in views.items():
        if view.device == device:
            batch[name] = view.index_select(0, rows_on_device)  # several times faster than view[rows] on the CPU
        elif device.type == "cuda" and view.device.type == "cpu":
            rows = index.to("cpu")
            pinned = torch.empty((len(rows), *view.shape[1:]), dtype=view.dtype, pin_memory=True)
            torch.index_select(view, 0, rows, out=pinned)
            batch[name] = pinned.to(device, non_blocking=True)
        else:
            batch[name] = view.index_select(0, index.to(view.device)).to(device)
    return batch


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor on the CPU: a checkpoint any device can load."""
    return {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
