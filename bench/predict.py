"""Speed of `merkit predict`, and how well its spotting finds SynthME expressions in long videos.

Writes ``bench/results/predict.json`` and prints a table:

* given interval: a 1-second 200 fps clip (128 x 128 SynthME face, H.264), end to end through
  ``Predictor.predict(video, onset=, apex=, offset=)`` (decode up to the offset, the pipeline's
  views, the model), on one CPU thread, for the onset-apex models with DIS flow (TSFmicro and
  STSTNet on onset->apex flow, logreg on the difference) and, for reference, the sequence models
  (ATM-GCN, 3D-ResNet: a DIS flow per sampled frame). Median of repeated calls after one warm-up;
  the models are loaded once (load time reported apart). The reference in the same run: decoding
  the same 200 frames alone.
* spotting: a long video of SynthME clips joined end to end (one subject, 128 px, 200 fps,
  written with ``SEAMLESS``), ``Predictor.predict(video)`` with no interval, whole-video frames
  per second (two decoding passes, face crops, spotting, views and model for each interval),
  also with MTCNN face tracking; against decoding alone. Recall and precision of the intervals
  (MEGC criterion IoU >= 0.5) and onset/apex/offset errors, for H.264 at crf 0 (lossless RGB),
  12 (merkit's default) and 23 (x264's default).

The models are trained for one epoch (speed does not depend on the weights; the spotting figures
do not involve the model). Usage::

    .venv/bin/python bench/predict.py            # ~5 min on the 2-core machine
    .venv/bin/python bench/predict.py --quick    # fewer repetitions, shorter video
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "predict.json"
FPS = 200
#: onset-apex models (the < 1 s target) and sequence models (for reference), with their configs
MODELS = {
    "tsfmicro": ("tsfmicro-cpu", {}),
    "ststnet": ("ststnet-megc2019-flow", {"views": {"flow": "dis"}, "dataset": {"name": "synthme", "protocol": "casme2-5"}}),
    "logreg": ("logreg-cpu", {}),
    "atm-gcn": ("atm-gcn-cpu", {}),
    "ms3d-resnet": ("ms3d-resnet-cpu", {}),
}
ONSET_APEX = ("tsfmicro", "ststnet", "logreg")


def one_thread() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def train_models(work: Path) -> dict[str, Path]:
    """One model directory per model: `train --all-subjects` (train_all), one epoch, tiny SynthME."""
    from merkit.config import load_config
    from merkit.data.protocols import apply_protocol, get_protocol
    from merkit.data.registry import load_dataset
    from merkit.data.synthetic import write_synthme
    from merkit.train.loso import train_all

    data = write_synthme(work / "train-data", subjects=2, clips_per_subject=5, seed=0, size=128, fps=FPS)
    protocol = get_protocol("casme2-5")
    samples = apply_protocol(load_dataset("synthme", data).samples, protocol)
    directories = {}
    for name, (config_name, overrides) in MODELS.items():
        config = load_config(config_name, {**overrides, "train": {"epochs": 1}})
        directories[name] = train_all(samples, protocol, config, work / f"model-{name}").parent
    return directories


def one_second_clip(work: Path) -> tuple[Path, int, int, int]:
    """A 200-frame (1 s) SynthME video and its onset, apex, offset."""
    from merkit.data.synthetic import SynthConfig, generate_clip
    from merkit.inference.footage import write_video

    clip = generate_clip(SynthConfig(size=128, fps=FPS, lead_in_range=(40, 40), lead_out_range=(200, 200)), 0, 3, seed=2)
    frames = clip.frames[:FPS]
    return write_video(work / "one-second.mp4", frames, FPS), clip.onset, clip.apex, clip.offset


def decode_seconds(path: Path, repeats: int) -> float:
    from merkit.inference.footage import open_footage

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in open_footage(path).frames())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), count


def bench_given_interval(directories: dict[str, Path], video: Path, onset: int, apex: int, offset: int,
                         repeats: int) -> dict[str, Any]:
    from merkit.inference import Predictor

    decode, frames = decode_seconds(video, repeats)
    results: dict[str, Any] = {"clip": {"frames": frames, "fps": FPS, "size": 128, "onset": onset, "apex": apex,
                                        "offset": offset},
                               "decode_all_frames_s": decode, "models": {}}
    for name, directory in directories.items():
        start = time.perf_counter()
        predictor = Predictor.from_dir(directory)
        load = time.perf_counter() - start
        predictor.predict(video, onset=onset, apex=apex, offset=offset)  # warm-up (imports, first flow)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict(video, onset=onset, apex=apex, offset=offset)
            times.append(time.perf_counter() - start)
        results["models"][name] = {
            "end_to_end_s": float(np.median(times)), "runs": times, "load_s": load,
            "views": [f"{s.name}{'' if s.length is None else f' x{s.length}'} {s.size[0]}px" for s in predictor.input_spec],
            "onset_apex": name in ONSET_APEX, "ratio_to_decoding": float(np.median(times)) / decode,
        }
        print(f"given interval, {name}: {np.median(times):.3f} s (load {load:.2f} s)", flush=True)
    return results


def long_video(work: Path, clips: int) -> tuple[np.ndarray, Any]:
    from merkit.data.synthetic import write_synthme
    from merkit.data.synthme.video import SEAMLESS, join_clips

    data = write_synthme(work / "long-data", subjects=1, clips_per_subject=clips, seed=4, size=128, fps=FPS,
                         lead_in_range=(80, 160), lead_out_range=(80, 160), **SEAMLESS)
    video = join_clips(data, "sub01")
    return video.frames, video.intervals


def score(table, truth) -> dict[str, Any]:
    """Recall, precision (IoU >= 0.5, each truth matched once) and errors in frames."""
    found, errors = set(), []
    for _, t in truth.iterrows():
        for index, row in table.iterrows():
            overlap = min(row.end_frame, t.offset) - max(row.start_frame, t.onset) + 1
            union = max(row.end_frame, t.offset) - min(row.start_frame, t.onset) + 1
            if index not in found and overlap / union >= 0.5:
                found.add(index)
                errors.append((row.start_frame - t.onset, row.apex_frame - t.apex, row.end_frame - t.offset))
                break
    errors = np.array(errors).reshape(-1, 3)
    return {
        "recall": len(found) / len(truth), "precision": len(found) / max(1, len(table)),
        "found": len(found), "truth": len(truth), "spotted": len(table),
        "mean_abs_error_frames": {"onset": float(np.abs(errors[:, 0]).mean()) if len(errors) else None,
                                  "apex": float(np.abs(errors[:, 1]).mean()) if len(errors) else None,
                                  "offset": float(np.abs(errors[:, 2]).mean()) if len(errors) else None},
    }


def bench_spotting(directory: Path, frames: np.ndarray, truth, work: Path, repeats: int) -> dict[str, Any]:
    from merkit.inference import Predictor
    from merkit.inference.footage import write_video

    predictor = Predictor.from_dir(directory)
    results: dict[str, Any] = {"video": {"frames": len(frames), "seconds": len(frames) / FPS, "size": 128,
                                         "expressions": len(truth)}, "runs": {}}
    for label, kwargs in (("crf 0 (lossless)", {"lossless": True}), ("crf 12", {"crf": 12}), ("crf 23", {"crf": 23})):
        path = write_video(work / f"long-{label.split()[1]}.mp4", frames, FPS, **kwargs)
        decode, _ = decode_seconds(path, 1)
        for face in (("none", "mtcnn") if label == "crf 12" else ("none",)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                table = predictor.predict(path, face=face)
                times.append(time.perf_counter() - start)
            wall = float(np.median(times))
            key = f"{label}, face {face}"
            results["runs"][key] = {"frames_per_s": len(frames) / wall, "seconds": wall,
                                    "decode_frames_per_s": len(frames) / decode, **score(table, truth)}
            entry = results["runs"][key]
            print(f"spotting, {key}: {entry['frames_per_s']:.0f} frames/s (decoding alone {entry['decode_frames_per_s']:.0f}),"
                  f" recall {entry['recall']:.2f}, precision {entry['precision']:.2f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, a shorter video")
    args = parser.parse_args()
    one_thread()
    repeats = 3 if args.quick else 7
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "threads": 1, "load_average_at_start": list(os.getloadavg()),
                                           "platform": platform.platform(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        directories = train_models(work)
        video, onset, apex, offset = one_second_clip(work)
        results["given_interval"] = bench_given_interval(directories, video, onset, apex, offset, repeats)
        frames, truth = long_video(work, 6 if args.quick else 20)
        results["spotting"] = bench_spotting(directories["tsfmicro"], frames, truth, work, 1)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))

    given = results["given_interval"]
    print(f"\nload average {results['machine']['load_average_at_start'][0]:.1f} on {os.cpu_count()} CPUs, one thread")
    print(f"1-second {FPS} fps clip, given interval (decoding its {given['clip']['frames']} frames alone: "
          f"{given['decode_all_frames_s']:.3f} s)")
    for name, entry in given["models"].items():
        kind = "onset-apex" if entry["onset_apex"] else "sequence"
        print(f"  {name:<12} {kind:<11} {entry['end_to_end_s']:.3f} s  ({', '.join(entry['views'])})")
    spotting = results["spotting"]
    print(f"spotting a {spotting['video']['seconds']:.0f} s video ({spotting['video']['frames']} frames, "
          f"{spotting['video']['expressions']} expressions):")
    for key, entry in spotting["runs"].items():
        errors = entry["mean_abs_error_frames"]
        print(f"  {key:<28} {entry['frames_per_s']:>5.0f} frames/s (decode {entry['decode_frames_per_s']:.0f})  recall "
              f"{entry['recall']:.2f} precision {entry['precision']:.2f}  |error| onset/apex/offset "
              f"{errors['onset'] or float('nan'):.1f}/{errors['apex'] or float('nan'):.1f}/{errors['offset'] or float('nan'):.1f} frames")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
