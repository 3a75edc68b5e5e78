"""Device check: training-step figures of the four paper configs, and the Ray overhead per fold.

One command (a few minutes); writes ``bench/results/device.json``.

**Paper configs** (``tsfmicro-paper``, ``atm-gcn-casme3``, ``ms3d-resnet-paper``,
``madv-net-paper``). Each runs in a fresh process (``bench/madv_net.py``'s ``run_isolated``: its
peak memory is its own) and trains with merkit's own training path: the model and a pool of
random views shaped by its input spec (``bench/madv_net.py``'s ``_random_views``) are placed on
the device (``merkit.train.device``),
each step takes a batch there (``take_batch``), augments it as the config says and runs
``merkit.train.trainer.train_step`` with the config's optimizer and precision.

* On a CUDA GPU: the config's batch size and ``amp`` (fp16 with its gradient scaler for
  MADV-Net), step time (synchronised), samples/s, peak GPU memory
  (``torch.cuda.max_memory_allocated``), and an estimate of one LOSO fold (a CASME II-sized
  training set of 230 clips times the config's epochs).
* On a CPU-only machine: batch 2 in float32 (fp16 autocast is GPU-only in merkit), one torch
  thread by default, step wall and CPU time (the steadier figure on a shared machine; the load
  average is recorded), samples/s and peak memory (peak resident set minus the resident set
  before the first step, as ``bench/ms3d_resnet.py`` and ``bench/madv_net.py`` measure it); the GPU-only figures are
  listed under ``skipped``. Those two scripts keep their own comparisons (full vs plain model,
  batch extrapolation, FLOPs); this one measures all four configs one way.

**Ray overhead** (``--ray``, on by default): the same LOSO run, STSTNet at its published size on
28 x 28 flow views of a SynthME set with the composite's shape (68 subjects, 442 clips; or the
real MEGC2019 composite with ``--root``), once with the local executor (one fold after another,
one thread) and once on a local Ray instance with one CPU (so also one fold at a time, one
thread). Overhead per fold = (Ray run - local run) / folds; starting the Ray instance is
reported apart. Few epochs (``--ray-epochs``) keep the training short so that the difference
is the executor's: a task, shipping the samples, a worker reading the views from the shared
cache, and returning the predictions.

Usage::

    python bench/device.py                       # everything (GPU figures when a GPU is there)
    python bench/device.py --no-ray --steps 3    # paper configs only
    python bench/device.py --configs none --root /data/MEGC2019   # Ray overhead on the real composite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import madv_net  # noqa: E402  (reuse: random views by input spec, resident memory, one process per case)

RESULTS = ROOT / "bench" / "results" / "device.json"
PAPER_CONFIGS = ["tsfmicro-paper", "atm-gcn-casme3", "ms3d-resnet-paper", "madv-net-paper"]
NUM_CLASSES = 5
FOLD_TRAINING_CLIPS = 230  # CASME II (255 clips, 26 subjects) minus a test subject
CPU_BATCH = 2
GPU_ONLY = ["peak GPU memory", "GPU step time and samples/s at the config's batch size",
            "the config's mixed precision (fp16 with GradScaler for madv-net-paper)", "one-fold time estimate on the GPU"]


def measure_config(name: str, device_setting: str, batch: int | None, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """Training-step figures of config ``name`` (run in a child process)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from merkit.config import load_config
    from merkit.models import create
    from merkit.train.augment import augment_batch
    from merkit.train.device import place_views, resolve_device, resolve_precision, take_batch
    from merkit.train.trainer import _optimizer, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_config(name)
    device = resolve_device(device_setting)
    on_gpu = device.type == "cuda"
    batch = batch or (config.train.batch_size if on_gpu else CPU_BATCH)
    amp = config.train.amp if on_gpu else "none"
    precision = resolve_precision(amp, device)
    model = create(config.model_name, num_classes=NUM_CLASSES, **config.model_kwargs).to(device).train()
    optimizer = _optimizer(model, config.train)
    scaler = precision.grad_scaler()
    pool = 2 * batch
    views = place_views(madv_net._random_views(model, pool), device)
    labels = (torch.arange(pool) % NUM_CLASSES).to(device)
    generator = torch.Generator().manual_seed(0)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    def step(number: int) -> None:
        index = torch.arange(number * batch, (number + 1) * batch) % pool
        views_batch = augment_batch(take_batch(views, index, device), config.train.augment, generator)
        train_step(model, views_batch, labels[index.to(device)], optimizer, precision, scaler, config.train.grad_clip)

    rss_before = madv_net._current_rss_mb()  # model, optimizer and views built; the steps' memory comes on top
    for number in range(warmup):
        step(number)
    sync()
    times, cpu_times = [], []
    for number in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(warmup + number)
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    step_s = statistics.median(times)
    result: dict[str, Any] = {
        "config": name, "model": config.model_name, "device": str(device), "amp": amp, "batch_size": batch,
        "threads": threads, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "input_spec": {s.name: list(s.shape(model.num_aus) if s.name == "au" else s.shape()) for s in model.input_spec},
        "steps_timed": steps, "warmup_steps": warmup,
        "step_s_median": round(step_s, 4), "step_s_all": [round(t, 4) for t in times],
        "step_cpu_s_median": round(statistics.median(cpu_times), 4), "samples_per_s": round(batch / step_s, 2),
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if on_gpu:
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name(device)
        steps_per_epoch = -(-FOLD_TRAINING_CLIPS // batch)
        result["fold_estimate_s"] = round(step_s * steps_per_epoch * config.train.epochs, 1)
        result["fold_estimate"] = f"{FOLD_TRAINING_CLIPS} training clips x {config.train.epochs} epochs"
    else:
        result["peak_increase_mib"] = round(result["peak_rss_mib"] - rss_before, 1)
        result["rss_before_steps_mib"] = round(rss_before, 1)
    return result


def _measure_in_child(queue, *args) -> None:
    try:
        queue.put(measure_config(*args))
    except Exception as err:  # reported in the JSON, the other configs still run
        queue.put({"config": args[0], "error": f"{type(err).__name__}: {err}"})


def ray_overhead(root: Path | None, epochs: int, subjects: int, clips: int) -> dict[str, Any]:
    """LOSO with the local executor and on a local one-CPU Ray instance; overhead per fold."""
    import ray
    import torch

    from merkit.config import load_config
    from merkit.data.protocols import apply_protocol, get_protocol
    from merkit.data.registry import load_dataset
    from merkit.data.synthetic import write_synthme
    from merkit.train.executors import LocalExecutor, RayExecutor
    from merkit.train.loso import run_loso

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="merkit-ray-bench-"))
    if root is not None:
        dataset, protocol = "megc2019-flow", get_protocol("megc2019-3")
        samples = apply_protocol(load_dataset(dataset, root).samples, protocol)
        overrides: dict[str, Any] = {}
    else:
        dataset, protocol = "synthme", get_protocol("casme2-5")
        start = time.perf_counter()
        data = write_synthme(work / "data", subjects=subjects, clips_per_subject=clips, seed=0, size=64, fps=100)
        print(f"SynthME {subjects} x {clips} clips written in {time.perf_counter() - start:.0f} s", flush=True)
        samples = apply_protocol(load_dataset("synthme", data).samples, protocol)
        overrides = {"views": {"flow": "dis"}}
    config = load_config("ststnet-megc2019-flow", {"train": {"epochs": epochs}, **overrides})
    cache = work / "cache"
    start = time.perf_counter()
    local = run_loso(samples, protocol, config, work / "warm", cache_dir=cache)  # fills the view cache
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    run_loso(samples, protocol, config, work / "local", cache_dir=cache, executor=LocalExecutor(1))
    local_s = time.perf_counter() - start
    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    on_ray = run_loso(samples, protocol, config, work / "ray", cache_dir=cache, executor=RayExecutor(cpus_per_fold=1))
    ray_s = time.perf_counter() - start
    ray.shutdown()
    folds = local["n_folds"]
    same = (work / "local" / "predictions.csv").read_bytes() == (work / "ray" / "predictions.csv").read_bytes()
    return {
        "dataset": dataset, "n_samples": local["n_samples"], "n_folds": folds, "config": "ststnet-megc2019-flow",
        "epochs": epochs, "first_run_with_views_s": round(warm_s, 2), "local_s": round(local_s, 2),
        "ray_init_s": round(init_s, 2), "ray_s": round(ray_s, 2),
        "overhead_per_fold_s": round((ray_s - local_s) / folds, 3), "target_per_fold_s": 1.0,
        "same_predictions": same, "uf1_local_ray": [local["uf1"], on_ray["uf1"]],
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(PAPER_CONFIGS), help="comma-separated config names, or none")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's on a GPU, 2 on a CPU")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the steadiest CPU figures)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray overhead measurement")
    parser.add_argument("--root", type=Path, default=None, help="MEGC2019 composite (megc2019-flow) for the Ray part")
    parser.add_argument("--ray-epochs", type=int, default=2)
    parser.add_argument("--ray-subjects", type=int, default=68)
    parser.add_argument("--ray-clips", type=int, default=6, help="clips per SynthME subject (68 x 6 = 408)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from merkit.train.device import resolve_device

    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "benchmark": "device check: paper-config training steps on the run's device; Ray overhead per fold",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "load_average_1min": os.getloadavg()[0]},
        "paper_configs": [], "skipped": [] if device.type == "cuda" else GPU_ONLY, "ray": None,
    }
    if device.type != "cuda":
        print(f"no CUDA GPU ({device}): measuring CPU step time and peak memory at batch {args.batch or CPU_BATCH}; "
              f"skipped: {'; '.join(GPU_ONLY)}", flush=True)
    for name in (c for c in args.configs.split(",") if c and c != "none"):
        # a fresh (spawned) process each: its own peak memory, and CUDA is not used after a fork
        result = madv_net.run_isolated(name, str(device), args.batch, args.steps, args.warmup, args.threads,
                                       child=_measure_in_child)
        report["paper_configs"].append(result)
        if "error" in result:
            print(f"{name:20s} failed: {result['error']}", flush=True)
            continue
        memory = (f"peak GPU {result['peak_gpu_mib']:.0f} MiB, fold ~{result['fold_estimate_s']:.0f} s"
                  if "peak_gpu_mib" in result else f"peak +{result['peak_increase_mib']:.0f} MiB (RSS {result['peak_rss_mib']:.0f} MiB)")
        print(f"{name:20s} {result['parameters_m']:6.1f} M  batch {result['batch_size']:3d} amp {result['amp']:4s}: "
              f"{result['step_s_median']:.3f} s/step ({result['step_cpu_s_median']:.3f} s CPU), "
              f"{result['samples_per_s']:.2f} samples/s, {memory}", flush=True)
    if not args.no_ray:
        report["ray"] = ray_overhead(args.root, args.ray_epochs, args.ray_subjects, args.ray_clips)
        r = report["ray"]
        print(f"Ray overhead: {r['n_folds']} folds, local {r['local_s']:.1f} s, Ray {r['ray_s']:.1f} s "
              f"(+ {r['ray_init_s']:.1f} s to start the instance): {r['overhead_per_fold_s']:.3f} s per fold "
              f"(target < {r['target_per_fold_s']} s); same predictions: {r['same_predictions']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()
