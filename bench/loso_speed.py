"""STSTNet LOSO speed: merkit's training loop vs a minimal PyTorch loop, and the full 68-fold LOSO.

Writes ``bench/results/loso_speed.json`` (or ``--out``).

Data: ``--root`` is the MEGC2019 composite in its released flow form (442 clips, 68 subjects,
28 x 28 u/v/strain images; ``merkit datasets list`` shows the layout). Without ``--root`` the
bench runs anywhere on synthetic flows of the same shape and size (442 clips of 3 x 28 x 28,
68 subjects, three classes 250/109/83); timings do not depend on the pixel values.

The setting is the shipped config ``ststnet-megc2019-flow`` (Adam 5e-5, batch 256, 800 epochs, no
augmentation, last epoch). On one LOSO fold (``--fold``, default the first), each on one thread
as every LOSO fold trains, in interleaved rounds so that the machine's other load hits every
variant alike (``--rounds`` rounds of ``--epochs`` epochs each; ``merkit`` and ``plain`` back to
back, in alternating order):

* ``merkit``: :func:`merkit.train.trainer.fit` on the fold's training clips, the model as the
  config builds it (the fused STSTNet training pass);
* ``plain``: a minimal PyTorch loop over the same tensors (seeded ``randperm``, slice, forward,
  cross-entropy, zero_grad, backward, Adam step). It starts from the same weights and seeds as
  ``merkit``, and the bench checks that both end with bit-identical weights, so the two loops do
  exactly the same work: their ratio is merkit's per-step overhead (target <= 1.0);
* ``published``: ``merkit`` with ``fused: false`` (the published layer order; what merkit ran
  before the fused pass);
* ``vmap``: with ``--vmap K``, K folds' published models stacked with ``torch.func`` (vmap of
  ``functional_call`` over ``stack_module_state``), each fold with its own batch; time per fold.

The fold trains with the allocator setting of LOSO's fold workers (freed memory kept:
``merkit.train.executors.keep_freed_memory``); ``--glibc-default`` times it with glibc's defaults
instead, and ``--allocator-pairs K`` compares the two in K pairs of fresh processes (the setting
is per process), back to back in alternating order.

Times are this thread's CPU time (steady under load) and wall time, per epoch. The projection of
the full LOSO is ``folds x 800 epochs x CPU time per epoch / fold workers`` (two uncontended
cores), and the same scaled by the wall/CPU ratio measured here (the machine as loaded now).
``--full`` also runs the whole LOSO (``run_loso`` with ``--fold-workers``, needs ``--root``) and
records its wall time, CPU time, load and metrics.

Usage::

    python bench/loso_speed.py                                  # synthetic, anywhere
    python bench/loso_speed.py --root /work/realdata            # the composite, one fold
    python bench/loso_speed.py --root /work/realdata --full     # + the full LOSO (~30 min)
    python bench/loso_speed.py --root /work/realdata --rounds 3 --allocator-pairs 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "loso_speed.json"
CONFIG = "ststnet-megc2019-flow"
CLASSES = ("negative", "positive", "surprise")


def synthetic_data(seed: int = 0):
    """Flows ``(442, 3, 28, 28)`` in [0, 1], labels 250/109/83, 68 subjects of 1-19 clips."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    sizes = np.full(68, 1) + rng.multinomial(442 - 68, rng.dirichlet(np.full(68, 2.0)))
    groups = np.repeat([f"synthetic/s{k:02d}" for k in range(68)], sizes)
    labels = rng.permutation(np.repeat([0, 1, 2], [250, 109, 83]))
    flow = torch.from_numpy(rng.random((442, 3, 28, 28), dtype=np.float32))
    return {"flow": flow}, torch.from_numpy(labels), groups


def real_data(root: Path, cache: Path):
    """The composite's flow views, labels and LOSO groups (``dataset/subject``), and the run setup."""
    import numpy as np
    import torch

    from merkit.api import prepare_run
    from merkit.models.registry import input_spec
    from merkit.preprocess.pipeline import ViewBuilder
    from merkit.train.trainer import to_tensors

    run = prepare_run(dataset="megc2019-flow", root=root, model="ststnet")
    specs = input_spec(run.config.model_name, **run.config.model_kwargs)
    kept, arrays = ViewBuilder(specs, run.config.views, cache_dir=cache).build(list(run.samples))
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    return to_tensors(arrays), labels, np.array([s.group for s in kept]), run


def timed(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """(thread CPU seconds, wall seconds, result) of ``function()``."""
    cpu, wall = time.thread_time(), time.perf_counter()
    result = function()
    return time.thread_time() - cpu, time.perf_counter() - wall, result


def plain_loop(model, flow, labels, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The minimal PyTorch loop (the same order of random draws as merkit's ``fit``)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(labels)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model({"flow": flow[index]}), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def vmap_epochs(config, flows, labels, epochs: int, seed: int) -> None:
    """``len(flows)`` folds' published STSTNets stacked with torch.func, ``epochs`` epochs, each fold
    with its own shuffle; every fold's batch is cut to the shortest fold's size."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, stack_module_state, vmap

    from merkit.models.registry import create

    options = {**config.model_kwargs, "fused": False}
    models = []
    for k in range(len(flows)):
        torch.manual_seed(seed + k)
        models.append(create(config.model_name, num_classes=len(CLASSES), **options))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss_of(p, b, flow, target):
        return F.cross_entropy(functional_call(base, (p, b), ({"flow": flow},)), target)

    gradients = vmap(grad(loss_of), randomness="different")
    leaves = list(params.values())
    optimizer = torch.optim.Adam(leaves, lr=config.train.lr)
    n = min(len(y) for y in labels)
    generators = [torch.Generator().manual_seed(seed + k) for k in range(len(flows))]
    for _ in range(epochs):
        orders = [torch.randperm(len(y), generator=g)[:n] for y, g in zip(labels, generators)]
        for start in range(0, n, config.train.batch_size):
            batches = [order[start:start + config.train.batch_size] for order in orders]
            flow = torch.stack([f[b] for f, b in zip(flows, batches)])
            target = torch.stack([y[b] for y, b in zip(labels, batches)])
            grads = gradients(params, buffers, flow, target)
            for leaf, name in zip(leaves, params):
                leaf.grad = grads[name]
            optimizer.step()


def measure_fold(views, labels, groups, config, fold: int, epochs: int, rounds: int, vmap_folds: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from merkit.train.loso import new_model
    from merkit.train.trainer import fit, subset

    torch.set_num_threads(1)
    subjects = sorted(set(groups))
    test_group = subjects[fold]
    train_index = np.flatnonzero(groups != test_group)
    assert test_group not in set(groups[train_index])  # the fold never trains on its test subject
    train_views, train_labels = subset(views, train_index), labels[train_index]
    short = config.train.model_copy(update={"epochs": epochs})
    published = config.model_copy(update={"model": {**config.model, "fused": False}})
    seed = config.seed * 1000 + fold

    def run_merkit(run_config):
        def go():
            model = new_model(run_config, CLASSES, seed=seed)
            fit(model, train_views, train_labels, short, seed=seed)
            return model
        return go

    def run_plain():
        model = new_model(config, CLASSES, seed=seed)
        plain_loop(model, train_views["flow"], train_labels, epochs, config.train.batch_size, config.train.lr, seed)
        return model

    variants: dict[str, Callable[[], Any]] = {"merkit": run_merkit(config), "plain": run_plain,
                                              "published": run_merkit(published)}
    if vmap_folds > 1:
        others = [np.flatnonzero(groups != subjects[(fold + k) % len(subjects)]) for k in range(vmap_folds)]
        flows = [views["flow"][index] for index in others]
        fold_labels = [labels[index] for index in others]
        variants[f"vmap{vmap_folds}"] = lambda: vmap_epochs(config, flows, fold_labels, epochs, seed)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    same_weights = None
    names = list(variants)
    for round_number in range(rounds + 1):  # round 0 warms up (allocator, oneDNN primitives) and is not counted
        finals = {}
        pair = ["merkit", "plain"] if round_number % 2 else ["plain", "merkit"]  # back to back, alternating
        for name in pair + names[2:]:
            seconds, elapsed, finals[name] = timed(variants[name])
            per_fold = vmap_folds if name.startswith("vmap") else 1
            if round_number > 0:
                cpu[name].append(seconds / epochs / per_fold)
                wall[name].append(elapsed / epochs / per_fold)
        if same_weights is None:
            merkit_state, plain_state = finals["merkit"].state_dict(), finals["plain"].state_dict()
            same_weights = all(torch.equal(value, plain_state[key]) for key, value in merkit_state.items())

    def ratio(a: str, b: str, times: dict[str, list[float]]) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "fold": {"index": fold, "test_subject": test_group, "n_train": int(len(train_index))},
        "epochs_per_round": epochs, "rounds": rounds, "threads": 1,
        "per_epoch_ms": {name: {"cpu_median": 1000 * statistics.median(cpu[name]), "cpu_min": 1000 * min(cpu[name]),
                                "wall_median": 1000 * statistics.median(wall[name])} for name in variants},
        "merkit_over_plain": {"cpu": ratio("merkit", "plain", cpu), "wall": ratio("merkit", "plain", wall)},
        "published_over_merkit": {"cpu": ratio("published", "merkit", cpu), "wall": ratio("published", "merkit", wall)},
        "plain_loop_same_weights": same_weights,
        "contention_wall_over_cpu": statistics.median(w / c for w, c in zip(wall["merkit"], cpu["merkit"])),
    }


def project(result: dict[str, Any], folds: int, epochs: int, fold_workers: int) -> dict[str, Any]:
    per_epoch = result["per_epoch_ms"]

    def minutes(name: str, contention: float = 1.0) -> float:
        return per_epoch[name]["cpu_median"] / 1000 * epochs * folds / fold_workers * contention / 60

    return {
        "folds": folds, "epochs": epochs, "fold_workers": fold_workers,
        "minutes_uncontended": minutes("merkit"),
        "minutes_at_measured_load": minutes("merkit", result["contention_wall_over_cpu"]),
        "published_minutes_uncontended": minutes("published"),
    }


def allocator_pairs(args: argparse.Namespace, pairs: int) -> dict[str, Any]:
    """``pairs`` pairs of fresh processes, back to back in alternating order, each timing the
    ``merkit`` variant of the fold (``--rounds`` rounds): with glibc's default allocator settings
    and with the freed memory kept as fold workers keep it. The allocator state is per process,
    so the two settings cannot share one."""
    import subprocess
    import tempfile

    times: dict[str, list[float]] = {"glibc default": [], "freed memory kept": []}
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(pairs):
            order = ["glibc default", "freed memory kept"][:: 1 if pair % 2 == 0 else -1]
            for name in order:
                out = Path(scratch) / "child.json"
                command = [sys.executable, __file__, "--fold", str(args.fold), "--epochs", str(args.epochs),
                           "--rounds", str(args.rounds), "--cache", str(args.cache), "--out", str(out)]
                command += ["--root", str(args.root)] if args.root is not None else []
                command += ["--glibc-default"] if name == "glibc default" else []
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(json.loads(out.read_text())["per_epoch_ms"]["merkit"]["cpu_median"])
    ratios = [kept / default for kept, default in zip(times["freed memory kept"], times["glibc default"])]
    return {"pairs": pairs, "merkit_cpu_median_ms": times, "kept_over_default": ratios,
            "kept_over_default_median": statistics.median(ratios)}


def full_run(run, cache: Path, fold_workers: int, out: Path) -> dict[str, Any]:
    import shutil

    from merkit.train.loso import run_loso

    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()
    start_wall, start_children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start_self = resource.getrusage(resource.RUSAGE_SELF)
    metrics = run_loso(run.samples, run.protocol, run.config, out, cache_dir=cache, fold_workers=fold_workers)
    wall = time.perf_counter() - start_wall
    end_children, end_self = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = sum(getattr(end, f) - getattr(start, f) for end, start in ((end_children, start_children), (end_self, start_self))
              for f in ("ru_utime", "ru_stime"))
    return {
        "run_dir": str(out), "fold_workers": fold_workers, "wall_minutes": wall / 60, "cpu_minutes": cpu / 60,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "acc": metrics["acc"], "uf1": metrics["uf1"], "uar": metrics["uar"],
        "per_dataset": {name: {k: m[k] for k in ("n_samples", "acc", "uf1", "uar")}
                        for name, m in metrics.get("per_dataset", {}).items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="MEGC2019 composite (released flow form)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".merkit-cache", help="view cache folder")
    parser.add_argument("--fold", type=int, default=0, help="fold measured (index in sorted subject order)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--vmap", type=int, default=0, help="also time K folds stacked with torch.func (0: off)")
    parser.add_argument("--fold-workers", type=int, default=2, help="for the projection and --full")
    parser.add_argument("--full", action="store_true", help="run the full LOSO too (needs --root)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-loso-speed", help="run directory of --full")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--glibc-default", action="store_true",
                        help="time the fold with glibc's default allocator settings (not --full)")
    parser.add_argument("--allocator-pairs", type=int, default=0,
                        help="also time the fold in K pairs of processes: glibc default against freed memory kept")
    args = parser.parse_args(argv)
    if args.full and args.root is None:
        parser.error("--full needs --root (the full LOSO of the real composite)")
    if args.full and args.glibc_default:
        parser.error("--glibc-default times one fold only (the LOSO's workers keep freed memory)")
    sys.path.insert(0, str(ROOT))
    import torch

    from merkit.config import load_config

    run = None
    if args.root is not None:
        views, labels, groups, run = real_data(args.root, args.cache)
        config = run.config
    else:
        views, labels, groups = synthetic_data()
        config = load_config(CONFIG)
    from merkit.train.executors import keep_freed_memory

    # the fold trains in this process as in a LOSO fold worker: with the allocator setting the
    # workers apply (--glibc-default: without it, for comparison)
    allocator = "glibc default" if args.glibc_default else (
        "freed memory kept (keep_freed_memory)" if keep_freed_memory() else "default (not glibc)")
    load_before = os.getloadavg()
    fold = measure_fold(views, labels, groups, config, args.fold, args.epochs, args.rounds, args.vmap)
    report: dict[str, Any] = {
        "data": {"source": "megc2019-flow" if run is not None else "synthetic (same shape)",
                 "n_clips": int(len(labels)), "n_folds": len(set(groups))},
        "config": CONFIG, "allocator": allocator, **fold,
        "projection": project(fold, len(set(groups)), config.train.epochs, args.fold_workers),
        "allocator_pairs": allocator_pairs(args, args.allocator_pairs) if args.allocator_pairs else None,
        "full_run": None,
        "machine": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    if args.full:
        report["full_run"] = full_run(run, args.cache, args.fold_workers, args.run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
