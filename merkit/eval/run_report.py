"""``merkit report RUN``: one self-contained HTML page of a LOSO run, and its figures as PNGs.

Built from what the run directory holds (``config.yaml``, ``predictions.csv``, ``metrics.json``,
``folds/<fold>/history.json`` and ``model.pt``) plus, for the figures that need the models'
inputs (t-SNE, explanation maps), the run's dataset as ``config.yaml`` records it (``dataset``:
name, root, protocol; ``root`` may be overridden). Views come from the view cache when it holds
them. Every test sample is fed to its own fold's model, the one that predicted it; the report
checks that the probabilities come out as ``predictions.csv`` recorded them and says so.

Figures (``<out>/``): ``confusion_matrix.png``, ``per_class.png``, ``per_subject.png``,
``training_curves.png``, ``tsne.png`` (penultimate features of the test samples, standardised
per fold since each fold's model has its own feature space; colour = true class, cross =
misclassified), ``maps.png`` (the model's explanation of a few test samples: one per class,
correctly classified where possible; see :mod:`merkit.eval.explain`).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from merkit.errors import ConfigError, MerkitError
from merkit.eval.metrics import accuracy, compute_metrics, read_predictions, unweighted_f1
from merkit.eval.plots import (
    explanation_panel,
    plot_class_scores,
    plot_embedding,
    plot_maps,
    plot_subject_scores,
    plot_training_curves,
)
from merkit.eval.reports import plot_confusion_matrix

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What :func:`write_report` wrote.

    Attributes:
        html: the report page. figures: figure name -> PNG. notes: what could not be drawn and
        why, and the checks made. explained: the sample ids of the maps figure, in row order,
        with their explanations (for tests and further use).
    """

    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explained: list[tuple[str, Any]] = field(default_factory=list)


def subject_scores(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Accuracy, UF1 and sample count per test subject (``dataset/subject``), sorted by subject."""
    rows = {}
    for (dataset, subject), part in predictions.groupby(["dataset", "subject"], sort=True):
        name = subject if predictions["dataset"].nunique() == 1 else f"{dataset}/{subject}"
        rows[name] = {"acc": accuracy(part["y_true"].to_numpy(), part["y_pred"].to_numpy(), classes),
                      "uf1": unweighted_f1(part["y_true"].to_numpy(), part["y_pred"].to_numpy(), classes),
                      "n": len(part)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _run_config(run_dir: Path) -> tuple[Any, list[str], str | None]:
    from merkit.inference.model_dir import read_run_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: run config not found; is {run_dir} a run directory?")
    config, classes, protocol = read_run_config(path)
    if not classes:
        raise ConfigError(f"{path}: records no protocol.classes")
    return config, list(classes), protocol


def _test_samples(config, protocol: str | None, predictions: pd.DataFrame, root: str | Path | None,
                  dataset: str | None):
    from merkit.data.protocols import apply_protocol
    from merkit.data.registry import load_dataset

    dataset = dataset or config.dataset.name
    samples = apply_protocol(load_dataset(dataset, root if root is not None else config.dataset.root).samples,
                             protocol or config.dataset.protocol)
    by_id = {s.sample_id: s for s in samples}
    missing = [i for i in predictions["sample_id"] if i not in by_id]
    if missing:
        raise ConfigError(f"dataset {dataset} no longer holds {len(missing)} predicted clip(s), e.g. {missing[0]}")
    return by_id


def _fold_outputs(run_dir: Path, predictions: pd.DataFrame, by_id: dict, config, classes: list[str],
                  cache_dir: str | Path | None, device: str, explain_ids: set[str]) -> tuple[dict, list[str]]:
    """Per test sample: penultimate features, recomputed probabilities, explanation (if asked)."""
    from merkit.eval.explain import explain_views, penultimate_features
    from merkit.inference.model_dir import load_models, read_model_dir
    from merkit.preprocess.pipeline import ViewBuilder
    from merkit.train.trainer import predict_members

    outputs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for fold, part in predictions.groupby("fold", sort=True):
        fold_dir = run_dir / "folds" / str(fold)
        if not (fold_dir / "model.pt").is_file():
            notes.append(f"fold {fold}: no model.pt; its samples are left out of the t-SNE and maps")
            continue
        models = load_models(read_model_dir(fold_dir), device)  # the fold's members (train.members)
        model = models[0]
        samples = [by_id[i] for i in part["sample_id"]]
        kept, arrays = ViewBuilder(model.input_spec, config.views, cache_dir=cache_dir).build(samples)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        features = penultimate_features(model, tensors).numpy()  # the t-SNE shows the first member's features
        probabilities = predict_members(models, tensors, config.train.augment.test_hflip)
        for index, sample in enumerate(kept):
            entry = {"fold": str(fold), "features": features[index], "probabilities": probabilities[index]}
            if sample.sample_id in explain_ids:
                views = {k: v[index:index + 1] for k, v in arrays.items()}
                row = part[part["sample_id"] == sample.sample_id].iloc[0]
                entry["explanation"] = explain_views(models, views, int(_index(row["y_pred"], classes)),
                                                     config.model_name)
            outputs[sample.sample_id] = entry
    return outputs, notes


def _index(label: Any, classes: list[str]) -> int:
    return classes.index(label) if isinstance(label, str) and not label.isdigit() else int(label)


def _choose_explained(predictions: pd.DataFrame, classes: list[str], count: int) -> list[str]:
    """Up to ``count`` test samples, one per true class in class order, correctly classified where
    possible (first in file order)."""
    chosen = []
    true_index = predictions["y_true"].map(lambda v: _index(v, classes))
    pred_index = predictions["y_pred"].map(lambda v: _index(v, classes))
    for k in range(len(classes)):
        mine = predictions[true_index == k]
        if mine.empty:
            continue
        right = mine[pred_index[mine.index] == k]
        chosen.append(str((right if not right.empty else mine).iloc[0]["sample_id"]))
        if len(chosen) == count:
            break
    return chosen


def _tsne(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE (Barnes-Hut, on one thread: deterministic, and OpenMP threads on a busy machine
    made it 15-30x slower)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3)))
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def write_report(run_dir: str | Path, out: str | Path | None = None, *, dataset: str | None = None,
                 root: str | Path | None = None, cache_dir: str | Path | None = ".merkit-cache", device: str = "cpu", max_maps: int = 5) -> RunReport:
    """Write ``report.html`` and the figures of a LOSO run directory.

    Args:
        run_dir: the run directory.
        out: output folder (default ``<run_dir>/report``).
        dataset, root: the run's dataset and its root (default: those ``config.yaml`` records).
        cache_dir: view cache to read (and fill).
        device: where the fold models run.
        max_maps: test samples in the maps figure.

    Returns:
        :class:`RunReport`.

    Raises:
        ConfigError: not a run directory. MetricsError: a malformed ``predictions.csv``.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    config, classes, protocol = _run_config(run_dir)
    predictions = read_predictions(run_dir / "predictions.csv")
    metrics = compute_metrics(predictions, classes)
    recorded = run_dir / "metrics.json"
    if recorded.is_file():
        metrics["selection"] = json.loads(recorded.read_text()).get("selection")
    report = RunReport(html=out / "report.html")
    title = f"{config.model_name} on {config.dataset.name} ({protocol or config.dataset.protocol})"
    figures = report.figures
    figures["confusion matrix"] = plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), classes,
                                                        out / "confusion_matrix.png", title=title)
    figures["per class"] = plot_class_scores(metrics["per_class"], out / "per_class.png", title="recall and F1 per class")
    figures["per subject"] = plot_subject_scores(subject_scores(predictions, classes), out / "per_subject.png",
                                                 title="accuracy and UF1 per test subject")
    histories = {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "folds").glob("*/history.json"))}
    if histories:
        figures["training curves"] = plot_training_curves(histories, out / "training_curves.png")
    else:
        report.notes.append("no folds/*/history.json: training curves not drawn")

    explain_ids = _choose_explained(predictions, classes, max_maps)
    try:
        by_id = _test_samples(config, protocol, predictions, root, dataset)
        outputs, notes = _fold_outputs(run_dir, predictions, by_id, config, classes, cache_dir, device, set(explain_ids))
        report.notes += notes
    except MerkitError as err:
        outputs = {}
        report.notes.append(f"t-SNE and maps need the run's test clips, which could not be loaded ({type(err).__name__}: "
                            f"{err}); give the dataset (--dataset, --root)")
    if outputs:
        _check_probabilities(predictions, outputs, classes, report)
        _draw_model_figures(predictions, outputs, classes, explain_ids, config, out, report)
    report.html.write_text(_html(title, run_dir, metrics, figures, report.notes, config))
    return report


def _check_probabilities(predictions: pd.DataFrame, outputs: dict, classes: list[str], report: RunReport) -> None:
    columns = [f"p_{c}" for c in classes]
    if not set(columns) <= set(predictions.columns):
        return
    recorded = predictions.set_index("sample_id").loc[list(outputs), columns].to_numpy(dtype=float)
    recomputed = np.stack([outputs[i]["probabilities"] for i in outputs])
    difference = float(np.abs(recorded - recomputed).max())
    if difference < 1e-4:
        report.notes.append(f"check: the fold models reproduce predictions.csv's probabilities for all {len(outputs)} "
                            f"test samples (largest difference {difference:.1e})")
    else:
        report.notes.append(f"warning: the fold models give probabilities up to {difference:.3f} away from "
                            "predictions.csv (views or weights changed since the run?)")


def _draw_model_figures(predictions: pd.DataFrame, outputs: dict, classes: list[str], explain_ids: list[str],
                        config, out: Path, report: RunReport) -> None:
    table = predictions.set_index("sample_id")
    ids = list(outputs)
    if len(ids) >= 5:
        features = np.stack([outputs[i]["features"] for i in ids]).astype(np.float64)
        folds = np.array([outputs[i]["fold"] for i in ids])
        for fold in set(folds):  # each fold's model has its own feature space
            part = folds == fold
            features[part] = (features[part] - features[part].mean(0)) / (features[part].std(0) + 1e-8)
        points = _tsne(features, config.seed)
        true = [classes[_index(table.loc[i, "y_true"], classes)] for i in ids]
        correct = [_index(table.loc[i, "y_true"], classes) == _index(table.loc[i, "y_pred"], classes) for i in ids]
        report.figures["t-SNE"] = plot_embedding(points, true, correct, classes, out / "tsne.png",
                                                 title=f"t-SNE of penultimate features ({len(ids)} test samples)")
    else:
        report.notes.append("fewer than 5 test samples: no t-SNE")
    panels = []
    for sample_id in explain_ids:
        explanation = outputs.get(sample_id, {}).get("explanation")
        if explanation is None:
            continue
        row = table.loc[sample_id]
        label = (f"{sample_id}\ntrue {classes[_index(row['y_true'], classes)]}, "
                 f"predicted {classes[_index(row['y_pred'], classes)]}")
        panels.append(explanation_panel(explanation, label))
        report.explained.append((sample_id, explanation))
    if panels:
        report.figures["maps"] = plot_maps(panels, out / "maps.png",
                                           title=f"{config.model_name}: {report.explained[0][1].method}")


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(title: str, run_dir: Path, metrics: dict, figures: dict[str, Path], notes: list[str], config) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(name)}</td><td>{value}</td></tr>" for name, value in (
        ("ACC (pooled)", f"{metrics['acc']:.4f}"), ("UF1 (pooled)", f"{metrics['uf1']:.4f}"),
        ("UAR (pooled)", f"{metrics['uar']:.4f}"), ("macro F1", f"{metrics['macro_f1']:.4f}"),
        ("per-subject mean ACC / UF1 / UAR", " / ".join(f"{metrics['per_subject_mean'][k]:.4f}" for k in ("acc", "uf1", "uar"))),
        ("test samples / folds", f"{metrics['n_samples']} / {metrics['n_folds']}"),
        ("selection", esc(str((metrics.get("selection") or {}).get("description", "not recorded")))),
    ))
    per_dataset = ""
    if len(metrics.get("per_dataset", {})) > 1:
        per_dataset = "<h2>Per source dataset</h2><table><tr><th>dataset</th><th>n</th><th>ACC</th><th>UF1</th><th>UAR</th></tr>" + "".join(
            f"<tr><td>{esc(name)}</td><td>{m['n_samples']}</td><td>{m['acc']:.4f}</td><td>{m['uf1']:.4f}</td><td>{m['uar']:.4f}</td></tr>"
            for name, m in metrics["per_dataset"].items()) + "</table>"
    images = "".join(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='{_image(path)}'>" for name, path in figures.items())
    note_list = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{esc(title)}</h1>
<p>Run directory <code>{esc(str(run_dir))}</code>; leave-one-subject-out, metrics pooled over folds (MEGC convention),
recomputed from <code>predictions.csv</code>. Model <code>{esc(config.model_name)}</code>, seed {config.seed}.</p>
<table>{rows}</table>{per_dataset}
<h2>Notes</h2><ul>{note_list or '<li>none</li>'}</ul>
{images}
</body></html>
"""
