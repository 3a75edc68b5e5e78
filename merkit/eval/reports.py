"""Reports built from saved metrics: confusion-matrix figures and result tables.

Figures are drawn on matplotlib's Agg canvas directly, so no global backend is switched and
nothing needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from rich.table import Table

from merkit.errors import MetricsError


def confusion_matrix_png(cm: ArrayLike, classes: Sequence[str], title: str | None = None) -> bytes:
    """The PNG bytes of :func:`plot_confusion_matrix`'s figure (the same input gives the same bytes)."""
    buffer = io.BytesIO()
    _confusion_figure(cm, classes, title).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_confusion_matrix(cm: ArrayLike, classes: Sequence[str], path: str | Path,
                          title: str | None = None) -> Path:
    """Save a confusion matrix as a PNG: colours row-normalised, cells annotated with counts.

    Row normalisation makes each cell's colour the fraction of its true class, so the diagonal
    shows per-class recall regardless of class imbalance. A row without samples stays blank.

    Args:
        cm: ``(C, C)`` counts, rows = true class, columns = predicted class.
        classes: the C class names in index order.
        path: output file; parent directories are created.
        title: figure title (None: none).

    Returns:
        ``path``.

    Raises:
        MetricsError: ``cm`` is not square, does not match ``classes``, or holds negative counts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(confusion_matrix_png(cm, classes, title))
    return path


def _confusion_figure(cm: ArrayLike, classes: Sequence[str], title: str | None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(classes):
        raise MetricsError(f"confusion matrix of shape {counts.shape}: expected ({len(classes)}, {len(classes)}) "
                           f"for classes {list(classes)}")
    if (counts < 0).any():
        raise MetricsError("confusion matrix holds negative counts")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0)

    size = 1.2 + 0.8 * len(classes)
    figure = Figure(figsize=(size + 1.5, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(classes))
    axes.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(classes))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(len(classes)):
        for column in range(len(classes)):
            colour = "white" if fractions[row, column] > 0.5 else "black"
            axes.text(column, row, f"{int(counts[row, column])}", ha="center", va="center", color=colour)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def format_results(metrics_by_model: Mapping[str, Mapping[str, Any]]) -> Table:
    """A rich table comparing runs: model, ACC, UF1, UAR and number of test samples.

    Args:
        metrics_by_model: row label (model or run name) -> its ``metrics.json`` dictionary.

    Returns:
        A rich ``Table``: one row per entry, in the mapping's order; scores as fractions with four decimals,
            as in ``metrics.json``.

    Raises:
        MetricsError: an entry lacks one of ``acc``, ``uf1``, ``uar``, ``n_samples``.
    """
    table = Table(title="LOSO results (pooled over folds)")
    table.add_column("model")
    for header in ("ACC", "UF1", "UAR", "n"):
        table.add_column(header, justify="right")
    for model, metrics in metrics_by_model.items():
        missing = [key for key in ("acc", "uf1", "uar", "n_samples") if key not in metrics]
        if missing:
            raise MetricsError(f"metrics of {model!r} lack {missing}")
        table.add_row(model, *(f"{metrics[key]:.4f}" for key in ("acc", "uf1", "uar")),
                      str(metrics["n_samples"]))
    return table
