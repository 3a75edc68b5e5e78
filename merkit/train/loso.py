"""Leave-one-subject-out evaluation: folds, training, honest selection, written predictions.

One fold per subject (the group key ``dataset/subject``, so subject ids of different datasets
never merge). For each fold the runner asserts that no subject is both in training and test,
trains a fresh model from the run seed, selects it without looking at the test subject
(``last`` epoch of a fixed budget, or the best epoch on a validation split carved from the
*training* subjects), and writes the fold's predictions. A run directory that already holds a
fold's predictions resumes after it.

Run directory (the contract with metrics and reports)::

    runs/<name>/config.yaml         fully resolved config + protocol
    runs/<name>/predictions.csv     sample_id, dataset, subject, fold, y_true, y_pred, p_<class>...
    runs/<name>/metrics.json        acc, uf1, uar, macro_f1, per_class, per_dataset, ..., selection
    runs/<name>/confusion_matrix.png
    runs/<name>/folds/<fold>/       model.pt, predictions.csv, history.json
    runs/<name>/log.txt
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from merkit.config import RunConfig, dump_config
from merkit.data.protocols import Protocol
from merkit.data.sample import Sample
from merkit.errors import ConfigError, LeakageError
from merkit.eval.metrics import compute_metrics, unweighted_f1
from merkit.eval.reports import plot_confusion_matrix
from merkit.models.registry import create
from merkit.preprocess.pipeline import ViewBuilder
from merkit.train.trainer import History, fit, predict_proba, subset, to_tensors
from merkit.views import AUGMENTED_VIEWS, CHANNEL_VIEWS, FLOW_VIEWS, VIEWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One LOSO fold: the test group and the sample positions of each part."""

    name: str
    test_group: str
    train_index: np.ndarray
    test_index: np.ndarray


def fold_name(group: str, single_dataset: bool) -> str:
    """Folder-safe fold name: the subject id, prefixed by its dataset when several are mixed."""
    dataset, subject = group.split("/", 1)
    raw = subject if single_dataset else f"{dataset}-{subject}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def loso_folds(samples: Sequence[Sample]) -> list[Fold]:
    """One fold per subject group, in sorted group order.

    Raises:
        LeakageError: a fold's training and test parts share a subject (cannot happen by
            construction; checked anyway, as every fold is).
    """
    groups = np.array([s.group for s in samples])
    single = len({s.dataset for s in samples}) == 1
    folds = []
    for group in sorted(set(groups)):
        test = np.flatnonzero(groups == group)
        train = np.flatnonzero(groups != group)
        assert_disjoint([samples[i] for i in train], [samples[i] for i in test])
        folds.append(Fold(fold_name(group, single), group, train, test))
    return folds


def assert_disjoint(train: Sequence[Sample], test: Sequence[Sample]) -> None:
    """Raise :class:`LeakageError` if any subject group is in both ``train`` and ``test``."""
    shared = {s.group for s in train} & {s.group for s in test}
    if shared:
        raise LeakageError(f"subjects in both train and test: {sorted(shared)}")


def _validation_split(samples: Sequence[Sample], train_index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    groups = np.array([samples[i].group for i in train_index])
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError("selection 'val-split' needs at least two training subjects")
    rng = np.random.default_rng(seed)
    n_val = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    val_groups = set(rng.choice(unique, size=n_val, replace=False).tolist())
    is_val = np.array([g in val_groups for g in groups])
    return train_index[~is_val], train_index[is_val]


def selection_description(config: RunConfig) -> dict:
    if config.selection.policy == "last":
        return {"policy": "last", "description": f"model after the last of {config.train.epochs} epochs; the test subject is never looked at"}
    return {
        "policy": "val-split",
        "val_fraction": config.selection.val_fraction,
        "description": "epoch with the best UF1 on validation subjects carved from the training subjects of each fold; the test subject is never looked at",
    }


def run_loso(
    samples: Sequence[Sample],
    protocol: Protocol,
    config: RunConfig,
    run_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    fold_workers: int = 1,
    on_fold: Callable[[int, int, str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run LOSO for ``config`` over labelled ``samples`` and write the run directory.

    Args:
        samples: samples with ``label`` set by ``protocol``.
        protocol: gives the class names (fixed order).
        config: model, training, views and selection settings.
        run_dir: output folder; completed folds found there are reused (resume).
        cache_dir: view cache folder (None: no cache).
        workers: preprocessing worker processes.
        fold_workers: folds trained at once, each in its own process on one thread (small
            models use two cores better this way than one process on two threads). Every fold
            is seeded on its own, so the results do not depend on this number.
        on_fold: callback ``(fold number, number of folds, fold name)`` before each fold.
        on_progress: callback ``(stage, done, total)`` during preprocessing.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file; a run directory must be a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    _attach_log(run_dir)
    classes = list(protocol.classes)
    if any(s.label is None for s in samples):
        raise ConfigError("every sample needs a label: apply the protocol first")
    torch.manual_seed(config.seed)
    probe = create(config.model_name, num_classes=len(classes), **config.model_kwargs)
    check_views_config(probe.input_spec, config, samples)
    settings = _config_sha1(config)
    for finished in sorted((run_dir / "folds").glob("*/predictions.csv")):  # before config.yaml is rewritten
        _check_reusable(finished.parent, lambda recorded: recorded.get("config_sha1") == settings)
    dump_config(config, run_dir / "config.yaml", extra={
        "protocol": {"name": protocol.name, "classes": classes},
        "input_spec": [s.__dict__ | {"size": list(s.size)} for s in probe.input_spec],
    })
    builder = ViewBuilder(probe.input_spec, config.views, cache_dir=cache_dir, workers=workers)
    kept, arrays = builder.build(list(samples), progress=(lambda d, t: on_progress("views", d, t)) if on_progress else None)
    views = to_tensors(arrays)
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    folds = loso_folds(kept)
    log.info("LOSO: %d samples, %d folds, model %s, selection %s", len(kept), len(folds), config.model_name, config.selection.policy)
    jobs = [(number, fold, kept, views, labels, classes, config, run_dir / "folds" / fold.name)
            for number, fold in enumerate(folds)]
    if fold_workers > 1 and len(folds) > 1:
        frames = _run_folds_in_parallel(jobs, fold_workers, on_fold)
    else:
        frames = []
        for job in jobs:
            if on_fold is not None:
                on_fold(job[0] + 1, len(folds), job[1].name)
            frames.append(_run_fold(*job))
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    metrics = compute_metrics(predictions, classes)
    metrics["selection"] = selection_description(config)
    metrics["skipped"] = builder.skipped
    metrics["apex_policy"] = config.views.apex_policy
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), classes, run_dir / "confusion_matrix.png",
                          title=f"{config.model_name} LOSO ({protocol.name})")
    log.info("done: acc %.4f uf1 %.4f uar %.4f", metrics["acc"], metrics["uf1"], metrics["uar"])
    return metrics


def check_views_config(specs, config: RunConfig, samples: Sequence[Sample] = ()) -> None:
    """The ``views`` section's optional size/channels/num_frames must agree with the input spec,
    and flips must not be applied to a released min-max scaled flow.

    A flip negates u (horizontal) or v (vertical), which mirrors a flow whose 0 is no motion. The
    MEGC2019 flow release is min-max scaled per image (no motion is not 0): a negated channel
    would leave the range the model was shown, so with ``views.release_flow: minmax`` flips of a
    released flow view are refused (``centered`` makes them exact).

    Args:
        specs: the model's input spec. config: the run config.
        samples: the run's samples (a release is recognised by ``meta["precomputed_views"]``).

    Raises:
        ConfigError: a disagreement, or a flip of a released min-max flow.
    """
    v = config.views
    for spec in specs:
        if v.size is not None and VIEWS[spec.name].spatial and tuple(v.size) != tuple(spec.size):
            raise ConfigError(f"views.size {list(v.size)} disagrees with the model's {spec.name} view size {list(spec.size)}")
        if v.channels is not None and spec.name in CHANNEL_VIEWS and v.channels != spec.channels:
            raise ConfigError(f"views.channels {v.channels} disagrees with the model's {spec.name} view ({spec.channels})")
        if v.num_frames is not None and spec.length is not None and v.num_frames != spec.length:
            raise ConfigError(f"views.num_frames {v.num_frames} disagrees with the model's {spec.name} length {spec.length}")
    augment = config.train.augment
    flipped = [s.name for s in specs if s.name in FLOW_VIEWS and s.name in AUGMENTED_VIEWS]
    released = any("flow" in s.meta.get("precomputed_views", ()) for s in samples)
    if released and flipped and (augment.hflip or augment.vflip) and v.release_flow == "minmax":
        raise ConfigError(
            f"train.augment flips the {flipped[0]} view, which negates u (hflip) or v (vflip); the released flow "
            "images are min-max scaled per image, so no motion is not 0 and a negated channel is no mirror image: "
            "set views.release_flow: centered (u and v minus their median; flips are then exact) or turn the flips off")


def new_model(config: RunConfig, classes: Sequence[str], *, seed: int) -> torch.nn.Module:
    """A freshly initialised model from ``seed``, started from ``config.pretrained`` if set (its
    heads matched to ``classes`` by name when the checkpoint records its classes)."""
    torch.manual_seed(seed)
    model = create(config.model_name, num_classes=len(classes), **config.model_kwargs)
    if config.pretrained is not None:
        from merkit.models.pretrained import load_pretrained

        load_pretrained(model, config.pretrained, classes=classes)
    return model


def train_all(samples: Sequence[Sample], protocol: Protocol, config: RunConfig, out: str | Path, *,
              cache_dir: str | Path | None = None, workers: int = 1) -> Path:
    """Train one model on every sample (the pre-training stage of pre-train -> fine-tune).

    No subject is held out, so the model is never evaluated here; a later LOSO run on another
    dataset starts its folds from it (``config.pretrained``). Writes ``out/model.pt`` (the fold
    checkpoint format), ``out/config.yaml`` and ``out/history.json``.

    Returns:
        the checkpoint path.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; pre-training writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    classes = list(protocol.classes)
    model = new_model(config, classes, seed=config.seed)
    check_views_config(model.input_spec, config, samples)
    kept, arrays = ViewBuilder(model.input_spec, config.views, cache_dir=cache_dir, workers=workers).build(list(samples))
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    history = fit(model, to_tensors(arrays), labels, config.train, seed=config.seed)
    dump_config(config, out / "config.yaml", extra={"protocol": {"name": protocol.name, "classes": classes}})
    (out / "history.json").write_text(json.dumps(history.__dict__))
    path = out / "model.pt"
    torch.save({"state_dict": model.state_dict(), "model": config.model, "classes": classes}, path)
    return path


def _fold_in_worker(job: tuple) -> pd.DataFrame:
    torch.set_num_threads(1)
    return _run_fold(*job)


def _run_folds_in_parallel(jobs: list[tuple], fold_workers: int,
                           on_fold: Callable[[int, int, str], None] | None) -> list[pd.DataFrame]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: dict[int, pd.DataFrame] = {}
    # fork, as torch's DataLoader workers do: no main-module guard needed in user scripts
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=fold_workers, mp_context=context) as pool:
        futures = {pool.submit(_fold_in_worker, job): job[0] for job in jobs}
        for done, future in enumerate(as_completed(futures)):
            results[futures[future]] = future.result()
            if on_fold is not None:
                on_fold(done + 1, len(jobs), jobs[futures[future]][1].name)
    return [results[number] for number in sorted(results)]


def _config_sha1(config: RunConfig) -> str:
    return hashlib.sha1(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _fold_fingerprint(fold: Fold, samples: Sequence[Sample], labels: torch.Tensor, classes: list[str],
                      config: RunConfig) -> dict:
    """What a finished fold's predictions depend on (settings, classes, training and test clips
    with their labels); a resumed run reuses a fold only if it matches."""
    training = json.dumps([[samples[i].sample_id, int(labels[i])] for i in fold.train_index])
    return {
        "config_sha1": _config_sha1(config),
        "classes": list(classes),
        "train_sha1": hashlib.sha1(training.encode()).hexdigest(),
        "test": [[samples[i].sample_id, int(labels[i])] for i in fold.test_index],
    }


def _check_reusable(fold_dir: Path, matches: Callable[[dict], bool]) -> None:
    """Raise unless the finished fold in ``fold_dir`` records a fingerprint that ``matches``."""
    recorded = fold_dir / "fold.json"
    if not recorded.is_file() or not matches(json.loads(recorded.read_text())):
        raise ConfigError(
            f"{fold_dir} holds a finished fold of another run (its config, classes or test clips differ, or it "
            "records none): resuming would mix results; write this run to a new run directory or delete that one")


def _run_fold(number: int, fold: Fold, samples: Sequence[Sample], views, labels: torch.Tensor, classes: list[str],
              config: RunConfig, fold_dir: Path) -> pd.DataFrame:
    done = fold_dir / "predictions.csv"
    fingerprint = _fold_fingerprint(fold, samples, labels, classes, config)
    if done.is_file():
        _check_reusable(fold_dir, lambda recorded: recorded == fingerprint)
        log.info("fold %s: reusing %s", fold.name, done)
        return pd.read_csv(done, dtype={"sample_id": str, "dataset": str, "subject": str, "fold": str})
    assert_disjoint([samples[i] for i in fold.train_index], [samples[i] for i in fold.test_index])
    seed = config.seed * 1000 + number
    model = new_model(config, classes, seed=seed)
    train_index = fold.train_index
    train_labels = labels[train_index]
    if config.shuffle_labels:
        train_labels = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))]
    validate = None
    if config.selection.policy == "val-split":
        fit_index, val_index = _validation_split(samples, train_index, config.selection.val_fraction, seed)
        assert_disjoint([samples[i] for i in val_index], [samples[i] for i in fold.test_index])
        position = {int(i): k for k, i in enumerate(train_index)}
        fit_labels = train_labels[[position[int(i)] for i in fit_index]]
        val_views, val_labels = subset(views, val_index), labels[val_index].numpy()

        def validate(m) -> float:
            predicted = predict_proba(m, val_views).argmax(1)
            return unweighted_f1(val_labels, predicted, classes)

        train_index, train_labels = fit_index, fit_labels
    history: History = fit(model, subset(views, train_index), train_labels, config.train, seed=seed, validate=validate,
                           on_epoch=lambda e, loss: log.debug("fold %s epoch %d loss %.4f", fold.name, e, loss))
    probabilities = predict_proba(model, subset(views, fold.test_index))
    fold_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "model": config.model, "classes": classes}, fold_dir / "model.pt")
    (fold_dir / "history.json").write_text(json.dumps(history.__dict__))
    table = pd.DataFrame({
        "sample_id": [samples[i].sample_id for i in fold.test_index],
        "dataset": [samples[i].dataset for i in fold.test_index],
        "subject": [samples[i].subject for i in fold.test_index],
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
    log.info("fold %s: %d test samples, acc %.3f, best epoch %s", fold.name, len(table),
             float((table.y_true == table.y_pred).mean()), history.best_epoch or config.train.epochs)
    return table


def _attach_log(run_dir: Path) -> None:
    root = logging.getLogger("merkit")
    path = str(run_dir / "log.txt")
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in root.handlers):
        for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(h)
            h.close()
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
