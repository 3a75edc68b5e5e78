"""MADV-Net training-step time and peak memory at the paper and reduced sizes.

Writes ``bench/results/madv_net.json``. Each measurement runs in a fresh process so that its
peak resident memory is its own. A training step is forward + Eq. 18 loss + backward + AdamW
step on random inputs shaped like the config's views (batch of ``--batch``).

* ``reduced``: ``merkit/configs/madv-net-cpu.yaml`` at its training batch (16).
* ``paper``: ``merkit/configs/madv-net-paper.yaml`` (16 x 112 x 112 RGB + depth + AU, CvT-13-sized
  texture and depth pyramids). On a CPU, batch 64 takes minutes per step, so the default measures
  batches 2 and 4 and extrapolates the time and memory linearly to the paper's batch 64 (marked
  ``extrapolated``); the FLOP count is exact (it is linear in the batch).

Step times are given as wall time and as process CPU time; on a shared machine the CPU time is
the steadier figure (the JSON records the 1-minute load average before and after). Memory: resident set before the first step (model, inputs) and its peak
over the warm-up and timed steps (activations, gradients, AdamW state). With ``--device cuda`` the paper's fp16 autocast is used and peak memory is
``torch.cuda.max_memory_allocated``.

Usage::

    python bench/madv_net.py                      # both sizes, 1 CPU thread
    python bench/madv_net.py --sizes reduced --steps 10
    python bench/madv_net.py --device cuda --sizes paper --batch 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "madv_net.json"
CONFIGS = {"reduced": "madv-net-cpu", "paper": "madv-net-paper"}
NUM_CLASSES = 5


def _random_views(model, batch: int):
    import torch

    views = {}
    for spec in model.input_spec:
        shape = spec.shape(model.num_aus) if spec.name == "au" else spec.shape()
        views[spec.name] = torch.rand(batch, *shape) if spec.name != "au" else 0.01 * torch.randn(batch, *shape)
    return views


def _current_rss_mb() -> float:
    """Resident memory of this process now (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(size: str, batch: int, steps: int, threads: int, device: str, amp: str | None) -> dict[str, Any]:
    """One measurement (run in a child process). Returns a JSON-able dict."""
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from merkit.config import load_config
    from merkit.models import create

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_config(CONFIGS[size])
    amp = amp if amp is not None else (config.train.amp if device == "cuda" else "none")
    model = create(config.model_name, num_classes=NUM_CLASSES, **config.model_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    views = {k: v.to(device) for k, v in _random_views(model, batch).items()}
    target = (torch.arange(batch) % NUM_CLASSES).to(device)
    dtype = torch.float16 if amp == "fp16" and device == "cuda" else torch.bfloat16

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=amp != "none"):
            output = model(views)
            loss = model.loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    load_before = os.getloadavg()[0]
    rss_before_mb = _current_rss_mb()
    with FlopCounterMode(display=False) as counter:  # also the warm-up step
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for _ in range(steps):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    result = {
        "size": size, "config": CONFIGS[size], "batch_size": batch, "device": device, "threads": threads, "amp": amp,
        "input_spec": {s.name: list(s.shape(model.num_aus) if s.name == "au" else s.shape()) for s in model.input_spec},
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops_per_step": counter.get_total_flops() / 1e9,
        "steps_timed": steps,
        "step_wall_s": {"median": statistics.median(wall), "min": min(wall)},
        "step_cpu_s": {"median": statistics.median(cpu), "min": min(cpu)},
        "rss_before_training_mb": rss_before_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _in_child(queue, *args) -> None:
    queue.put(measure(*args))


def run_isolated(*args, child=None) -> dict[str, Any]:
    """``child(queue, *args)`` (default: :func:`measure` of ``args``) in a fresh process; its result."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child or _in_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def extrapolate(small: dict[str, Any], large: dict[str, Any], batch: int) -> dict[str, Any]:
    """Linear fit of time and memory through two batch sizes, evaluated at ``batch``."""
    b0, b1 = small["batch_size"], large["batch_size"]

    def at(y0: float, y1: float) -> float:
        return y0 + (y1 - y0) * (batch - b0) / (b1 - b0)

    return {
        "batch_size": batch, "extrapolated": True, "from_batches": [b0, b1],
        "step_wall_s": at(small["step_wall_s"]["median"], large["step_wall_s"]["median"]),
        "step_cpu_s": at(small["step_cpu_s"]["median"], large["step_cpu_s"]["median"]),
        "peak_rss_mb": at(small["peak_rss_mb"], large["peak_rss_mb"]),
        "gflops_per_step": small["gflops_per_step"] * batch / b0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="reduced,paper", help="comma-separated: reduced, paper")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every size (default: 16 reduced; "
                        "paper 2 and 4 on CPU, extrapolated to 64; 64 on CUDA)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                        help="default: the config's on CUDA, none (fp32) on CPU")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    report: dict[str, Any] = {
        "model": "madv-net", "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor(), "device": args.device,
        "measurements": [], "paper_batch_64": None,
    }
    for size in args.sizes.split(","):
        if args.batch is not None:
            batches = [args.batch]
        elif size == "reduced":
            batches = [16]
        else:
            batches = [64] if args.device == "cuda" else [2, 4]
        results = [run_isolated(size, b, args.steps, args.threads, args.device, args.amp) for b in batches]
        report["measurements"].extend(results)
        if size == "paper" and len(results) == 2:
            report["paper_batch_64"] = extrapolate(results[0], results[1], 64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
