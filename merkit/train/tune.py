"""Nested leave-one-subject-out: hyper-parameters chosen without looking at the test subject.

For every outer LOSO fold (one test subject), each point of a grid of config values is scored
by an inner cross-validation on that fold's *training* subjects only; the best point is
retrained on all training subjects and evaluated once on the outer test subject. The choice
is made by :func:`choose_point`, which receives the training subjects' samples, views and
labels and nothing else, so the outer test subject cannot influence it.

Inner schemes (``inner``):

* ``loso``: one inner fold per training subject (67 inner fits per grid point on the MEGC2019
  composite);
* ``kfold``: ``inner_folds`` subject-grouped folds (every subject's clips in one fold; subjects
  shuffled by the run seed, then dealt out in turn so fold sizes differ by at most one subject).

Score of a grid point: UF1 of the inner predictions pooled over its inner folds (the MEGC
convention), ties broken by pooled UAR, then by grid order. Inside every fit the model after the
last epoch is used (``selection: last``; put ``train.epochs`` in the grid to choose the budget).

A grid maps dotted config keys to candidate values, e.g. ``{"train.lr": [1e-3, 1e-4],
"model.dim": [32, 64]}``; its points are the Cartesian product in key order. Points may change
model and training settings, not the views (every point must read the same views).

Run directory: the one of :mod:`merkit.train.loso` (``config.yaml`` with a ``tune`` section,
``predictions.csv``, ``metrics.json`` whose ``selection`` says ``nested``, the grid, the inner
scheme and the point chosen for every outer fold, ``folds/<subject>/`` with ``choice.json``);
an interrupted run resumes from its completed outer folds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from merkit.config import RunConfig, config_from_dict, dump_config
from merkit.data.protocols import Protocol
from merkit.data.sample import Sample
from merkit.errors import ConfigError
from merkit.eval.metrics import compute_metrics, unweighted_average_recall, unweighted_f1
from merkit.eval.reports import plot_confusion_matrix
from merkit.models.registry import input_spec
from merkit.preprocess.pipeline import ViewBuilder
from merkit.train.loso import Fold, assert_disjoint, check_views_config, loso_folds, new_model
from merkit.train.trainer import Views, fit, predict_proba, subset, to_tensors

log = logging.getLogger(__name__)

InnerScheme = Literal["loso", "kfold"]


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The points of a grid: the Cartesian product of its value lists, keys in the given order.

    Raises:
        ConfigError: an empty grid, a key that is not dotted (``section.key``), or a key
            without values.
    """
    if not grid:
        raise ConfigError("the tuning grid is empty: give at least one key with candidate values")
    for key, values in grid.items():
        if "." not in key:
            raise ConfigError(f"grid key {key!r}: expected a dotted config key such as train.lr or model.dim")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"grid key {key!r}: expected a non-empty list of candidate values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combination)) for combination in itertools.product(*(grid[k] for k in keys))]


def apply_point(config: RunConfig, point: Mapping[str, Any]) -> RunConfig:
    """``config`` with the dotted keys of ``point`` set (validated like a config file).

    Raises:
        ConfigError: a key the config does not have, or a value that fails validation.
    """
    raw = config.model_dump(mode="json")
    for key, value in point.items():
        section, *path = key.split(".")
        if section not in raw or not isinstance(raw[section], dict):
            raise ConfigError(f"grid key {key!r}: {section!r} is not a config section with keys")
        target = raw[section]
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"grid key {key!r}: {part!r} is not a section")
        target[path[-1]] = value
    return config_from_dict(raw, source=f"grid point {dict(point)}")


def inner_splits(samples: Sequence[Sample], scheme: InnerScheme, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-grouped inner splits of ``samples`` (the outer fold's training samples).

    Returns:
        (fit positions, validation positions) per inner fold; no subject group is on both
        sides, and every sample is validated exactly once.

    Raises:
        ConfigError: fewer than two subjects, or ``folds`` outside [2, number of subjects].
    """
    groups = np.array([s.group for s in samples])
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(f"inner cross-validation needs at least two training subjects, got {len(unique)}")
    if scheme == "loso":
        assignment = {group: k for k, group in enumerate(unique)}
        count = len(unique)
    elif scheme == "kfold":
        if not 2 <= folds <= len(unique):
            raise ConfigError(f"inner k-fold: k must be between 2 and the {len(unique)} training subjects, got {folds}")
        order = np.random.default_rng(seed).permutation(len(unique))
        assignment = {unique[index]: position % folds for position, index in enumerate(order)}
        count = folds
    else:
        raise ConfigError(f"unknown inner scheme {scheme!r}; expected 'loso' or 'kfold'")
    fold_of = np.array([assignment[g] for g in groups])
    splits = []
    for k in range(count):
        validation = np.flatnonzero(fold_of == k)
        training = np.flatnonzero(fold_of != k)
        assert_disjoint([samples[i] for i in training], [samples[i] for i in validation])
        splits.append((training, validation))
    return splits


@dataclass(frozen=True)
class Choice:
    """The outcome of :func:`choose_point` on one outer fold's training subjects.

    Attributes:
        index: position of the chosen point in the grid. point: the chosen values.
        scores: per grid point ``{"point", "uf1", "uar"}`` of its pooled inner predictions.
    """

    index: int
    point: dict[str, Any]
    scores: list[dict[str, Any]]


def _train_and_predict(config: RunConfig, classes: Sequence[str], views: Views, labels: torch.Tensor,
                       fit_index: np.ndarray, predict_index: np.ndarray, seed: int) -> tuple[torch.nn.Module, np.ndarray]:
    model = new_model(config, classes, seed=seed)
    fit(model, subset(views, fit_index), labels[fit_index], config.train, seed=seed)
    return model, predict_proba(model, subset(views, predict_index))


def choose_point(samples: Sequence[Sample], views: Views, labels: torch.Tensor, config: RunConfig,
                 points: Sequence[Mapping[str, Any]], classes: Sequence[str], *, inner: InnerScheme = "kfold",
                 inner_folds: int = 3, seed: int = 0) -> Choice:
    """Score every grid point by inner cross-validation on ``samples`` and pick the best.

    Args:
        samples, views, labels: the outer fold's *training* samples only (views ``(N, ...)``,
            labels ``(N,)``); nothing of the outer test subject is passed in.
        config: the base config; each point is applied to it (:func:`apply_point`).
        points: the grid points (:func:`expand_grid`).
        classes: the protocol's classes.
        inner, inner_folds: the inner scheme (module doc).
        seed: seeds the inner splits and every inner fit.

    Returns:
        The chosen point with every point's inner UF1 and UAR.
    """
    splits = inner_splits(samples, inner, inner_folds, seed)
    truth = labels.numpy()
    scores = []
    for point in points:
        point_config = apply_point(config, point)
        predicted = np.empty(len(samples), dtype=np.int64)
        for k, (fit_index, validation_index) in enumerate(splits):
            _, probabilities = _train_and_predict(point_config, classes, views, labels, fit_index, validation_index,
                                                  seed=seed * 100 + k)
            predicted[validation_index] = probabilities.argmax(1)
        scores.append({"point": dict(point), "uf1": unweighted_f1(truth, predicted, list(classes)),
                       "uar": unweighted_average_recall(truth, predicted, list(classes))})
    best = max(range(len(points)), key=lambda i: (scores[i]["uf1"], scores[i]["uar"], -i))
    return Choice(best, dict(points[best]), scores)


def nested_description(grid: Mapping[str, Sequence[Any]], inner: InnerScheme, inner_folds: int) -> dict[str, Any]:
    """The ``selection`` entry of a nested run's ``metrics.json`` (without the chosen points)."""
    scheme = "inner LOSO over the training subjects" if inner == "loso" else \
        f"inner subject-grouped {inner_folds}-fold cross-validation over the training subjects"
    return {
        "policy": "nested",
        "grid": {k: list(v) for k, v in grid.items()},
        "inner": {"scheme": inner, "folds": inner_folds if inner == "kfold" else None},
        "score": "pooled inner UF1 (ties: pooled inner UAR, then grid order)",
        "description": f"nested LOSO: for each outer test subject every grid point is scored by {scheme} of that "
                       "fold; the best point is retrained on all training subjects (model after the last epoch) and "
                       "evaluated once on the test subject, which never influences the choice",
    }


def run_nested(
    samples: Sequence[Sample],
    protocol: Protocol,
    config: RunConfig,
    grid: Mapping[str, Sequence[Any]],
    run_dir: str | Path,
    *,
    inner: InnerScheme = "kfold",
    inner_folds: int = 3,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    fold_workers: int = 1,
    on_fold: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Nested LOSO of ``config`` over ``grid``; writes a run directory (module doc).

    Args:
        samples: labelled samples. protocol: gives the classes.
        config: the base config (``selection.policy`` must be ``last``).
        grid: dotted config keys -> candidate values.
        run_dir: output folder; completed outer folds found there are reused.
        inner, inner_folds: the inner scheme.
        cache_dir, workers: view cache and preprocessing processes.
        fold_workers: outer folds tuned at once (one process and thread each; results do not
            depend on it).
        on_fold: callback ``(done, total, fold name)``.

    Returns:
        The metrics written to ``metrics.json``; ``selection`` holds the grid, the inner
        scheme and ``chosen`` (outer fold -> point).

    Raises:
        ConfigError: a bad grid, a point that changes the views, ``selection`` other than
            ``last``, ``shuffle_labels``, or a run directory holding another run's folds.
    """
    if config.selection.policy != "last":
        raise ConfigError("nested tuning scores every fit after its last epoch: set selection.policy to 'last' "
                          "(put train.epochs in the grid to choose the budget)")
    if config.shuffle_labels:
        raise ConfigError("shuffle_labels is the plain LOSO leak check; run it with `merkit train`, not nested tuning")
    points = expand_grid(grid)
    specs = input_spec(config.model_name, **config.model_kwargs)
    for point in points:
        changed = apply_point(config, point)
        if input_spec(changed.model_name, **changed.model_kwargs) != specs or changed.views != config.views:
            raise ConfigError(f"grid point {point} changes the views the model reads; tune views in separate runs")
        check_views_config(specs, changed, samples)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file; a run directory must be a folder")
    classes = list(protocol.classes)
    if any(s.label is None for s in samples):
        raise ConfigError("every sample needs a label: apply the protocol first")
    check_views_config(specs, config, samples)
    settings = {"config": config.model_dump(mode="json"), "grid": {k: list(v) for k, v in grid.items()},
                "inner": inner, "inner_folds": inner_folds}
    settings_sha1 = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    for finished in sorted((run_dir / "folds").glob("*/predictions.csv")):  # before config.yaml is rewritten
        _check_reusable(finished.parent, lambda recorded: recorded.get("settings_sha1") == settings_sha1)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.yaml", extra={
        "protocol": {"name": protocol.name, "classes": classes},
        "tune": {"grid": settings["grid"], "inner": inner, "inner_folds": inner_folds},
    })
    builder = ViewBuilder(specs, config.views, cache_dir=cache_dir, workers=workers)
    kept, arrays = builder.build(list(samples))
    views = to_tensors(arrays)
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    folds = loso_folds(kept)
    log.info("nested LOSO: %d samples, %d outer folds, %d grid points, inner %s", len(kept), len(folds), len(points), inner)
    jobs = [(number, fold, kept, views, labels, classes, config, points, inner, inner_folds, settings_sha1,
             run_dir / "folds" / fold.name) for number, fold in enumerate(folds)]
    results = _map_folds(jobs, fold_workers, on_fold)
    predictions = pd.concat([table for table, _ in results], ignore_index=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    metrics = compute_metrics(predictions, classes)
    metrics["selection"] = nested_description(grid, inner, inner_folds) | {
        "chosen": {fold.name: choice["point"] for fold, (_, choice) in zip(folds, results)}}
    metrics["skipped"] = builder.skipped
    metrics["apex_policy"] = config.views.apex_policy
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), classes, run_dir / "confusion_matrix.png",
                          title=f"{config.model_name} nested LOSO ({protocol.name})")
    log.info("done: acc %.4f uf1 %.4f uar %.4f", metrics["acc"], metrics["uf1"], metrics["uar"])
    return metrics


def _check_reusable(fold_dir: Path, matches: Callable[[dict], bool]) -> None:
    recorded = fold_dir / "fold.json"
    if not recorded.is_file() or not matches(json.loads(recorded.read_text())):
        raise ConfigError(
            f"{fold_dir} holds a finished fold of another run (its config, grid, inner scheme, classes or clips "
            "differ, or it records none): resuming would mix results; write this run to a new run directory")


def _map_folds(jobs: list[tuple], fold_workers: int, on_fold: Callable[[int, int, str], None] | None) -> list[tuple]:
    if fold_workers <= 1 or len(jobs) <= 1:
        results = []
        for done, job in enumerate(jobs):
            results.append(_nested_fold(*job))
            if on_fold is not None:
                on_fold(done + 1, len(jobs), job[1].name)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    gathered: dict[int, tuple] = {}
    with ProcessPoolExecutor(max_workers=fold_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_nested_fold_in_worker, job): job[0] for job in jobs}
        for done, future in enumerate(as_completed(futures)):
            gathered[futures[future]] = future.result()
            if on_fold is not None:
                on_fold(done + 1, len(jobs), jobs[futures[future]][1].name)
    return [gathered[number] for number in sorted(gathered)]


def _nested_fold_in_worker(job: tuple) -> tuple:
    torch.set_num_threads(1)
    return _nested_fold(*job)


def _nested_fold(number: int, fold: Fold, samples: Sequence[Sample], views: Views, labels: torch.Tensor,
                 classes: list[str], config: RunConfig, points: list[dict], inner: InnerScheme, inner_folds: int,
                 settings_sha1: str, fold_dir: Path) -> tuple[pd.DataFrame, dict]:
    training = json.dumps([[samples[i].sample_id, int(labels[i])] for i in fold.train_index])
    fingerprint = {"settings_sha1": settings_sha1, "classes": classes,
                   "train_sha1": hashlib.sha1(training.encode()).hexdigest(),
                   "test": [[samples[i].sample_id, int(labels[i])] for i in fold.test_index]}
    done = fold_dir / "predictions.csv"
    if done.is_file():
        _check_reusable(fold_dir, lambda recorded: recorded == fingerprint)
        log.info("fold %s: reusing %s", fold.name, done)
        table = pd.read_csv(done, dtype={"sample_id": str, "dataset": str, "subject": str, "fold": str})
        return table, json.loads((fold_dir / "choice.json").read_text())
    train_samples = [samples[i] for i in fold.train_index]
    test_samples = [samples[i] for i in fold.test_index]
    assert_disjoint(train_samples, test_samples)
    seed = config.seed * 1000 + number  # the plain LOSO fold seed: a one-point grid gives run_loso's predictions
    # the choice sees the training subjects only
    choice = choose_point(train_samples, subset(views, fold.train_index), labels[fold.train_index], config, points,
                          classes, inner=inner, inner_folds=inner_folds, seed=seed)
    chosen_config = apply_point(config, choice.point)
    model, probabilities = _train_and_predict(chosen_config, classes, views, labels, fold.train_index, fold.test_index,
                                              seed=seed)
    fold_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "model": chosen_config.model, "classes": classes}, fold_dir / "model.pt")
    record = {"index": choice.index, "point": choice.point, "scores": choice.scores}
    (fold_dir / "choice.json").write_text(json.dumps(record, indent=2))
    table = pd.DataFrame({
        "sample_id": [s.sample_id for s in test_samples],
        "dataset": [s.dataset for s in test_samples],
        "subject": [s.subject for s in test_samples],
        "fold": fold.name,
        "y_true": labels[fold.test_index].numpy(),
        "y_pred": probabilities.argmax(1),
    })
    for k, name in enumerate(classes):
        table[f"p_{name}"] = probabilities[:, k]
    (fold_dir / "fold.json").write_text(json.dumps(fingerprint))
    tmp = fold_dir / "predictions.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(done)
    log.info("fold %s: chose %s (inner UF1 %.3f), %d test samples, acc %.3f", fold.name, choice.point,
             choice.scores[choice.index]["uf1"], len(table), float((table.y_true == table.y_pred).mean()))
    return table, record
