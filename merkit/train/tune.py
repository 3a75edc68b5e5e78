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

Selection groups (``selection_groups = g``), a cheaper scheme that is just as honest: the
subjects are dealt into ``g`` groups (shuffled by the run seed, each source dataset of a
composite spread over the groups, :func:`split_selection_groups`); for the test subjects of group
``i`` the grid is scored once, by the inner scheme on the subjects of the *other* groups only
(a subset of the training subjects of each of those outer folds), and the chosen point is
trained per outer LOSO fold as usual. A test subject never influences its own choice; the grid
costs ``g`` choices instead of one per outer fold (68 on the MEGC2019 composite).

Score of a grid point: UF1 of the inner predictions pooled over its inner folds (the MEGC
convention), ties broken by pooled UAR, then by grid order. With ``inner_repeats = r > 1`` the
inner scheme runs ``r`` times, each repeat with its own subject shuffle (``kfold``) and its own
fit seeds, and a point scores the mean of its repeats' pooled UF1 (and UAR): on a few dozen
subjects one inner split and one seed per fit decide between close points by chance
(:func:`repeat_seed`). Each point's record also keeps every repeat's UF1 and, for a composite,
the pooled inner UF1 of each source dataset (mean over the repeats), which the choice does not
use. Inside every fit the model after the last epoch is used (``selection: last``; put
``train.epochs`` in the grid to choose the budget).

A grid maps dotted config keys to candidate values, e.g. ``{"train.lr": [1e-3, 1e-4],
"model.dim": [32, 64]}``; its points are the Cartesian product in key order. Settings that only
make sense together form a *joint axis*: an undotted name whose values are mappings of dotted
keys, each mapping one candidate, e.g. ``{"recipe": [{"views.release_flow": "minmax",
"train.augment.hflip": False}, {"views.release_flow": "centered", "train.augment.hflip": True}]}``
(every mapping sets the same keys; the name only labels the axis). Two points that resolve to
the same config are refused (the tie would be broken by grid order, and the fits wasted).
Points may change model and training settings and the views they read (e.g.
``model.in_channels: [1, 3]`` or ``views.release_flow``): the views are built once per distinct
view setting of the grid, and every setting must keep the same clips (a point cannot win by
dropping hard clips).

Run directory: the one of :mod:`merkit.train.loso` (``config.yaml`` with a ``tune`` section,
``predictions.csv``, ``metrics.json`` whose ``selection`` says ``nested``, the grid, the inner
scheme and the point chosen for every outer fold, ``folds/<subject>/`` with ``choice.json``;
with selection groups also ``selection/group<i>.json``: the group's subjects, the subjects
that chose and every point's inner scores); an interrupted run resumes from its completed
outer folds and group choices.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from merkit.config import RunConfig, config_from_dict, dump_config, result_settings
from merkit.data.protocols import Protocol
from merkit.data.sample import Sample
from merkit.errors import ConfigError, LeakageError
from merkit.eval.metrics import RUN_FACTS_FILE, evaluate_run, unweighted_average_recall, unweighted_f1, write_predictions
from merkit.models.registry import input_spec
from merkit.outputs import make_output_dir
from merkit.preprocess.pipeline import ViewBuilder
from merkit.train.device import configure_determinism
from merkit.train.executors import Executor, LocalExecutor
from merkit.train.loso import (Fold, assert_disjoint, check_reusable, check_views_config, fit_members, loso_folds,
                               pretrain_overlap, reuse_finished_fold, save_checkpoint, trained_on, write_finished_fold)
from merkit.train.trainer import Views, predict_members, subset, to_tensors

log = logging.getLogger(__name__)

InnerScheme = Literal["loso", "kfold"]


#: the config's top-level settings a grid may set (the other keys are dotted: section.key)
TOP_LEVEL_GRID_KEYS = ("pretrained",)


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The points of a grid: the Cartesian product of its value lists, keys in the given order.

    A key without a dot whose values are mappings is a joint axis (module doc): each mapping's
    dotted keys are set together, and a point holds them as if they were separate keys.

    Raises:
        ConfigError: an empty grid, a key that is neither dotted (``section.key``) nor in
            :data:`TOP_LEVEL_GRID_KEYS` nor a joint axis, a key without values, or a joint
            axis whose mappings set different keys (or a key another axis sets too).
    """
    if not grid:
        raise ConfigError("the tuning grid is empty: give at least one key with candidate values")
    axes: list[list[dict[str, Any]]] = []  # per key: its candidates as {dotted key: value}
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"grid key {key!r}: expected a non-empty list of candidate values, got {values!r}")
        if _is_setting_key(key):
            axes.append([{key: value} for value in values])
        elif all(isinstance(value, Mapping) for value in values):
            axes.append(_joint_axis(key, values))
        else:
            raise ConfigError(f"grid key {key!r}: expected a dotted config key such as train.lr or model.dim, "
                              f"one of {', '.join(TOP_LEVEL_GRID_KEYS)}, or a joint axis (a name whose values are "
                              "mappings of dotted keys set together)")
    seen: dict[str, int] = {}
    for number, axis in enumerate(axes):
        for dotted in axis[0]:
            if dotted in seen:
                raise ConfigError(f"grid key {dotted!r} is set by two axes ({list(grid)[seen[dotted]]!r} and "
                                  f"{list(grid)[number]!r}): put it in one")
            seen[dotted] = number
    return [{k: v for part in combination for k, v in part.items()} for combination in itertools.product(*axes)]


def _is_setting_key(key: str) -> bool:
    """Whether a grid key names one config setting: dotted (``section.key``) or top level."""
    return "." in key or key in TOP_LEVEL_GRID_KEYS


def _joint_axis(name: str, values: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The candidates of the joint axis ``name`` (module doc), checked."""
    keys = None
    for value in values:
        if not value:
            raise ConfigError(f"grid axis {name!r}: an empty mapping sets nothing")
        for key in value:
            if not isinstance(key, str) or not _is_setting_key(key):
                raise ConfigError(f"grid axis {name!r}: {key!r} is not a dotted config key such as train.lr")
        if keys is None:
            keys = list(value)
        elif set(value) != set(keys):
            raise ConfigError(f"grid axis {name!r}: every mapping must set the same keys ({sorted(keys)}), "
                              f"got {sorted(value)}")
    return [{key: value[key] for key in keys} for value in values]


def apply_point(config: RunConfig, point: Mapping[str, Any]) -> RunConfig:
    """``config`` with the dotted keys of ``point`` set (validated like a config file).

    Raises:
        ConfigError: a key the config does not have, or a value that fails validation.
    """
    raw = config.model_dump(mode="json")
    for key, value in point.items():
        if key in TOP_LEVEL_GRID_KEYS:
            raw[key] = value
            continue
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


def split_selection_groups(samples: Sequence[Sample], groups: int, seed: int) -> dict[str, int]:
    """Deal the subjects of ``samples`` into ``groups`` selection groups.

    The subjects of each source dataset (in sorted dataset order) are shuffled by ``seed`` and
    dealt out in turn, the deal continuing from one dataset to the next, so every dataset is
    spread over the groups and group sizes differ by at most one subject.

    Returns:
        subject group (``Sample.group``, ``dataset/subject``) -> selection group in ``[0, groups)``.

    Raises:
        ConfigError: ``groups`` below 2 or above the number of subjects.
    """
    by_dataset: dict[str, list[str]] = {}
    for group in sorted({s.group for s in samples}):
        by_dataset.setdefault(group.split("/", 1)[0], []).append(group)
    count = sum(len(v) for v in by_dataset.values())
    if not 2 <= groups <= count:
        raise ConfigError(f"selection groups: expected between 2 and the {count} subjects, got {groups}")
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    position = 0
    for dataset in sorted(by_dataset):
        subjects = by_dataset[dataset]
        for index in rng.permutation(len(subjects)):
            assignment[subjects[index]] = position % groups
            position += 1
    return assignment


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
                       fit_index: np.ndarray, predict_index: np.ndarray,
                       seed: int) -> tuple[list[torch.nn.Module], np.ndarray, str]:
    """Fit new models (``train.members`` of them) on ``fit_index``; their probabilities for
    ``predict_index`` and the device they trained on."""
    models, histories = fit_members(config, classes, subset(views, fit_index), labels[fit_index], seed)
    return models, predict_members(models, subset(views, predict_index), config.train.augment.test_hflip), histories[0].device


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of inner repeat ``repeat`` of a choice seeded ``seed``: repeat 0 is ``seed`` itself
    (one repeat is the plain inner scheme), later repeats are drawn from ``(seed, repeat)``."""
    if repeat == 0:
        return seed
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def choose_point(samples: Sequence[Sample], views: Sequence[Views], labels: torch.Tensor, config: RunConfig,
                 points: Sequence[Mapping[str, Any]], classes: Sequence[str], *, inner: InnerScheme = "kfold",
                 inner_folds: int = 3, inner_repeats: int = 1, seed: int = 0) -> Choice:
    """Score every grid point by inner cross-validation on ``samples`` and pick the best.

    Args:
        samples, labels: the outer fold's *training* samples only (labels ``(N,)``); nothing of
            the outer test subject is passed in.
        views: per grid point, the views it reads of those samples (``(N, ...)`` each; points
            with the same view setting share one object).
        config: the base config; each point is applied to it (:func:`apply_point`).
        points: the grid points (:func:`expand_grid`).
        classes: the protocol's classes.
        inner, inner_folds, inner_repeats: the inner scheme, run ``inner_repeats`` times (module doc).
        seed: seeds the inner splits and every inner fit (repeat ``r``: :func:`repeat_seed`).

    Returns:
        The chosen point with every point's inner UF1 and UAR (means over the repeats), each
        repeat's UF1 (``uf1_repeats``) and, when the samples come from several datasets, each
        dataset's pooled inner UF1 (``dataset_uf1``, mean over the repeats).
    """
    if inner_repeats < 1:
        raise ConfigError(f"inner_repeats must be at least 1, got {inner_repeats}")
    seeds = [repeat_seed(seed, r) for r in range(inner_repeats)]
    repeats = [(s, inner_splits(samples, inner, inner_folds, s)) for s in seeds]
    truth = labels.numpy()
    datasets = np.array([s.dataset for s in samples])
    sources = sorted(set(datasets)) if len(set(datasets)) > 1 else []
    scores = []
    if len(views) != len(points):
        raise ValueError(f"choose_point: {len(views)} view sets for {len(points)} grid points")
    for point, point_views in zip(points, views):
        point_config = apply_point(config, point)
        uf1s, uars, by_source = [], [], {name: [] for name in sources}
        for repeat_seed_value, splits in repeats:
            predicted = np.empty(len(samples), dtype=np.int64)
            for k, (fit_index, validation_index) in enumerate(splits):
                _, probabilities, _ = _train_and_predict(point_config, classes, point_views, labels, fit_index,
                                                      validation_index, seed=repeat_seed_value * 100 + k)
                predicted[validation_index] = probabilities.argmax(1)
            uf1s.append(unweighted_f1(truth, predicted, list(classes)))
            uars.append(unweighted_average_recall(truth, predicted, list(classes)))
            for name in sources:
                mask = datasets == name
                by_source[name].append(unweighted_f1(truth[mask], predicted[mask], list(classes)))
        score = {"point": dict(point), "uf1": float(np.mean(uf1s)), "uar": float(np.mean(uars))}
        if inner_repeats > 1:
            score["uf1_repeats"] = uf1s
        if sources:
            score["dataset_uf1"] = {name: float(np.mean(values)) for name, values in by_source.items()}
        scores.append(score)
        log.info("grid point %d/%d %s: inner UF1 %.4f, UAR %.4f (%d samples%s)%s", len(scores), len(points),
                 dict(point), score["uf1"], score["uar"], len(samples),
                 f", mean of {inner_repeats} repeats" if inner_repeats > 1 else "",
                 "".join(f", {name} {value:.3f}" for name, value in score.get("dataset_uf1", {}).items()))
    best = max(range(len(points)), key=lambda i: (scores[i]["uf1"], scores[i]["uar"], -i))
    return Choice(best, dict(points[best]), scores)


def tuning_settings(grid: Mapping[str, Sequence[Any]], inner: InnerScheme, inner_folds: int,
                    groups: int | None = None, inner_repeats: int = 1) -> dict[str, Any]:
    """The tuning settings a nested run's results depend on (its ``config.yaml`` ``tune`` section,
    part of the run's and a benchmark's fingerprint; one inner repeat is left out, so that runs
    made before repeats existed are resumed)."""
    tuning = {"grid": {k: list(v) for k, v in grid.items()}, "inner": inner, "inner_folds": inner_folds}
    if inner_repeats != 1:
        tuning["inner_repeats"] = inner_repeats
    if groups is not None:
        tuning["selection_groups"] = groups
    return tuning


def nested_description(grid: Mapping[str, Sequence[Any]], inner: InnerScheme, inner_folds: int,
                       groups: int | None = None, inner_repeats: int = 1) -> dict[str, Any]:
    """The ``selection`` entry of a nested run's ``metrics.json`` (without the chosen points)."""
    scheme = "inner LOSO" if inner == "loso" else f"inner subject-grouped {inner_folds}-fold cross-validation"
    score = "pooled inner UF1 (ties: pooled inner UAR, then grid order)"
    if inner_repeats > 1:
        scheme += f" repeated {inner_repeats} times (new splits and fit seeds each time)"
        score = (f"mean over {inner_repeats} inner repeats of the pooled inner UF1 (ties: mean pooled inner UAR, "
                 "then grid order)")
    description = {
        "policy": "nested",
        "grid": {k: list(v) for k, v in grid.items()},
        "inner": {"scheme": inner, "folds": inner_folds if inner == "kfold" else None, "repeats": inner_repeats},
        "score": score,
        "description": f"nested LOSO: for each outer test subject every grid point is scored by {scheme} over the "
                       "training subjects of that fold; the best point is retrained on all training subjects (model "
                       "after the last epoch) and evaluated once on the test subject, which never influences the choice",
    }
    if groups is not None:
        description["selection_groups"] = groups
        description["description"] = (
            f"nested LOSO with {groups} selection groups: the subjects are dealt into {groups} groups (shuffled by the "
            "run seed, every source dataset spread over the groups); for the test subjects of group i every grid "
            f"point is scored by {scheme} over the subjects of the other groups only (a subset of each such fold's "
            "training subjects), and the best point is trained per LOSO fold on all of its training subjects (model "
            "after the last epoch) and evaluated once on the test subject, which never influences its own choice")
    return description


def run_nested(
    samples: Sequence[Sample],
    protocol: Protocol,
    config: RunConfig,
    grid: Mapping[str, Sequence[Any]],
    run_dir: str | Path,
    *,
    inner: InnerScheme = "kfold",
    inner_folds: int = 3,
    inner_repeats: int = 1,
    selection_groups: int | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    fold_workers: int = 1,
    executor: Executor | None = None,
    on_fold: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Nested LOSO of ``config`` over ``grid``; writes a run directory (module doc).

    Args:
        samples: labelled samples. protocol: gives the classes.
        config: the base config (``selection.policy`` must be ``last``).
        grid: dotted config keys -> candidate values.
        run_dir: output folder; completed outer folds found there are reused.
        inner, inner_folds, inner_repeats: the inner scheme, run ``inner_repeats`` times (module doc).
        selection_groups: None (a choice per outer fold, on its training subjects), or the
            number ``g`` of selection groups (module doc): one choice per group, on the subjects
            of the other groups.
        cache_dir, workers: view cache and preprocessing processes.
        fold_workers: with the default local executor, outer folds (or group choices) computed
            at once (one process and thread each; results do not depend on it).
        executor: runs the outer folds and the group choices (default:
            ``LocalExecutor(fold_workers)``); a Ray executor gets the views with the other shared
            inputs, once per worker.
        on_fold: callback ``(done, total, fold name)``.

    Returns:
        The metrics written to ``metrics.json``; ``selection`` holds the grid, the inner
        scheme and ``chosen`` (outer fold -> point); with selection groups also
        ``selection_groups`` (g) and ``groups`` (per group: its subjects, the point chosen and
        every point's inner scores); with ``pretrained`` checkpoints in the grid or the config,
        ``pretrained`` lists them with the number of subjects each was trained on.

    Raises:
        LeakageError: a point's ``pretrained`` checkpoint was trained on a subject of this run.
        ConfigError: a bad grid, two points giving the same config, view settings of the grid
            that keep different clips,
            ``selection`` other than ``last``, ``shuffle_labels``, a bad number of selection
            groups, or a run directory holding another run's folds.
    """
    if config.selection.policy != "last":
        raise ConfigError("nested tuning scores every fit after its last epoch: set selection.policy to 'last' "
                          "(put train.epochs in the grid to choose the budget)")
    if config.shuffle_labels:
        raise ConfigError("shuffle_labels is the plain LOSO leak check; run it with `merkit train`, not nested tuning")
    if executor is None:
        executor = LocalExecutor(fold_workers)
    elif fold_workers != 1:
        raise ConfigError("give either fold_workers (local executor) or an executor, not both")
    points = expand_grid(grid)
    check_views_config(input_spec(config.model_name, **config.model_kwargs), config, samples=samples)
    view_settings: list[tuple] = []  # distinct (view specs, views config) of the grid points
    point_views: list[int] = []  # per point: its position in view_settings
    pretrained: dict[str, int | None] = {}  # checkpoint of a point -> subjects it was trained on
    resolved: list[dict] = []  # per point: its whole config, to refuse two points of one setting
    for point in points:
        changed = apply_point(config, point)
        resolved.append(changed.model_dump(mode="json"))
        if resolved[-1] in resolved[:-1]:
            raise ConfigError(f"grid points {points[resolved.index(resolved[-1])]} and {point} give the same "
                              "config: every point must be a different setting")
        if changed.pretrained is not None and changed.pretrained not in pretrained:  # each checkpoint read once
            pretrained[changed.pretrained] = pretrain_overlap(changed, samples, allow=False)["subjects_seen"]
        point_specs = input_spec(changed.model_name, **changed.model_kwargs)
        check_views_config(point_specs, changed, samples=samples)
        setting = (point_specs, changed.views)
        if setting not in view_settings:
            view_settings.append(setting)
        point_views.append(view_settings.index(setting))
    run_dir = Path(run_dir)
    classes = list(protocol.classes)
    if any(s.label is None for s in samples):
        raise ConfigError("every sample needs a label: apply the protocol first")
    membership = split_selection_groups(samples, selection_groups, config.seed) if selection_groups is not None else None
    if membership is not None:
        choosers = len(membership) - max(np.bincount(list(membership.values())))
        if choosers < (2 if inner == "loso" else inner_folds):
            raise ConfigError(f"{selection_groups} selection groups leave {choosers} subjects to choose a group's point, "
                              f"too few for inner {inner}" + (f" with {inner_folds} folds" if inner == "kfold" else ""))
    if inner_repeats < 1:
        raise ConfigError(f"inner_repeats must be at least 1, got {inner_repeats}")
    tuning = tuning_settings(grid, inner, inner_folds, selection_groups, inner_repeats)
    settings = {"config": result_settings(config), **tuning}
    settings_sha1 = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    for finished in sorted((run_dir / "folds").glob("*/predictions.csv")):  # before config.yaml is rewritten
        check_reusable(finished.parent, lambda recorded: recorded.get("settings_sha1") == settings_sha1)
    for finished in sorted((run_dir / "selection").glob("group*.json")):
        if (recorded := _read_choice(finished)) is not None:
            _check_reusable_choice(finished, recorded, lambda fingerprint: fingerprint.get("settings_sha1") == settings_sha1)
    fold_device = executor.prepare(config.train.device)  # refuses a device this machine or cluster lacks, early
    determinism = configure_determinism(config.train.deterministic)
    if cache_dir is not None:
        make_output_dir(cache_dir, "view cache")
    make_output_dir(run_dir, "run directory")
    dump_config(config, run_dir / "config.yaml", extra={"protocol": {"name": protocol.name, "classes": classes},
                                                        "tune": tuning})
    builders, views = [], []
    for point_specs, views_config in view_settings:
        builders.append(ViewBuilder(point_specs, views_config, cache_dir=cache_dir, workers=workers))
        kept_here, arrays = builders[-1].build(list(samples))
        if not views:
            kept = kept_here
        elif [s.sample_id for s in kept_here] != [s.sample_id for s in kept]:
            dropped = sorted({s.sample_id for s in kept} ^ {s.sample_id for s in kept_here})
            raise ConfigError(f"the grid's view settings keep different clips ({len(dropped)} differ, e.g. "
                              f"{dropped[0]}): every point must be scored on the same clips; tune these views in "
                              "separate runs or fix the clips")
        views.append(to_tensors(arrays))
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    folds = loso_folds(kept)
    log.info("nested LOSO: %d samples, %d outer folds, %d grid points (%d view settings), inner %s%s", len(kept),
             len(folds), len(points), len(views), inner, f", {selection_groups} selection groups" if selection_groups else "")
    fold_config = config.model_copy(update={"train": config.train.model_copy(update={"device": fold_device})})
    inputs = NestedInputs(kept, views, point_views, labels, classes, fold_config, points, inner, inner_folds,
                          inner_repeats, settings_sha1, Path(run_dir).absolute(), membership)
    if membership is not None:
        inputs.group_records = executor.map(_group_choice, list(range(selection_groups)), inputs)
    finished: list[int] = []

    def on_done(position: int, result: tuple) -> None:
        finished.append(position)
        if on_fold is not None:
            on_fold(len(finished), len(folds), folds[position].name)

    results = executor.map(_nested_fold, list(enumerate(folds)), inputs, on_done)
    write_predictions(pd.concat([table for table, _ in results], ignore_index=True), run_dir / "predictions.csv")
    selection = nested_description(grid, inner, inner_folds, selection_groups, inner_repeats) | {
        "chosen": {fold.name: choice["point"] for fold, (_, choice) in zip(folds, results)}}
    if inputs.group_records:
        selection["groups"] = [{k: record[k] for k in ("group", "subjects", "point", "scores")}
                               for record in inputs.group_records]
    facts = {
        "model": config.model_name,
        "label": f"{config.model_name} nested LOSO ({protocol.name})",
        "selection": selection,
        "apex_policy": config.views.apex_policy,
        "skipped": builders[0].skipped,  # the same clips for every view setting (checked above)
        **({"pretrained": [{"checkpoint": k, "subjects_seen": n} for k, n in pretrained.items()]}
           if pretrained else {}),
        "compute": {"executor": executor.describe(), "device": config.train.device,
                    "devices_used": sorted({choice["device"] for _, choice in results if choice.get("device")}),
                    "amp": config.train.amp, "determinism": determinism},
    }
    (run_dir / RUN_FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    metrics = evaluate_run(run_dir)  # the one evaluation, as for run_loso and `merkit evaluate`
    log.info("done: acc %.4f uf1 %.4f uar %.4f", metrics["acc"], metrics["uf1"], metrics["uar"])
    return metrics


def _read_choice(path: Path) -> dict | None:
    """A recorded group choice, or None (with a warning: it is computed again) when the file is damaged."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict) or not all(
            key in record for key in ("group", "subjects", "choosers", "index", "point", "scores")):
        log.warning("%s is damaged (not a recorded group choice): the choice is computed again", path)
        return None
    return record


def _check_reusable_choice(path: Path, record: dict, matches: Callable[[dict], bool]) -> None:
    if not matches(record["fingerprint"]):
        raise ConfigError(
            f"{path} holds the choice of a selection group of another run (its config, grid, inner scheme, groups, "
            "classes or clips differ): resuming would mix results; write this run to a new run directory")


@dataclass
class NestedInputs:
    """What every outer fold and group choice of a nested run shares; an executor ships it once
    to each worker. ``views``: one per distinct view setting of the grid; ``point_views``: per grid
    point, the position of its views there. ``membership``: subject group -> selection group
    (None without selection groups); ``group_records``: each selection group's choice, set
    before the outer folds run."""

    samples: Sequence[Sample]
    views: list[Views]
    point_views: list[int]
    labels: torch.Tensor
    classes: list[str]
    config: RunConfig
    points: list[dict]
    inner: InnerScheme
    inner_folds: int
    inner_repeats: int
    settings_sha1: str
    run_dir: Path
    membership: dict[str, int] | None = None
    group_records: list[dict] | None = None

    def views_of_points(self, index: np.ndarray) -> list[Views]:
        """Per grid point, its views of the samples at ``index`` (one subset per view setting)."""
        subsets = [subset(views, index) for views in self.views]
        return [subsets[k] for k in self.point_views]


def _group_choice(group: int, inputs: NestedInputs) -> dict:
    """The choice of selection group ``group`` (an executors' function): :func:`choose_point` on
    the other groups' subjects, or the one recorded in ``selection/group<group>.json``."""
    samples, labels, config = inputs.samples, inputs.labels, inputs.config
    configure_determinism(config.train.deterministic)
    group_of = np.array([inputs.membership[s.group] for s in samples])
    chooser_index = np.flatnonzero(group_of != group)
    members = sorted(g for g, k in inputs.membership.items() if k == group)
    classes, path = inputs.classes, inputs.run_dir / "selection" / f"group{group}.json"
    fingerprint_settings = inputs.settings_sha1
    choosers = [samples[i] for i in chooser_index]
    if {s.group for s in choosers} & set(members):
        raise LeakageError(f"selection group {group}: its own subjects are among those that choose its point")
    clips = json.dumps([[s.sample_id, int(labels[i])] for s, i in zip(choosers, chooser_index)])
    fingerprint = {"settings_sha1": fingerprint_settings, "classes": classes, "subjects": members,
                   "choosers_sha1": hashlib.sha1(clips.encode()).hexdigest()}
    if path.is_file() and (recorded := _read_choice(path)) is not None:
        _check_reusable_choice(path, recorded, lambda known: known == fingerprint)
        log.info("selection group %d: reusing %s", group, path)
        return recorded
    choice = choose_point(choosers, inputs.views_of_points(chooser_index), labels[chooser_index], config, inputs.points,
                          classes, inner=inputs.inner, inner_folds=inputs.inner_folds,
                          inner_repeats=inputs.inner_repeats, seed=config.seed * 1000 + group)
    record = {"group": group, "subjects": members, "choosers": sorted({s.group for s in choosers}),
              "index": choice.index, "point": choice.point, "scores": choice.scores, "fingerprint": fingerprint}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    log.info("selection group %d (%d subjects): chose %s (inner UF1 %.3f on %d other subjects)", group, len(members),
             choice.point, choice.scores[choice.index]["uf1"], len(record["choosers"]))
    return record


def _nested_fold(numbered_fold: tuple[int, Fold], inputs: NestedInputs) -> tuple[pd.DataFrame, dict]:
    """One outer fold (an executors' function)."""
    number, fold = numbered_fold
    samples, views, labels, classes, config = inputs.samples, inputs.views, inputs.labels, inputs.classes, inputs.config
    points, inner, inner_folds, settings_sha1 = inputs.points, inputs.inner, inputs.inner_folds, inputs.settings_sha1
    configure_determinism(config.train.deterministic)
    # copies: index arrays arrive read-only from Ray's object store, and torch warns on those
    fold = replace(fold, train_index=np.array(fold.train_index), test_index=np.array(fold.test_index))
    fold_dir = inputs.run_dir / "folds" / fold.name
    group_record = inputs.group_records[inputs.membership[fold.test_group]] if inputs.membership is not None else None
    training = json.dumps([[samples[i].sample_id, int(labels[i])] for i in fold.train_index])
    fingerprint = {"settings_sha1": settings_sha1, "classes": classes,
                   "train_sha1": hashlib.sha1(training.encode()).hexdigest(),
                   "test": [[samples[i].sample_id, int(labels[i])] for i in fold.test_index]}
    reused = reuse_finished_fold(fold_dir, fingerprint, fold.name)
    if reused is not None:
        return reused, json.loads((fold_dir / "choice.json").read_text())
    train_samples = [samples[i] for i in fold.train_index]
    test_samples = [samples[i] for i in fold.test_index]
    assert_disjoint(train_samples, test_samples)
    seed = config.seed * 1000 + number  # the plain LOSO fold seed: a one-point grid gives run_loso's predictions
    if group_record is None:  # the choice sees the training subjects only
        choice = choose_point(train_samples, inputs.views_of_points(fold.train_index), labels[fold.train_index], config,
                              points, classes, inner=inner, inner_folds=inner_folds,
                              inner_repeats=inputs.inner_repeats, seed=seed)
        record = {"index": choice.index, "point": choice.point, "scores": choice.scores}
    else:  # chosen by the other selection groups, all of them training subjects of this fold
        if fold.test_group in group_record["choosers"]:
            raise LeakageError(f"fold {fold.name}: its test subject helped choose its selection group's point")
        record = {"index": group_record["index"], "point": group_record["point"], "scores": group_record["scores"],
                  "selection_group": group_record["group"]}
    chosen_config = apply_point(config, record["point"])
    models, probabilities, device = _train_and_predict(chosen_config, classes, views[inputs.point_views[record["index"]]],
                                                       labels, fold.train_index, fold.test_index, seed=seed)
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(models, chosen_config, classes, fold_dir / "model.pt", trained_on=trained_on(train_samples))
    record["device"] = device
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
    written = write_finished_fold(fold_dir, table, fingerprint)
    log.info("fold %s: chose %s (inner UF1 %.3f), %d test samples, acc %.3f", fold.name, record["point"],
             record["scores"][record["index"]]["uf1"], len(table), float((table.y_true == table.y_pred).mean()))
    return written, record
