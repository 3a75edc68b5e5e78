"""Explanation maps on the demo runs: time per map, and how much of each map lies where the face moves.

For every test clip of every model's demo run (``merkit demo`` -> ``runs/demo/<model>``), the
clip's own fold model explains its predicted class (:func:`merkit.eval.explain.explain_views`:
Grad-CAM, ATM-GCN's CA attention, input x gradient for logreg). SynthME knows where each
expression moves the face: the pixels whose ground-truth expression flow at the apex exceeds a
fifth of its maximum. The figure per clip is the map's mean inside that region over its mean
outside (1 = no preference; the region covers 2-20% of the face). Writes
``bench/results/explain.json``.

Usage (after ``make demo``)::

    .venv/bin/python bench/explain.py --runs runs/demo --data data/synthme-demo --cache runs/demo/cache
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "explain.json"


def moving_region(data: Path, sample_id: str, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    from merkit.data.synthetic import load_synth_clip

    _, subject, clip_id = sample_id.split("/")
    clip = load_synth_clip(data, subject, clip_id, verify=False)
    magnitude = np.linalg.norm(clip.expression_flow_at(clip.apex), axis=-1)
    magnitude = cv2.resize(magnitude, shape[::-1], interpolation=cv2.INTER_AREA)
    return magnitude > 0.2 * magnitude.max()


def bench_run(run: Path, data: Path, cache: Path | None) -> dict:
    import pandas as pd

    from merkit.data.protocols import apply_protocol
    from merkit.data.registry import load_dataset
    from merkit.eval.explain import explain_views
    from merkit.inference import Predictor
    from merkit.preprocess.pipeline import ViewBuilder

    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject": str, "fold": str})
    samples = {s.sample_id: s for s in apply_protocol(load_dataset("synthme", data).samples, "casme2-5")}
    ratios, correct, seconds, method = [], [], [], ""
    for fold, part in predictions.groupby("fold"):
        predictor = Predictor.from_dir(run / "folds" / fold)
        kept, arrays = ViewBuilder(predictor.input_spec, predictor.config.views, cache_dir=cache).build(
            [samples[i] for i in part["sample_id"]])
        for index, sample in enumerate(kept):
            views = {k: v[index:index + 1] for k, v in arrays.items()}
            row = part[part["sample_id"] == sample.sample_id].iloc[0]
            start = time.perf_counter()
            explanation = explain_views(predictor.models, views, int(row["y_pred"]), predictor.config.model_name)
            seconds.append(time.perf_counter() - start)
            method = explanation.method
            mask = moving_region(data, sample.sample_id, explanation.heatmap.shape)
            heat = explanation.heatmap
            ratios.append(float(heat[mask].mean() / max(float(heat[~mask].mean()), 1e-12)))
            correct.append(bool(row["y_true"] == row["y_pred"]))
    ratios_array, correct_array = np.array(ratios), np.array(correct)
    return {
        "method": method, "clips": len(ratios),
        "median_ratio": float(np.median(ratios_array)), "share_above_1": float(np.mean(ratios_array > 1)),
        "median_ratio_correct": float(np.median(ratios_array[correct_array])) if correct_array.any() else None,
        "median_ratio_wrong": float(np.median(ratios_array[~correct_array])) if (~correct_array).any() else None,
        "seconds_per_map": float(np.median(seconds)), "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="folder of the demo's run directories")
    parser.add_argument("--data", type=Path, default=Path("data/synthme-demo"), help="the demo's SynthME folder")
    parser.add_argument("--cache", type=Path, default=Path("runs/demo/cache"), help="view cache")
    args = parser.parse_args()
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = {"machine": {"cpus": os.cpu_count(), "threads": 1, "load_average_at_start": list(os.getloadavg())},
               "runs": str(args.runs), "models": {}}
    for run in sorted(p.parent for p in args.runs.glob("*/predictions.csv")):
        results["models"][run.name] = entry = bench_run(run, args.data, args.cache)
        print(f"{run.name:<12} {entry['method']:<28} median ratio {entry['median_ratio']:.2f}, above 1 for "
              f"{100 * entry['share_above_1']:.0f}% of {entry['clips']} clips, {1e3 * entry['seconds_per_map']:.0f} ms/map",
              flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
