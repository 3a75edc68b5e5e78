"""Classification metrics of micro-expression recognition, as pure functions over labels.

Every metric takes ``y_true`` and ``y_pred`` (1-D, length N: class indices in ``[0, C)`` or
class names) and ``classes``, the protocol's classes in index order (names, or their number C).

Averaging convention
--------------------
UF1, UAR and macro precision/recall average over the protocol's classes **that have support in
y_true**. A class absent from ``y_true`` has no defined recall and is left out of the average
(it would otherwise count as 0 and punish a fold or dataset for lacking that class). A class
present in ``y_true`` but never predicted counts with recall = precision = F1 = 0. Over a
pooled LOSO run (all folds together, the MEGC convention) every class normally has support, so
the averages run over all C classes.

UF1 and macro-F1
----------------
``metrics.json`` holds two F1 summaries. ``uf1`` is the MEGC unweighted F1: the mean of the
per-class F1 scores. ``macro_f1`` is MADV-Net's macro-F1 (its Eqs. 28-30): the harmonic mean of
macro precision and macro recall. They differ whenever the classes' precision and recall are
unbalanced, and macro-F1 is never smaller than UF1 (the harmonic mean is concave). Compare a
result with a paper's number under the definition that paper uses.

:func:`compute_metrics` turns a predictions table (the ``predictions.csv`` the LOSO runner
writes) into the ``metrics.json`` dictionary; :func:`evaluate_run` is the one evaluation of a
run directory (training calls it, and so does ``merkit evaluate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.typing import ArrayLike

from merkit.errors import ConfigError, MetricsError, OutputError
from merkit.eval.reports import confusion_matrix_png

logger = logging.getLogger(__name__)

Classes = Sequence[str] | int

#: Columns every predictions table must have (besides the optional ``p_<class>`` probabilities).
PREDICTION_COLUMNS: tuple[str, ...] = ("sample_id", "dataset", "subject", "fold", "y_true", "y_pred")
#: Columns read as strings, so that subject ``"01"`` stays ``"01"``.
STRING_COLUMNS: tuple[str, ...] = ("sample_id", "dataset", "subject", "fold")


def _class_names(classes: Classes) -> tuple[str, ...]:
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if classes < 1:
            raise MetricsError(f"classes={classes}: expected at least one class")
        return tuple(str(index) for index in range(classes))
    if isinstance(classes, str):
        raise MetricsError(f"classes={classes!r}: expected a sequence of class names or a class count")
    names = tuple(str(name) for name in classes)
    if not names:
        raise MetricsError("classes is empty: expected the protocol's class names")
    if len(set(names)) != len(names):
        raise MetricsError(f"classes {list(names)} contain duplicates")
    return names


def _encode(labels: ArrayLike, names: tuple[str, ...], what: str) -> np.ndarray:
    """Labels as class indices, shape (N,) int64; names are looked up in ``names``."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise MetricsError(f"{what} has shape {array.shape}: expected a 1-D array of labels")
    expected = f"a class index in [0, {len(names)}) or one of the class names {list(names)}"
    if array.dtype.kind in "USO" and all(isinstance(label, str) for label in array):
        lookup = {name: index for index, name in enumerate(names)}
        unknown = [(position, label) for position, label in enumerate(array) if label not in lookup]
        if unknown:
            position, label = unknown[0]
            raise MetricsError(f"{what}[{position}] = {label!r} ({len(unknown)} unknown in all): expected {expected}")
        return np.array([lookup[label] for label in array], dtype=np.int64)
    if array.dtype.kind == "b":
        raise MetricsError(f"{what} holds booleans: expected {expected}")
    try:
        values = array.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricsError(f"{what} holds values of type {array.dtype}: expected {expected}") from None
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= len(names))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise MetricsError(
            f"{what}[{position}] = {array.tolist()[position]!r} ({int(bad.sum())} bad in all): expected {expected}"
        )
    return values.astype(np.int64)


def _validated(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> tuple[np.ndarray, np.ndarray, int]:
    names = _class_names(classes)
    true_index = _encode(y_true, names, "y_true")
    pred_index = _encode(y_pred, names, "y_pred")
    if len(true_index) != len(pred_index):
        raise MetricsError(
            f"y_true has {len(true_index)} labels but y_pred has {len(pred_index)}: expected equal lengths"
        )
    if len(true_index) == 0:
        raise MetricsError("y_true and y_pred are empty: expected at least one sample")
    return true_index, pred_index, len(names)


def _confusion(true_index: np.ndarray, pred_index: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(true_index * num_classes + pred_index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class support, precision, recall and F1 of a confusion matrix (C, C), each (C,).

    Recall and F1 are NaN for classes without support; precision is 0 for a class never
    predicted (scikit-learn's ``zero_division=0``).
    """
    true_positives = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, true_positives / support, np.nan)
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        f1 = np.where(support > 0, 2 * true_positives / (support + predicted), np.nan)
    return {"support": support, "precision": precision, "recall": recall, "f1": f1}


def _summary(cm: np.ndarray) -> dict[str, float]:
    """ACC, UF1, UAR and macro-F1 (harmonic mean) of a confusion matrix (C, C) with N > 0."""
    scores = _per_class_scores(cm)
    present = scores["support"] > 0
    macro_precision = float(scores["precision"][present].mean())
    macro_recall = float(scores["recall"][present].mean())
    denominator = macro_precision + macro_recall
    return {
        "acc": float(np.trace(cm) / cm.sum()),
        "uf1": float(scores["f1"][present].mean()),
        "uar": macro_recall,
        "macro_f1": 2 * macro_precision * macro_recall / denominator if denominator > 0 else 0.0,
    }


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class.

    Args:
        y_true, y_pred: ``(N,)`` class indices in ``[0, C)`` or class names.
        classes: the protocol's classes in index order, or their number C.

    Returns:
        ``(C, C)`` int64 counts: ``cm[i, j]`` counts samples of true class i predicted as j.

    Raises:
        MetricsError: empty input, different lengths, or a label that is not one of the classes.
    """
    return _confusion(*_validated(y_true, y_pred, classes))


def accuracy(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> float:
    """Fraction of samples predicted correctly.

    Parameters and raises as :func:`confusion_matrix`.

    Returns:
        A float in [0, 1].
    """
    true_index, pred_index, _ = _validated(y_true, y_pred, classes)
    return float(np.mean(true_index == pred_index))


def per_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> np.ndarray:
    """Per-class accuracy, i.e. the recall of each class.

    Parameters and raises as :func:`confusion_matrix`.

    Returns:
        ``(C,)`` float64 ``TP_c / support_c``; NaN for a class absent from ``y_true``.
    """
    return _per_class_scores(confusion_matrix(y_true, y_pred, classes))["recall"]


def unweighted_average_recall(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> float:
    """UAR: mean per-class recall over the classes with support in ``y_true``.

    Parameters and raises as :func:`confusion_matrix`.

    Returns:
        A float in [0, 1].
    """
    return _summary(confusion_matrix(y_true, y_pred, classes))["uar"]


def unweighted_f1(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> float:
    """UF1 (MEGC): mean per-class F1 = 2TP / (2TP + FP + FN) over the classes with support.

    Equals scikit-learn's ``f1_score(average="macro", labels=<classes present in y_true>)``.
    Parameters and raises as :func:`confusion_matrix`.

    Returns:
        A float in [0, 1].
    """
    return _summary(confusion_matrix(y_true, y_pred, classes))["uf1"]


def macro_f1_hm(y_true: ArrayLike, y_pred: ArrayLike, classes: Classes) -> float:
    """MADV-Net's macro-F1 (its Eqs. 28-30): harmonic mean of macro precision and macro recall.

    Macro precision and recall average over the classes with support in ``y_true``; a class
    never predicted has precision 0 (the paper leaves 0/0 undefined; this is scikit-learn's
    ``zero_division=0``). Unlike UF1 this is not the mean of per-class F1 scores and is never
    smaller than it. Parameters and raises as :func:`confusion_matrix`.

    Returns:
        A float in [0, 1]; 0 when macro precision and macro recall are both 0.
    """
    return _summary(confusion_matrix(y_true, y_pred, classes))["macro_f1"]


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def compute_metrics(predictions: pd.DataFrame, classes: Classes) -> dict[str, Any]:
    """All metrics of a predictions table, as written to ``metrics.json``.

    Pooled metrics treat all folds as one test set (the MEGC convention). Per-subject metrics
    are computed on each subject's own samples (averaging over the classes that subject has)
    and then averaged with equal weight per subject; a subject is identified by
    ``(dataset, subject)`` since subject ids are only unique within a dataset.

    Args:
        predictions: one row per test sample with columns ``sample_id, dataset, subject, fold, y_true,
            y_pred`` (labels as class indices or names); extra columns (``p_<class>`` probabilities) are
            ignored.
        classes: the protocol's classes in index order, or their number C.

    Returns:
        A dict with keys ``acc, uf1, uar, macro_f1`` (pooled floats); ``per_class``: ``{class: {"recall",
            "f1", "support"}}`` (recall and F1 None without support); ``per_dataset``: ``{dataset: {"acc",
            "uf1", "uar", "n_samples"}}``; ``per_subject_mean``: ``{"acc", "uf1", "uar"}``; ``n_folds``;
            ``n_samples``; ``confusion_matrix`` (C x C nested list, rows true); ``classes`` (list of names).

    Raises:
        MetricsError: a required column is missing, the table is empty, a sample id repeats, or a label is not
            one of the classes (the message gives the row position).
    """
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise MetricsError(f"predictions table lacks columns {missing}: expected {list(PREDICTION_COLUMNS)}")
    duplicated = predictions["sample_id"].astype(str).duplicated()
    if duplicated.any():
        raise MetricsError(f"sample_id {predictions['sample_id'][duplicated].iloc[0]!r} is predicted more than once")
    names = _class_names(classes)
    true_index, pred_index, num_classes = _validated(
        predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy(), names
    )
    cm = _confusion(true_index, pred_index, num_classes)
    per_class = _per_class_scores(cm)

    datasets = predictions["dataset"].astype(str).to_numpy()
    subjects = predictions["subject"].astype(str).to_numpy()

    def summary_of(mask: np.ndarray) -> dict[str, float]:
        return _summary(_confusion(true_index[mask], pred_index[mask], num_classes))

    per_dataset = {}
    for dataset in sorted(set(datasets)):
        mask = datasets == dataset
        scores = summary_of(mask)
        per_dataset[dataset] = {"acc": scores["acc"], "uf1": scores["uf1"], "uar": scores["uar"],
                                "n_samples": int(mask.sum())}
    subject_scores = [
        summary_of((datasets == dataset) & (subjects == subject))
        for dataset, subject in sorted(set(zip(datasets, subjects)))
    ]
    return {
        **_summary(cm),
        "per_class": {
            name: {"recall": _optional(per_class["recall"][index]), "f1": _optional(per_class["f1"][index]),
                   "support": int(per_class["support"][index])}
            for index, name in enumerate(names)
        },
        "per_dataset": per_dataset,
        "per_subject_mean": {key: float(np.mean([s[key] for s in subject_scores])) for key in ("acc", "uf1", "uar")},
        "n_folds": int(predictions["fold"].astype(str).nunique()),
        "n_samples": int(len(predictions)),
        "confusion_matrix": cm.tolist(),
        "classes": list(names),
    }


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a ``predictions.csv``, keeping ids as strings (subject ``"01"`` stays ``"01"``).

    Args:
        path: the CSV file.

    Returns:
        A DataFrame: columns ``sample_id, dataset, subject, fold`` as str; ``y_true, y_pred`` as read (indices
            or names); any ``p_<class>`` probability columns.

    Raises:
        MetricsError: the file does not exist, lacks a required column, or has an empty cell in one (the
            message names the file, the column and the CSV line).
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: predictions file not found")
    table = pd.read_csv(path, dtype={column: str for column in STRING_COLUMNS})
    missing = [column for column in PREDICTION_COLUMNS if column not in table.columns]
    if missing:
        raise MetricsError(f"{path}: missing column(s) {missing}; expected columns {list(PREDICTION_COLUMNS)}")
    for column in PREDICTION_COLUMNS:
        empty = table[column].isna().to_numpy()
        if empty.any():
            line = int(np.flatnonzero(empty)[0]) + 2  # 1-based, after the header line
            raise MetricsError(f"{path}, line {line}: empty {column!r}")
    return table


#: decimals of the probabilities in a predictions file: the same text whether the table is
#: written from a fresh fold (float32) or from a reused fold's file (float64)
PROBABILITY_FORMAT = "%.6g"


def write_predictions(table: pd.DataFrame, path: str | Path) -> str:
    """Write a predictions table as CSV, atomically, with one number format.

    Args:
        table: columns :data:`PREDICTION_COLUMNS` then ``p_<class>`` probabilities.
        path: the CSV file to write.

    Returns:
        The SHA-1 of the bytes written (a finished fold records it to verify the file on resume).
    """
    path = Path(path)
    text = table.to_csv(index=False, float_format=PROBABILITY_FORMAT, lineterminator="\n")
    data = text.encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha1(data).hexdigest()


#: the file in a run directory where training records its run facts (see :func:`evaluate_run`)
RUN_FACTS_FILE = "run.json"


def read_run_facts(run_dir: str | Path) -> dict[str, Any] | None:
    """The run facts training recorded in ``run_dir/run.json`` (None when there is none).

    Raises:
        MetricsError: the file is not a JSON object.
    """
    path = Path(run_dir) / RUN_FACTS_FILE
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        facts = None
    if not isinstance(facts, dict):
        raise MetricsError(f"{path}: expected a JSON object (the run facts training wrote)")
    return facts


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Compute a run's metrics from its saved predictions and write its report files.

    The one evaluation of a run directory: training calls it after writing the predictions and
    the run facts, and ``merkit evaluate`` calls it again. Its inputs are
    ``predictions.csv``, ``config.yaml`` (``protocol.classes``) and ``run.json`` (the run facts
    training recorded: model label, selection, apex policy, skipped samples and rows, loader
    fixes, notes, pre-training overlap), never its own outputs, so evaluating again writes the
    same ``metrics.json`` and ``confusion_matrix.png`` (files whose content is unchanged are not
    rewritten). Without ``run.json`` (predictions made elsewhere) the facts are the config's
    ``selection`` (when it has one) and the folder name as the label.

    Args:
        run_dir: a run directory (``runs/<name>/``).

    Returns:
        The metrics written: :func:`compute_metrics`'s dict plus the run facts.

    Raises:
        ConfigError: ``config.yaml`` is missing or lacks a ``protocol.classes`` list.
        MetricsError: ``predictions.csv`` is missing or malformed, ``run.json`` is not a JSON
            object or repeats a computed key.
        OutputError: a report file differs and cannot be written (read-only run directory).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: run config not found")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_path}: not valid YAML ({err})") from None
    protocol = config.get("protocol") if isinstance(config, dict) else None
    classes = protocol.get("classes") if isinstance(protocol, dict) else None
    if not isinstance(classes, list) or not classes:
        raise ConfigError(f"{config_path}: expected 'protocol.classes' to be a non-empty list of class names")

    metrics = compute_metrics(read_predictions(run_dir / "predictions.csv"), classes)
    facts = read_run_facts(run_dir)
    if facts is None:
        facts = {"selection": config["selection"]} if config.get("selection") is not None else {}
        label = run_dir.name
    else:
        label = str(facts.get("label", run_dir.name))
    clashing = sorted(set(facts) & set(metrics))
    if clashing:
        raise MetricsError(f"{run_dir / RUN_FACTS_FILE}: run facts repeat computed metrics {clashing}")
    metrics.update(facts)
    _write_if_changed(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    _write_if_changed(run_dir / "confusion_matrix.png",
                      confusion_matrix_png(np.array(metrics["confusion_matrix"]), metrics["classes"], title=label))
    logger.info("%s: ACC %.4f UF1 %.4f UAR %.4f over %d samples", run_dir, metrics["acc"], metrics["uf1"],
                metrics["uar"], metrics["n_samples"])
    return metrics


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    try:
        path.write_bytes(data)
    except OSError as err:
        raise OutputError(f"{path}: cannot write the report ({err.strerror or err})") from None
