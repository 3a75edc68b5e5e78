"""Leave-one-subject-out evaluation: folds, training, honest selection, written predictions.

One fold per subject (the group key ``dataset/subject``, so subject ids of different datasets
never merge). For each fold the runner asserts that no subject is both in training and test,
trains a fresh model from the run seed, selects it without looking at the test subject
(``last`` epoch of a fixed budget, or the best epoch on a validation split carved from the
*training* subjects), and writes the fold's predictions. A run directory that already holds a
fold's predictions resumes after it.

``folds: leave-one-sample-out`` in a config (paper 004's Eq. 4.5) makes one fold per clip
instead; that scheme is not subject-independent and ``metrics.json`` says so under ``folds``.

Folds are independent tasks of one function, :func:`run_fold`, run by an executor
(:mod:`merkit.train.executors`): ``local`` (in this process or worker processes) or ``ray`` (a
task per fold on a Ray cluster). A fold writes its own directory the same way under every
executor; the driver only gathers the fold predictions and writes the run's files. Workers of a
Ray cluster read the views from the view cache (a folder every node sees at the same path) and
build any view missing there.

Run directory (the contract with metrics and reports)::

    runs/<name>/config.yaml         fully resolved config + protocol
    runs/<name>/predictions.csv     sample_id, dataset, subject, fold, y_true, y_pred, p_<class>...
    runs/<name>/run.json            run facts: model label, selection, apex policy, skips, fixes ...
    runs/<name>/metrics.json        acc, uf1, uar, macro_f1, per_class, per_dataset, ..., run facts
    runs/<name>/confusion_matrix.png
    runs/<name>/folds/<fold>/       model.pt, predictions.csv, history.json, fold.json
    runs/<name>/log.txt

Training writes ``predictions.csv`` and ``run.json``; ``metrics.json`` and the figure come from
:func:`~merkit.eval.metrics.evaluate_run` alone (the one writer), so ``merkit evaluate`` changes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from merkit.config import RunConfig, dump_config, result_settings
from merkit.data.protocols import Protocol
from merkit.data.repairs import Fix
from merkit.data.sample import Sample
from merkit.errors import ConfigError, LeakageError, MetricsError, check_choice
from merkit.eval.metrics import RUN_FACTS_FILE, evaluate_run, read_predictions, unweighted_f1, write_predictions
from merkit.models.registry import create, input_spec, model_class
from merkit.outputs import make_output_dir
from merkit.preprocess.pipeline import ViewBuilder
from merkit.train.device import configure_determinism, cpu_state_dict, place_views, resolve_device
from merkit.train.executors import Executor, LocalExecutor
from merkit.train.progress import FoldProgress
from merkit.train.trainer import History, Views, fit, predict_members, predict_proba, subset, to_tensors
from merkit.views import AUGMENTED_VIEWS, CHANNEL_VIEWS, FLOW_VIEWS, VIEWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One fold: the test group and the sample positions of each part.

    ``subject_independent`` is False for leave-one-sample-out folds, whose training part holds
    the test subject's other clips (then only the test clip itself is kept out of training).
    """

    name: str
    test_group: str
    train_index: np.ndarray
    test_index: np.ndarray
    subject_independent: bool = True


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


def sample_folds(samples: Sequence[Sample]) -> list[Fold]:
    """Leave-one-sample-out: one fold per clip, in sample-id order (paper 004, Eq. 4.5).

    NOT subject-independent: the test subject's other clips are in the training part, so a
    model may recognise the person rather than the expression. Only the test clip is kept out.

    Raises:
        LeakageError: a clip id occurs twice (it would be in training and test at once).
    """
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise LeakageError(f"sample ids occur more than once: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    single = len({s.dataset for s in samples}) == 1
    folds = []
    for position in sorted(range(len(samples)), key=lambda i: ids[i]):
        sample = samples[position]
        name = fold_name(f"{sample.dataset}/{sample.subject}-{sample.clip_id}", single)
        train = np.array([i for i in range(len(samples)) if i != position], dtype=np.int64)
        folds.append(Fold(name, sample.sample_id, train, np.array([position]), subject_independent=False))
    if len({f.name for f in folds}) != len(folds):  # two ids that differ only in characters a folder cannot hold
        folds = [Fold(f"{k:05d}-{f.name}", f.test_group, f.train_index, f.test_index, False) for k, f in enumerate(folds)]
    return folds


FOLD_SCHEMES = {
    "loso": "leave-one-subject-out: one fold per subject; no subject is in training and test (subject-independent)",
    "leave-one-sample-out": "one fold per clip, the other clips of the same subject train (paper 004's Eq. 4.5); "
                            "NOT subject-independent: scores are not comparable with LOSO",
}


def make_folds(samples: Sequence[Sample], scheme: str = "loso") -> list[Fold]:
    """The folds of ``scheme`` (``loso`` or ``leave-one-sample-out``).

    Raises:
        ConfigError: an unknown scheme.
    """
    check_choice("fold scheme", scheme, FOLD_SCHEMES)
    return loso_folds(samples) if scheme == "loso" else sample_folds(samples)


def _assert_fold_disjoint(fold: Fold, train: Sequence[Sample], test: Sequence[Sample]) -> None:
    """Subject-independent folds share no subject; leave-one-sample-out folds share no clip."""
    if fold.subject_independent:
        assert_disjoint(train, test)
    elif {s.sample_id for s in train} & {s.sample_id for s in test}:
        raise LeakageError(f"fold {fold.name}: its test clip is also a training clip")


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
    executor: Executor | None = None,
    on_fold: Callable[[int, int, str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_error: str = "raise",
    fixes: Sequence[Fix] = (),
    skipped: Sequence[str] = (),
    notes: Sequence[str] = (),
    allow_pretrain_overlap: bool = False,
) -> dict:
    """Run LOSO for ``config`` over labelled ``samples`` and write the run directory.

    Training writes ``config.yaml``, the folds, ``predictions.csv`` and the run facts
    (``run.json``: model label, selection, apex policy, skipped samples and rows, loader fixes,
    notes, pre-training overlap), then calls :func:`~merkit.eval.metrics.evaluate_run`, the
    same evaluation ``merkit evaluate`` runs, which writes ``metrics.json`` and
    ``confusion_matrix.png``. Everything is checked (model options, views, finished folds,
    pre-training overlap, the output folder) before anything is written.

    Args:
        samples: samples with ``label`` set by ``protocol``.
        protocol: gives the class names (fixed order).
        config: model, training, views and selection settings.
        run_dir: output folder; completed folds found there are reused (resume) after they are
            verified (their fingerprint, row count, test clips and checksum); a fold whose
            predictions fail the check is trained again.
        cache_dir: view cache folder (None: no cache; the ray executor needs one, shared by
            every node at the same path).
        workers: preprocessing worker processes.
        fold_workers: with the default local executor, folds trained at once, each in its own
            process on one thread (small models use two cores better this way than one process
            on two threads). Every fold is seeded on its own and trains on one thread (also with
            ``fold_workers=1``), so the results do not depend on this number.
        executor: runs the folds (default: ``LocalExecutor(fold_workers)``); a
            :class:`~merkit.train.executors.RayExecutor` gives the same predictions.
        on_fold: callback ``(folds finished, number of folds, name of the fold just finished)``.
        on_progress: callback ``(stage, done, total)`` during preprocessing.
        on_error: ``raise`` on a sample whose views cannot be built (an unreadable frame ...),
            or ``skip`` it; skipped samples are recorded in ``metrics.json`` and ``log.txt``.
        fixes: the loader's recorded changes to annotation rows (``PreparedRun.fixes``),
            written to ``metrics.json`` (``fixes``) and ``log.txt``.
        skipped: annotation rows and samples left out before the run (``PreparedRun.skipped``),
            written to ``metrics.json`` (``skipped``, before the samples the views skipped) and
            ``log.txt``.
        notes: adjustments made to the run (``PreparedRun.notes``), recorded likewise.
        allow_pretrain_overlap: run folds whose test subject the ``config.pretrained``
            checkpoint was trained on, labelling the run as leaking, instead of refusing.

    Returns:
        The metrics dict written to ``metrics.json`` (``compute`` records the executor, the
        device setting and the devices the folds ran on, the precision and the determinism
        flags).

    Raises:
        ConfigError: bad model options or views settings, a device this machine or cluster
            lacks, a remote executor without a view cache, or finished folds of another run in
            ``run_dir``.
        LeakageError: test subjects seen in pre-training (without ``allow_pretrain_overlap``).
        OutputError: ``run_dir`` cannot be created or written.
        PreprocessError: a sample's views fail and ``on_error="raise"``.
    """
    run_dir = Path(run_dir).absolute()  # fold tasks may run in other processes and other folders
    classes = list(protocol.classes)
    if any(s.label is None for s in samples):
        raise ConfigError("every sample needs a label: apply the protocol first")
    if executor is None:
        executor = LocalExecutor(fold_workers)
    elif fold_workers != 1:
        raise ConfigError("give either fold_workers (local executor) or an executor, not both")
    if executor.remote and cache_dir is None:
        raise ConfigError(f"the {executor.name} executor's workers read views from the view cache: give a cache folder "
                          "that every node sees at the same path")
    fold_device = executor.prepare(config.train.device)  # refuses a device this machine or cluster lacks, early
    specs = input_spec(config.model_name, **config.model_kwargs)
    check_views_config(specs, config, model_class(config.model_name), samples)
    pretrain = pretrain_overlap(config, samples, allow=allow_pretrain_overlap)
    determinism = configure_determinism(config.train.deterministic)
    settings = _config_sha1(config)
    for finished in sorted((run_dir / "folds").glob("*/predictions.csv")):  # before config.yaml is rewritten
        check_reusable(finished.parent, lambda recorded: recorded.get("config_sha1") == settings)
    if cache_dir is not None:
        make_output_dir(cache_dir, "view cache")
    make_output_dir(run_dir, "run directory")
    _attach_log(run_dir)
    dump_config(config, run_dir / "config.yaml", extra={
        "protocol": {"name": protocol.name, "classes": classes},
        "input_spec": [s.__dict__ | {"size": list(s.size)} for s in specs],
    })
    for fix in fixes:
        log.info("annotation fix: %s", fix)
    for line in notes:
        log.warning("note: %s", line)
    for line in skipped:
        log.warning("skipped: %s", line)
    if pretrain is not None and pretrain["leaking"]:
        log.warning("pre-training leak: %s saw the test subjects %s (allowed by the caller; the run is labelled leaking)",
                    pretrain["checkpoint"], ", ".join(pretrain["overlap"]))
    builder = ViewBuilder(specs, config.views, cache_dir=cache_dir, workers=workers, on_error=on_error)
    kept, arrays = builder.build(list(samples), progress=(lambda d, t: on_progress("views", d, t)) if on_progress else None)
    for line in builder.skipped:
        log.warning("skipped: %s", line)
    views = to_tensors(arrays)
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    folds = make_folds(kept, config.folds)
    log.info("%s: %d samples, %d folds, model %s, selection %s, executor %s", config.folds, len(kept), len(folds),
             config.model_name, config.selection.policy, executor.name)
    fold_config = config.model_copy(update={"train": config.train.model_copy(update={"device": fold_device})})
    inputs = FoldInputs(kept, labels, classes, fold_config, run_dir, views=None if executor.remote else views,
                        cache_dir=Path(cache_dir).absolute() if cache_dir is not None else None)
    progress = FoldProgress(len(folds), classes, workers=min(executor.parallel_folds, len(folds)),
                            reused=[f.name for f in folds if (run_dir / "folds" / f.name / "predictions.csv").is_file()])

    def on_done(position: int, result: FoldResult) -> None:
        progress.fold_done(folds[position].name, result.predictions, reused=result.reused)
        if on_fold is not None:
            on_fold(progress.done, len(folds), folds[position].name)

    results: list[FoldResult] = executor.map(run_fold, list(enumerate(folds)), inputs, on_done)
    write_predictions(pd.concat([r.predictions for r in results], ignore_index=True), run_dir / "predictions.csv")
    scheme = "LOSO" if config.folds == "loso" else config.folds
    facts = {
        "model": config.model_name,
        "label": f"{config.model_name} {scheme} ({protocol.name})" + (" [pre-training leak]" if pretrain and pretrain["leaking"] else ""),
        "selection": selection_description(config),
        "folds": {"scheme": config.folds, "subject_independent": config.folds == "loso",
                  "description": FOLD_SCHEMES[config.folds]},
        "apex_policy": config.views.apex_policy,
        "skipped": [*skipped, *builder.skipped],
        "fixes": [fix.as_dict() for fix in fixes],
        "notes": list(notes),
        "pretrain": pretrain,
        "compute": {
            "executor": executor.describe(), "device": config.train.device,
            "devices_used": sorted({r.device for r in results if r.device is not None}),
            "amp": config.train.amp, "determinism": determinism,
        },
    }
    (run_dir / RUN_FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    metrics = evaluate_run(run_dir)
    log.info("done: acc %.4f uf1 %.4f uar %.4f", metrics["acc"], metrics["uf1"], metrics["uar"])
    return metrics


def pretrain_overlap(config: RunConfig, samples: Sequence[Sample], *, allow: bool) -> dict | None:
    """Which test subjects the ``config.pretrained`` checkpoint was trained on.

    Every checkpoint merkit writes records the clips it was trained on (``trained_on``). A
    LOSO fold whose test subject is among them would be evaluated on a subject the model has
    seen: it is refused, unless ``allow`` (then the run is labelled leaking).

    Returns:
        None without ``config.pretrained``; else ``{"checkpoint", "subjects_seen", "overlap"
        (the test subject groups seen in pre-training), "leaking"}`` (``subjects_seen`` is None
        for a checkpoint that records no training clips: overlap cannot be checked).

    Raises:
        LeakageError: subjects overlap and ``allow`` is false.
    """
    if config.pretrained is None:
        return None
    from merkit.models.pretrained import read_trained_on

    seen = read_trained_on(config.pretrained)
    if seen is None:
        return {"checkpoint": config.pretrained, "subjects_seen": None, "overlap": [], "leaking": False}
    overlap = sorted({s.group for s in samples} & set(seen["subjects"]))
    if overlap and not allow:
        raise LeakageError(
            f"{config.pretrained} was pre-trained on {len(overlap)} of this run's test subjects ({', '.join(overlap[:8])}"
            f"{' ...' if len(overlap) > 8 else ''}): their folds would test on seen subjects. Pre-train on another "
            "dataset, or pass --allow-pretrain-overlap (allow_pretrain_overlap=True) to run and label the run leaking")
    return {"checkpoint": config.pretrained, "subjects_seen": len(seen["subjects"]), "overlap": overlap,
            "leaking": bool(overlap)}


def check_views_config(specs, config: RunConfig, model: torch.nn.Module | type | None = None,
                       samples: Sequence[Sample] = ()) -> None:
    """The ``views`` section's optional size/channels/num_frames must agree with the input spec;
    ``sampling: all`` (padded sequences) needs a model that reads ``<view>_mask``; flips must not
    be applied to a released min-max scaled flow.

    A flip negates u (horizontal) or v (vertical), which mirrors a flow whose 0 is no motion. The
    MEGC2019 flow release is min-max scaled per image (no motion is not 0): a negated channel
    would leave the range the model was shown, so with ``views.release_flow: minmax`` flips of a
    released flow view (or of flow rendered in its form, ``views.flow_form: release``) are
    refused (``centered`` makes them exact).

    Args:
        specs: the model's input spec. config: the run config.
        model: the model or its class (its ``takes_padded_sequences`` is checked); None: not checked.
        samples: the run's samples (a release is recognised by ``meta["precomputed_views"]``).

    Raises:
        ConfigError: a disagreement, padded sequences for a model without a mask, or a flip of a
            released min-max flow.
    """
    v = config.views
    if model is not None and v.sampling == "all" and not getattr(model, "takes_padded_sequences", False):
        raise ConfigError(f"views.sampling 'all' pads clips to the view length, but model {config.model_name!r} does "
                          "not read the padding mask; use 'uniform', 'interpolate' or 'keyframes'")
    for spec in specs:
        if v.size is not None and VIEWS[spec.name].spatial and tuple(v.size) != tuple(spec.size):
            raise ConfigError(f"views.size {list(v.size)} disagrees with the model's {spec.name} view size {list(spec.size)}")
        if v.channels is not None and spec.name in CHANNEL_VIEWS and v.channels != spec.channels:
            raise ConfigError(f"views.channels {v.channels} disagrees with the model's {spec.name} view ({spec.channels})")
        if v.num_frames is not None and spec.length is not None and v.num_frames != spec.length:
            raise ConfigError(f"views.num_frames {v.num_frames} disagrees with the model's {spec.name} length {spec.length}")
    augment = config.train.augment
    flipped = [s.name for s in specs if s.name in FLOW_VIEWS and s.name in AUGMENTED_VIEWS]
    released = v.flow_form == "release" or any("flow" in s.meta.get("precomputed_views", ()) for s in samples)
    if released and flipped and (augment.hflip or augment.vflip or augment.test_hflip) and v.release_flow == "minmax":
        raise ConfigError(
            f"train.augment flips the {flipped[0]} view, which negates u (hflip, test_hflip) or v (vflip); the released flow "
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


def member_seeds(seed: int, run_seed: int, members: int) -> list[int]:
    """The seeds of the ``members`` models (``train.members``) trained where one model would be
    trained from ``seed`` (for a LOSO fold ``run_seed * 1000 + number``): member ``m`` gets
    ``seed + (run_seed * (members - 1) + m) * 1000``. One member keeps ``seed``; the members of a
    fold of run seed ``s`` are the fold's single models of run seeds ``s * members`` ...
    ``s * members + members - 1``, so no two run seeds share a member."""
    return [seed + (run_seed * (members - 1) + m) * 1000 for m in range(members)]


def fit_members(config: RunConfig, classes: Sequence[str], views: Views, labels: torch.Tensor, seed: int, *,
                validate: Callable[[torch.nn.Module], float] | None = None,
                on_epoch: Callable[[int, float], None] | None = None,
                device: str | torch.device | None = None) -> tuple[list[torch.nn.Module], list[History]]:
    """Train ``config.train.members`` new models (:func:`new_model`, :func:`fit`) on ``views``,
    from the :func:`member_seeds` of ``seed``; the models and their histories."""
    models, histories = [], []
    for member_seed in member_seeds(seed, config.seed, config.train.members):
        model = new_model(config, classes, seed=member_seed)
        histories.append(fit(model, views, labels, config.train, seed=member_seed, validate=validate,
                             on_epoch=on_epoch, device=device))
        models.append(model)
    return models, histories


def history_record(histories: Sequence[History]) -> dict:
    """What ``history.json`` holds: the (first) model's history, and with several members every
    member's under ``members``."""
    record = dict(histories[0].__dict__)
    if len(histories) > 1:
        record["members"] = [h.__dict__ for h in histories]
    return record


def train_all(samples: Sequence[Sample], protocol: Protocol, config: RunConfig, out: str | Path, *,
              cache_dir: str | Path | None = None, workers: int = 1) -> Path:
    """Train one model on every sample with the config's fixed budget (the final model of
    ``merkit train --all-subjects``, and the pre-training stage of pre-train -> fine-tune).

    No subject is held out, so the model is never evaluated here (and ``selection`` has nothing
    to select on: the model after ``train.epochs`` epochs is kept). ``out`` is a model directory
    (:mod:`merkit.inference.model_dir`) for ``merkit predict``, and a later LOSO run on another
    dataset can start its folds from it (``config.pretrained``). Writes ``out/model.pt`` (the fold
    checkpoint format), ``out/config.yaml`` (with the protocol and the input spec) and
    ``out/history.json``.

    Returns:
        the checkpoint path; the checkpoint records the clips and subjects it was trained on
        (``trained_on``), so that a LOSO run starting from it refuses to test on them.
    """
    out = Path(out)
    configure_determinism(config.train.deterministic)
    classes = list(protocol.classes)
    specs = input_spec(config.model_name, **config.model_kwargs)
    check_views_config(specs, config, model_class(config.model_name), samples)
    if cache_dir is not None:
        make_output_dir(cache_dir, "view cache")
    make_output_dir(out, "pre-training folder")
    kept, arrays = ViewBuilder(specs, config.views, cache_dir=cache_dir, workers=workers).build(list(samples))
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    models, histories = fit_members(config, classes, to_tensors(arrays), labels, config.seed)
    dump_config(config, out / "config.yaml", extra={
        "protocol": {"name": protocol.name, "classes": classes},
        "input_spec": [s.__dict__ | {"size": list(s.size)} for s in models[0].input_spec],
    })
    (out / "history.json").write_text(json.dumps(history_record(histories)))
    path = out / "model.pt"
    save_checkpoint(models, config, classes, path, trained_on=trained_on(kept))
    return path


def save_checkpoint(models: Sequence[torch.nn.Module], config: RunConfig, classes: Sequence[str], path: Path, *,
                    trained_on: dict[str, list[str]]) -> None:
    """Write ``model.pt``: ``{"state_dict", "model" (its config section), "classes", "trained_on"
    (:func:`trained_on` of its training clips)}`` and, with several members (``train.members``),
    ``"members"``: the state dicts of the second and later ones (``state_dict`` is the first's,
    what pre-training from the checkpoint starts from). Every tensor is on the CPU, so that it
    loads on any device (:func:`merkit.models.pretrained.read_checkpoint`)."""
    saved = {"state_dict": cpu_state_dict(models[0]), "model": config.model, "classes": list(classes),
             "trained_on": trained_on}
    if len(models) > 1:
        saved["members"] = [cpu_state_dict(m) for m in models[1:]]
    torch.save(saved, path)


@dataclass
class FoldInputs:
    """What every fold of a run shares; an executor ships it once to each worker.

    Attributes:
        samples: every sample of the run (with views); a fold indexes into them.
        labels: ``(N,)`` class indices of ``samples``.
        run_dir: the run directory (absolute); fold ``f`` writes ``run_dir/folds/<f.name>/``.
        views: the views of ``samples``; None: read from ``cache_dir`` (views missing there are
            built) by the first fold a worker runs, and kept for its next folds.
    """

    samples: Sequence[Sample]
    labels: torch.Tensor
    classes: list[str]
    config: RunConfig
    run_dir: Path
    views: Views | None = field(default=None, repr=False)
    cache_dir: Path | None = None


@dataclass
class FoldResult:
    """A fold's test predictions (the rows of ``predictions.csv``), the device it trained on
    (None for a fold reused from a run that did not record it) and whether it was reused."""

    predictions: pd.DataFrame
    device: str | None
    reused: bool = False


def _config_sha1(config: RunConfig) -> str:
    """SHA-1 of the settings a fold's predictions depend on (:func:`merkit.config.result_settings`)."""
    return hashlib.sha1(json.dumps(result_settings(config), sort_keys=True).encode()).hexdigest()


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


def check_reusable(fold_dir: Path, matches: Callable[[dict], bool]) -> dict:
    """The fingerprint a finished fold in ``fold_dir`` records; raise unless it ``matches``."""
    recorded_path = fold_dir / "fold.json"
    try:
        recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict) or not matches(recorded):
        raise ConfigError(
            f"{fold_dir} holds a finished fold of another run (its config, classes or test clips differ, or it "
            "records none): resuming would mix results; write this run to a new run directory or delete that one")
    return recorded


def _verify_fold(done: Path, recorded: dict) -> tuple[pd.DataFrame | None, str]:
    """A finished fold's predictions if they are the ones written when the fold finished
    (checksum, row count, test clips), else None and what is wrong."""
    data = done.read_bytes()
    if recorded.get("predictions_sha1") is None:
        return None, "its fold.json records no checksum of the predictions (an older run)"
    if hashlib.sha1(data).hexdigest() != recorded["predictions_sha1"]:
        return None, "predictions.csv differs from the file written when the fold finished (checksum)"
    try:
        table = read_predictions(done)
    except (MetricsError, ValueError) as err:
        return None, f"predictions.csv is unreadable ({err})"
    expected = [sample_id for sample_id, _ in recorded["test"]]
    if len(table) != len(expected) or table["sample_id"].tolist() != expected:
        return None, f"predictions.csv holds {len(table)} rows for {len(expected)} test clips"
    return table, ""


def reuse_finished_fold(fold_dir: Path, fingerprint: dict, name: str) -> pd.DataFrame | None:
    """The predictions of the finished fold in ``fold_dir`` if they can be reused, else None.

    A fold is finished when its ``predictions.csv`` exists. It is reused when its ``fold.json``
    records ``fingerprint`` (the settings and clips it was trained for) and the predictions are
    the ones written when it finished (checksum, row count, test clips); otherwise the damaged
    predictions are removed (with a warning in the log) and the fold is to be trained again.

    Raises:
        ConfigError: the fold records another fingerprint (another run's fold).
    """
    done = fold_dir / "predictions.csv"
    if not done.is_file():
        return None
    recorded = check_reusable(fold_dir, lambda r: {k: v for k, v in r.items() if k != "predictions_sha1"} == fingerprint)
    table, problem = _verify_fold(done, recorded)
    if table is not None:
        log.info("fold %s: reusing %s", name, done)
        return table
    log.warning("fold %s: %s; training it again", name, problem)
    done.unlink()
    return None


def write_finished_fold(fold_dir: Path, table: pd.DataFrame, fingerprint: dict) -> pd.DataFrame:
    """Write a fold's predictions and ``fold.json`` (``fingerprint`` + the predictions' checksum).

    ``fold.json`` is written first; the fold counts as finished once ``predictions.csv`` is
    renamed into place. Returns the predictions as read back (the same frame a resumed run gets).
    """
    done = fold_dir / "predictions.csv"
    staged = fold_dir / "predictions.staged.csv"
    checksum = write_predictions(table, staged)
    (fold_dir / "fold.json").write_text(json.dumps({**fingerprint, "predictions_sha1": checksum}))
    staged.replace(done)
    return read_predictions(done)


def trained_on(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """What a checkpoint records about its training data: sample ids and subject groups."""
    return {"samples": sorted(s.sample_id for s in samples), "subjects": sorted({s.group for s in samples})}


def run_fold(numbered_fold: tuple[int, Fold], inputs: FoldInputs) -> FoldResult:
    """Train, select and predict one fold and write its directory; reuse it when it is finished.

    The one fold function of every executor: it sets the run's determinism flags in the process
    it runs in, appends to the run's ``log.txt``, and reads the views from the cache when the
    inputs carry none.

    Args:
        numbered_fold: the fold's position in the run (its seed is ``config.seed * 1000 +
            number``) and the fold.
        inputs: what the folds of the run share.

    Raises:
        ConfigError: the fold directory holds a finished fold of another run.
        LeakageError: a subject in both the training and the test part.
    """
    number, fold = numbered_fold
    samples, labels, classes, config = inputs.samples, inputs.labels, inputs.classes, inputs.config
    configure_determinism(config.train.deterministic)
    inputs.run_dir.mkdir(parents=True, exist_ok=True)
    _attach_log(inputs.run_dir)
    # copies: index arrays arrive read-only from Ray's object store, and torch warns on those
    fold = replace(fold, train_index=np.array(fold.train_index), test_index=np.array(fold.test_index))
    fold_dir = inputs.run_dir / "folds" / fold.name
    fingerprint = _fold_fingerprint(fold, samples, labels, classes, config)
    reused = reuse_finished_fold(fold_dir, fingerprint, fold.name)
    if reused is not None:
        history_file = fold_dir / "history.json"
        recorded = json.loads(history_file.read_text()).get("device") if history_file.is_file() else None
        return FoldResult(reused, recorded, reused=True)
    _assert_fold_disjoint(fold, [samples[i] for i in fold.train_index], [samples[i] for i in fold.test_index])
    if inputs.views is None:  # kept for the worker's next folds of this run
        inputs.views = _views_from_cache(samples, config, inputs.cache_dir)
    views = inputs.views
    device = resolve_device(config.train.device)
    seed = config.seed * 1000 + number
    train_index = fold.train_index
    train_labels = labels[train_index]
    if config.shuffle_labels:
        train_labels = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))]
    validate = None
    if config.selection.policy == "val-split":
        fit_index, val_index = _validation_split(samples, train_index, config.selection.val_fraction, seed)
        _assert_fold_disjoint(fold, [samples[i] for i in val_index], [samples[i] for i in fold.test_index])
        position = {int(i): k for k, i in enumerate(train_index)}
        fit_labels = train_labels[[position[int(i)] for i in fit_index]]
        val_views, val_labels = place_views(subset(views, val_index), device), labels[val_index].numpy()

        def validate(m) -> float:
            predicted = predict_proba(m, val_views, mirror=config.train.augment.test_hflip).argmax(1)
            return unweighted_f1(val_labels, predicted, classes)

        train_index, train_labels = fit_index, fit_labels
    models, histories = fit_members(config, classes, subset(views, train_index), train_labels, seed, validate=validate,
                                    on_epoch=lambda e, loss: log.debug("fold %s epoch %d loss %.4f", fold.name, e, loss),
                                    device=device)
    history = histories[0]
    probabilities = predict_members(models, subset(views, fold.test_index), config.train.augment.test_hflip)
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(models, config, classes, fold_dir / "model.pt",
                    trained_on=trained_on([samples[i] for i in fold.train_index]))
    (fold_dir / "history.json").write_text(json.dumps(history_record(histories)))
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
    written = write_finished_fold(fold_dir, table, fingerprint)
    selected = (f"epoch {history.best_epoch} (best validation UF1)" if history.best_epoch is not None
                else f"the last epoch ({config.train.epochs})")
    log.info("fold %s: %d test samples, acc %.3f, model of %s, device %s", fold.name, len(table),
             float((table.y_true == table.y_pred).mean()), selected, history.device)
    return FoldResult(written, history.device)


def _views_from_cache(samples: Sequence[Sample], config: RunConfig, cache_dir: Path | None) -> Views:
    """The views of ``samples`` read from the view cache; a view missing there is built (and cached)."""
    specs = input_spec(config.model_name, **config.model_kwargs)
    kept, arrays = ViewBuilder(specs, config.views, cache_dir=cache_dir).build(list(samples))
    if len(kept) != len(samples):  # cannot happen with on_error="raise"; guards the fold indices
        raise ConfigError(f"views of {len(samples) - len(kept)} samples could not be built on this worker")
    return to_tensors(arrays)


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
