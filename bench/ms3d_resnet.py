"""Training-step time and peak memory of the multi-scale 3D-ResNet (paper 004) on CPU.

Compares ``variant="full"`` with ``variant="plain"`` (the same 3D-ResNet from the same builder,
without attention, RC modules, temporal fusion and the extra heads) at two sizes:

* ``paper``: 16 x 134 x 134 flow maps, base width 64 (batch ``--paper-batch``, default 2);
* ``reduced``: the CPU config's 8 x 32 x 32, base width 8, batch 16 (full and plain with the
  default options);
* ``cpu-config``: ``merkit/configs/ms3d-resnet-cpu.yaml`` exactly (its options and batch size), with
  the time of one epoch over 105 clips (a LOSO fold's training set in the demo: 7 subjects x 15
  clips) estimated from its step time.

One training step = forward, the summed cross-entropy loss, backward and an Adam step. Every case
runs in a fresh subprocess so that its peak memory is its own:

* time: median wall time of the timed steps after ``--warmup`` untimed steps; the full and the
  plain model run alternately ``--repeats`` times (reduced size) and the median over repeats is
  kept, so that both see the same share of a shared machine;
* memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak resident set size)
  after the steps, minus the resident size measured just before the first step (model,
  optimizer and input already built). This counts everything the steps make resident: saved
  activations, gradients, Adam state, allocator slack. tracemalloc does not see torch's
  allocations, so it is not used.

Run: ``.venv/bin/python bench/ms3d_resnet.py`` (writes ``bench/results/ms3d_resnet.json``).
The machine may be shared: the JSON records the load average before and after each case, and
ratios are taken within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_CONFIG = ROOT / "merkit" / "configs" / "ms3d-resnet-cpu.yaml"
SIZES = {
    "paper": {"num_frames": 16, "input_size": [134, 134], "base_width": 64, "head_hidden": 128},
    "reduced": {"num_frames": 8, "input_size": [32, 32], "base_width": 8, "head_hidden": 32, "batch": 16},
}


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: dict) -> dict:
    """Time ``case["steps"]`` training steps of one model; runs inside the subprocess."""
    import torch

    from merkit.models.ms3d_resnet import MultiScale3dResNet

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    if case["size"] == "cpu-config":
        import yaml

        kwargs = yaml.safe_load(CPU_CONFIG.read_text())["model"]
        kwargs.pop("name")
    else:
        size = SIZES[case["size"]]
        kwargs = {k: size[k] for k in ("num_frames", "input_size", "base_width", "head_hidden")}
        kwargs.update(variant=case["variant"], layout=case["layout"])
    model = MultiScale3dResNet(5, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    frames, (height, width) = kwargs["num_frames"], kwargs["input_size"]
    views = {"flow_seq": torch.randn(case["batch"], frames, 3, height, width)}
    target = torch.arange(case["batch"]) % 5
    resident_before = _resident_mib()
    times = []
    for step in range(case["warmup"] + case["steps"]):
        start = time.perf_counter()
        loss = model.loss(model(views), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= case["warmup"]:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    extra = {}
    if case["size"] == "cpu-config":
        extra["epoch_105_clips_s_estimate"] = round(statistics.median(times) * 105 / case["batch"], 2)
    return {
        **case,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "step_s_median": round(statistics.median(times), 4),
        "step_s_all": [round(t, 4) for t in times],
        "per_clip_s": round(statistics.median(times) / case["batch"], 4),
        "resident_before_steps_mib": round(resident_before, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_increase_mib": round(peak - resident_before, 1),
        **extra,
    }


def _spawn(case: dict) -> dict:
    load_before = os.getloadavg()[0]
    completed = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench case {case} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["load_avg_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--reduced-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating full/plain runs at the reduced size")
    parser.add_argument("--layouts", default="paper-basic", help="comma-separated: paper-basic,bottleneck50")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ms3d_resnet.json")
    args = parser.parse_args()
    if args.case is not None:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(run_case(json.loads(args.case))))
        return

    import yaml

    cpu_batch = yaml.safe_load(CPU_CONFIG.read_text())["train"]["batch_size"]
    groups = []  # (cases run alternately, repeats)
    for layout in args.layouts.split(","):
        for size in ["reduced"] if args.skip_paper else ["reduced", "paper"]:
            batch = SIZES[size].get("batch", args.paper_batch)
            steps = args.reduced_steps if size == "reduced" else args.paper_steps
            pair = [{"size": size, "layout": layout, "variant": variant, "batch": batch,
                     "steps": steps, "warmup": args.warmup, "threads": args.threads} for variant in ("full", "plain")]
            groups.append((pair, args.repeats if size == "reduced" else 1))
    groups.append(([{"size": "cpu-config", "layout": "paper-basic", "variant": "full", "batch": cpu_batch,
                     "steps": args.reduced_steps, "warmup": args.warmup, "threads": args.threads}], 1))
    results = []
    for cases, repeats in groups:
        runs = [[_spawn(case) for case in cases] for _ in range(repeats)]
        for index, case in enumerate(cases):
            result = runs[-1][index]
            result["step_s_repeats"] = [run[index]["step_s_median"] for run in runs]
            result["step_s_median"] = round(statistics.median(result["step_s_repeats"]), 4)
            results.append(result)
            print(f"{case['size']:10s} {case['layout']:13s} {case['variant']:6s} batch {case['batch']:2d}: "
                  f"{result['step_s_median']:.3f} s/step, peak +{result['peak_increase_mib']:.0f} MiB "
                  f"(RSS {result['peak_rss_mib']:.0f} MiB), {result['parameters_m']} M parameters", flush=True)
    ratios = {}
    for full in (r for r in results if r["variant"] == "full" and r["size"] != "cpu-config"):
        plain = next(r for r in results if r["variant"] == "plain" and r["size"] == full["size"] and r["layout"] == full["layout"])
        ratios[f"{full['size']}/{full['layout']}"] = {
            "time_full_over_plain": round(full["step_s_median"] / plain["step_s_median"], 2),
            "peak_increase_full_over_plain": round(full["peak_increase_mib"] / plain["peak_increase_mib"], 2),
            "parameters_full_over_plain": round(full["parameters_m"] / plain["parameters_m"], 2),
        }
    import torch

    report = {
        "benchmark": "ms3d-resnet training step (forward + summed CE + backward + Adam), CPU",
        "method": __doc__.split("\n\n", 1)[1].strip(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": args.threads, "processor": platform.processor() or platform.machine()},
        "sizes": SIZES,
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
