"""Throughput of the preprocessing steps, and apex-spotting accuracy on SynthME.

Writes ``bench/results/preprocess.json`` and prints a table:

* optical flow: frame pairs per second for ``tvl1``, ``dis`` and ``farneback`` at 128 x 128 and
  224 x 224 (onset/apex pairs of SynthME faces rendered at that size), with 1 and 2 worker
  processes. Every worker runs OpenCV single-threaded (``cv2.setNumThreads(1)``), so the two
  columns compare process-level parallelism; the 1-worker row also gives CPU seconds per pair,
  the steadier figure on a shared machine.
* Eulerian magnification: frames per second of ``magnify`` (defaults: ideal band, 4 levels) on
  a 60-frame grey course at both sizes.
* apex spotting: clips per second and mean absolute apex error (frames) of ``diff``, ``flow``
  and ``frequency`` on 10 SynthME courses (128 px) of the ``default`` and ``hard`` presets,
  next to the middle-frame baseline.
* key frames: clips per second of ``keyframes_sts(num=16)`` on the same courses.

Usage::

    .venv/bin/python bench/preprocess.py
    .venv/bin/python bench/preprocess.py --quick      # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "preprocess.json"
SIZES = (128, 224)
METHODS = ("tvl1", "dis", "farneback")


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _flow_pair(args: tuple[np.ndarray, np.ndarray, str]) -> float:
    from merkit.preprocess.flow import optical_flow

    prev, nxt, method = args
    return float(optical_flow(prev, nxt, method).mean())


def synth_pairs(size: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` grey (onset, frame) pairs of SynthME faces at ``size`` px."""
    import cv2

    from merkit.data.synthetic import SynthConfig, generate_clip

    clip = generate_clip(SynthConfig.from_preset("default", size=size), 1, 0, seed=3)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.frames]
    targets = np.linspace(clip.onset + 1, clip.offset, count).astype(int)
    return [(gray[clip.onset], gray[t]) for t in targets]


def bench_flow(pairs: list[tuple[np.ndarray, np.ndarray]], method: str, workers: int) -> dict[str, float]:
    jobs = [(a, b, method) for a, b in pairs]
    if workers == 1:
        _init_worker()
        _flow_pair(jobs[0])  # warm-up (solver creation)
        wall, cpu = time.perf_counter(), time.process_time()
        for job in jobs:
            _flow_pair(job)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"pairs_per_s": len(jobs) / wall, "cpu_s_per_pair": cpu / len(jobs)}
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        pool.map(_flow_pair, jobs[:workers], chunksize=1)  # warm-up
        wall = time.perf_counter()
        pool.map(_flow_pair, jobs, chunksize=1)
        wall = time.perf_counter() - wall
    return {"pairs_per_s": len(jobs) / wall}


def bench_magnify(size: int, repeats: int) -> dict[str, float]:
    from merkit.preprocess.magnify import magnify

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (60, size, size), dtype=np.uint8)
    magnify(clip[:4], fps=200.0)
    wall = time.perf_counter()
    for _ in range(repeats):
        magnify(clip, fps=200.0, alpha=10.0)
    wall = time.perf_counter() - wall
    return {"frames_per_s": repeats * len(clip) / wall}


def synth_courses(preset: str, count: int) -> list[tuple[np.ndarray, int]]:
    from merkit.data.synthetic import SynthConfig, generate_clip

    config = SynthConfig.from_preset(preset)
    clips = [generate_clip(config, 1 + i % 5, i, seed=7) for i in range(count)]
    return [(c.frames[c.onset : c.offset + 1], c.apex - c.onset) for c in clips]


def bench_spotting(courses: list[tuple[np.ndarray, int]], method: str) -> dict[str, Any]:
    from merkit.preprocess.spotting import spot_apex

    _init_worker()
    wall = time.perf_counter()
    errors = [abs(spot_apex(frames, method) - apex) for frames, apex in courses]
    wall = time.perf_counter() - wall
    return {"clips_per_s": len(courses) / wall, "mae_frames": float(np.mean(errors)), "errors": errors}


def bench_keyframes(courses: list[tuple[np.ndarray, int]]) -> dict[str, float]:
    from merkit.preprocess.sampling import keyframes_sts

    wall = time.perf_counter()
    for frames, _ in courses:
        keyframes_sts(frames, num=16)
    return {"clips_per_s": len(courses) / (time.perf_counter() - wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and clips")
    args = parser.parse_args()
    pair_counts = {"tvl1": 6 if args.quick else 16, "dis": 40 if args.quick else 120, "farneback": 30 if args.quick else 80}
    clip_count = 4 if args.quick else 10

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "flow": {},
        "magnify": {},
        "spotting": {},
        "keyframes": {},
    }
    for size in SIZES:
        pairs = synth_pairs(size, max(pair_counts.values()))
        for method in METHODS:
            for workers in (1, 2):
                key = f"{method}@{size}/workers={workers}"
                results["flow"][key] = bench_flow(pairs[: pair_counts[method]], method, workers)
                print(f"flow {key}: {results['flow'][key]['pairs_per_s']:.1f} pairs/s", flush=True)
        results["magnify"][f"{size}"] = bench_magnify(size, 1 if args.quick else 3)
    for preset in ("default", "hard"):
        courses = synth_courses(preset, clip_count)
        results["spotting"][preset] = {
            "middle_baseline_mae_frames": float(np.mean([abs((len(f) - 1) // 2 - a) for f, a in courses])),
            "course_lengths": [len(f) for f, _ in courses],
        }
        for method in ("diff", "flow", "frequency"):
            results["spotting"][preset][method] = bench_spotting(courses, method)
        results["keyframes"][preset] = bench_keyframes(courses)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))

    print(f"\nload average {results['machine']['load_average_at_start'][0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
    print(f"{'optical flow (pairs/s)':<26}{'1 worker':>10}{'2 workers':>11}{'CPU ms/pair':>13}")
    for size in SIZES:
        for method in METHODS:
            one = results["flow"][f"{method}@{size}/workers=1"]
            two = results["flow"][f"{method}@{size}/workers=2"]
            label = f"{method} {size}x{size}"
            print(f"  {label:<24}{one['pairs_per_s']:>10.1f}{two['pairs_per_s']:>11.1f}{1e3 * one['cpu_s_per_pair']:>13.1f}")
    print("magnify (frames/s, 60-frame course): " + ", ".join(f"{s}x{s}: {v['frames_per_s']:.0f}" for s, v in results["magnify"].items()))
    print(f"{'apex spotting':<26}{'clips/s':>10}{'MAE (frames)':>14}")
    for preset, entry in results["spotting"].items():
        for method in ("diff", "flow", "frequency"):
            label = f"{preset} {method}"
            print(f"  {label:<24}{entry[method]['clips_per_s']:>10.2f}{entry[method]['mae_frames']:>14.1f}")
        label = f"{preset} middle frame"
        print(f"  {label:<24}{'':>10}{entry['middle_baseline_mae_frames']:>14.1f}")
    print("key frames (clips/s, num=16): " + ", ".join(f"{p}: {v['clips_per_s']:.1f}" for p, v in results["keyframes"].items()))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
