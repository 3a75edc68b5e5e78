"""HTNet training cost at the paper and reduced sizes, against STSTNet in the same run.

Writes ``bench/results/htnet.json``. A training step is forward + cross-entropy + backward +
Adam step on random ``flow_regions`` inputs (B, 3, 28, 28); STSTNet (the other published model on
the same 28 x 28 flow) is timed the same way as the reference. From the step time the script
derives the time of one epoch on a MEGC2019 composite fold (435 training clips) and of the full
68-fold LOSO at the config's budget, which is what a full run needs on this machine.

* ``reduced``: ``configs/htnet-cpu.yaml`` (width 32, blocks (1, 1, 2); batch 64, 20 epochs).
* ``paper``: ``configs/htnet-megc2019-flow.yaml`` (width 256, blocks (2, 2, 10), about 140 M
  parameters; batch 256, 800 epochs).

Step times are wall and process CPU seconds on one thread (on a shared machine the CPU time is
the steadier figure; the JSON records the load average). The paper size is timed at a smaller
batch (``--paper-batch``, default 32: one step at 256 takes minutes here) and its epoch time
extrapolated linearly in the number of clips, marked ``extrapolated_from_batch``.

Usage::

    python bench/htnet.py                   # both sizes, 3 timed steps each
    python bench/htnet.py --sizes reduced --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "htnet.json"
CONFIGS = {"reduced": "htnet-cpu", "paper": "htnet-megc2019-flow"}
TRAIN_CLIPS, FOLDS, CLASSES = 435, 68, 3


def time_steps(model, view: str, batch: int, steps: int, lr: float) -> dict:
    import torch

    inputs = {view: torch.rand(batch, 3, 28, 28)}
    target = torch.randint(0, CLASSES, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    walls, cpus = [], []
    for step in range(steps + 1):  # the first step warms up
        wall, cpu = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return {"batch": batch, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def measure(size: str, steps: int, batch: int | None = None) -> dict:
    import torch

    from merkit.config import load_config
    from merkit.models.registry import create

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config(CONFIGS[size])
    model = create("htnet", num_classes=CLASSES, **config.model_kwargs)
    batch = batch or config.train.batch_size
    htnet = time_steps(model, "flow_regions", batch, steps, config.train.lr)
    ststnet = time_steps(create("ststnet", num_classes=CLASSES), "flow", batch, steps, config.train.lr)
    steps_per_epoch = -(-TRAIN_CLIPS // config.train.batch_size)
    epoch_s = htnet["cpu_s"] * TRAIN_CLIPS / batch  # time is about linear in the clips of an epoch
    return {
        "config": CONFIGS[size],
        "extrapolated_from_batch": batch if batch != config.train.batch_size else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "htnet_step": htnet,
        "ststnet_step": ststnet,
        "ratio_cpu_htnet_over_ststnet": htnet["cpu_s"] / ststnet["cpu_s"],
        "steps_per_epoch": steps_per_epoch,
        "epoch_cpu_s": epoch_s,
        "epochs": config.train.epochs,
        "full_loso_cpu_hours": epoch_s * config.train.epochs * FOLDS / 3600,
        "checkpoint_mb": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="reduced,paper")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--paper-batch", type=int, default=32, help="batch the paper size is timed at")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = {size: measure(size, args.steps, args.paper_batch if size == "paper" else None)
               for size in args.sizes.split(",")}
    for size, r in results.items():
        print(f"{size:8s} {r['parameters'] / 1e6:7.2f} M params  step (batch {r['htnet_step']['batch']}): "
              f"{r['htnet_step']['cpu_s']:.3f} s CPU = {r['ratio_cpu_htnet_over_ststnet']:.1f} x STSTNet  "
              f"epoch {r['epoch_cpu_s']:.1f} s  full 68-fold LOSO ({r['epochs']} epochs): "
              f"{r['full_loso_cpu_hours']:.1f} CPU hours on one thread; fold checkpoint {r['checkpoint_mb']:.0f} MB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": 1,
                                   "load_average": [load_before, os.getloadavg()[0]], "results": results}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
