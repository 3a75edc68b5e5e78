"""Figures of predictions, runs and explanations (PNG files).

Every function draws on its own matplotlib Agg canvas (no global backend is switched, nothing
needs a display), writes one PNG and returns its path. Colours of classes follow matplotlib's
``tab10`` cycle in the protocol's class order, in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from merkit.errors import MetricsError


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path, *, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(path)
    return path


def class_colours(classes: Sequence[str]) -> dict[str, Any]:
    """Class name -> RGBA colour (``tab10`` in class order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(index % 10) for index, name in enumerate(classes)}


def plot_timeline(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Motion score over time with the predicted intervals coloured by class.

    Args:
        table: a :meth:`Predictor.predict <merkit.inference.Predictor.predict>` result; its
            ``attrs`` give ``fps``, ``n_frames`` (None: up to the last interval), ``classes``,
            ``motion_score`` (None for a given interval: only the interval is drawn) and
            ``threshold`` (drawn as a dotted line).
        path: the PNG.

    Raises:
        MetricsError: the table lacks the predictor's ``attrs``.
    """
    attrs = table.attrs
    if not {"fps", "n_frames", "classes"} <= set(attrs):
        raise MetricsError("plot_timeline needs a Predictor.predict table (attrs fps, n_frames, classes)")
    fps, classes = float(attrs["fps"]), list(attrs["classes"])
    colours = class_colours(classes)
    figure = _figure(10, 3)
    axes = figure.add_subplot()
    scores = attrs.get("motion_score")
    if scores is not None:
        scores = np.asarray(scores, dtype=float)
        axes.plot(np.arange(len(scores)) / fps, scores, color="0.3", linewidth=0.8)
        if attrs.get("threshold") is not None:
            axes.axhline(attrs["threshold"], color="0.3", linestyle=":", linewidth=0.8)
        axes.set_yscale("symlog", linthresh=10)  # small bumps and high peaks on one axis
        axes.set_ylabel("spotting score (robust z)")
    else:
        axes.set_yticks([])
    last = attrs["n_frames"] - 1 if attrs["n_frames"] else max([0.0] + list(table["end_s"] * fps))
    axes.set_xlim(0, max(last, 1) / fps)
    for _, row in table.iterrows():
        colour = colours.get(row["class"], "0.7") if row["status"] == "ok" else "0.7"
        axes.axvspan(row["start_s"], row["end_s"], color=colour, alpha=0.35, linewidth=0)
        if pd.notna(row.get("apex_s")):
            axes.axvline(row["apex_s"], color=colour, linewidth=1.2)
    handles = [_patch(colours[c], c) for c in classes] + [_patch("0.7", "failed")]
    axes.legend(handles=handles, loc="upper right", fontsize=7, ncol=min(6, len(handles)))
    axes.set_xlabel("time (s)")
    axes.set_title(title or f"{Path(str(attrs.get('source', ''))).name}: {len(table)} interval(s)")
    return _save(figure, path)


def _patch(colour, label: str):
    from matplotlib.patches import Patch

    return Patch(color=colour, alpha=0.5, label=label)


def plot_class_scores(per_class: Mapping[str, Mapping[str, float | None]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of recall and F1 per class (``metrics.json``'s ``per_class``)."""
    classes = list(per_class)
    figure = _figure(1.5 + 1.0 * len(classes), 3.2)
    axes = figure.add_subplot()
    positions = np.arange(len(classes))
    for offset, key in ((-0.2, "recall"), (0.2, "f1")):
        values = [per_class[c].get(key) for c in classes]
        axes.bar(positions + offset, [np.nan if v is None else v for v in values], width=0.4, label=key)
    axes.set_xticks(positions, labels=[f"{c}\n(n={per_class[c].get('support', '?')})" for c in classes], fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.legend(fontsize=8)
    axes.set_title(title or "per class")
    return _save(figure, path)


def plot_subject_scores(scores: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Bars of accuracy and UF1 per test subject (rows: subject, columns ``acc``, ``uf1``, ``n``)."""
    figure = _figure(2 + 0.45 * len(scores), 3.2)
    axes = figure.add_subplot()
    positions = np.arange(len(scores))
    axes.bar(positions - 0.2, scores["acc"], width=0.4, label="accuracy")
    axes.bar(positions + 0.2, scores["uf1"], width=0.4, label="UF1")
    axes.set_xticks(positions, labels=[str(s) for s in scores.index], rotation=60, ha="right", fontsize=7)
    axes.set_ylim(0, 1)
    axes.legend(fontsize=8)
    axes.set_title(title or "per test subject")
    return _save(figure, path)


def plot_training_curves(histories: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss per epoch of every fold (and validation UF1 when recorded)."""
    figure = _figure(8, 3.2)
    loss_axes = figure.add_subplot(1, 2, 1)
    val_axes = figure.add_subplot(1, 2, 2)
    any_val = False
    for fold, history in histories.items():
        loss = history.get("train_loss") or []
        loss_axes.plot(np.arange(1, len(loss) + 1), loss, linewidth=0.9, label=fold)
        val = history.get("val_uf1") or []
        if val:
            any_val = True
            val_axes.plot(np.arange(1, len(val) + 1), val, linewidth=0.9, label=fold)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    loss_axes.set_title("training loss per fold")
    if len(histories) <= 12:
        loss_axes.legend(fontsize=6, ncol=2)
    val_axes.set_xlabel("epoch")
    val_axes.set_title("validation UF1 (val-split selection)" if any_val else "no validation split (last-epoch selection)")
    if not any_val:
        val_axes.set_axis_off()
    figure.suptitle(title)
    return _save(figure, path)


def plot_embedding(points: np.ndarray, labels: Sequence[str], correct: Sequence[bool], classes: Sequence[str],
                   path: str | Path, title: str = "") -> Path:
    """A 2-D embedding (t-SNE) of test samples: colour = true class, dot = right, cross = wrong.

    Args:
        points: (N, 2). labels: N true class names. correct: N booleans.
    """
    points = np.asarray(points, dtype=float)
    colours = class_colours(classes)
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    figure = _figure(5.5, 4.8)
    axes = figure.add_subplot()
    for name in classes:
        mine = labels == name
        axes.scatter(points[mine & correct, 0], points[mine & correct, 1], s=18, color=colours[name], label=name)
        axes.scatter(points[mine & ~correct, 0], points[mine & ~correct, 1], s=30, color=colours[name], marker="x")
    axes.scatter([], [], s=30, color="0.3", marker="x", label="misclassified")
    axes.legend(fontsize=7, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title or "t-SNE of penultimate features (test samples)")
    return _save(figure, path)


def plot_maps(panels: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """A grid of images, one row per sample.

    Args:
        panels: one dict per row: ``label`` (str) and ``images``: a list of
            ``(caption, (H, W) array, kind[, column labels])`` with kind ``image`` (grey,
            [0, 1]), ``heat`` (a map laid over the previous ``image`` of the row, or alone),
            ``matrix`` (a matrix with a colour bar), ``signed`` (diverging colours around 0).
    """
    columns = max(len(p["images"]) for p in panels)
    figure = _figure(1.9 * columns + 0.5, 2.0 * len(panels) + 0.4)
    for row, panel in enumerate(panels):
        base = None
        for column, entry in enumerate(panel["images"]):
            caption, array, kind = entry[:3]
            axes = figure.add_subplot(len(panels), columns, row * columns + column + 1)
            array = np.asarray(array, dtype=float)
            if kind == "image":
                base = array
                axes.imshow(array, cmap="gray", vmin=0, vmax=1)
            elif kind == "heat":
                if base is not None and base.shape == array.shape:
                    axes.imshow(base, cmap="gray", vmin=0, vmax=1)
                    axes.imshow(array, cmap="jet", alpha=0.5, vmin=0, vmax=max(float(array.max()), 1e-12))
                else:
                    axes.imshow(array, cmap="jet")
            elif kind == "signed":
                bound = max(float(np.abs(array).max()), 1e-12)
                axes.imshow(array, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
            else:
                image = axes.imshow(array, cmap="viridis", aspect="auto")
                figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
            if len(entry) > 3 and entry[3]:  # tick labels of the columns
                axes.set_xticks(np.arange(len(entry[3])), labels=entry[3], rotation=90, fontsize=4)
            axes.set_title(caption, fontsize=7)
            if kind in ("image", "heat"):
                axes.set_xticks([])
                axes.set_yticks([])
            else:
                axes.tick_params(labelsize=6)
            if column == 0:
                axes.set_ylabel(panel["label"], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    # fixed spacing: tight_layout measures every axis of the grid, seconds per figure
    figure.subplots_adjust(left=0.08, right=0.96, bottom=0.04, top=1 - 0.75 / figure.get_figheight(), wspace=0.45,
                           hspace=0.35)
    return _save(figure, path, tight=False)


def explanation_panel(explanation, label: str, max_frames: int = 3) -> dict[str, Any]:
    """One :func:`plot_maps` row of an :class:`~merkit.eval.explain.Explanation`: the background,
    the map over it, then its extras (matrices; up to ``max_frames`` depth frames)."""
    images: list[tuple[str, np.ndarray, str]] = [
        ("view", explanation.background, "image"),
        (explanation.method, explanation.heatmap, "heat"),
    ]
    for name, array in explanation.extras.items():
        array = np.asarray(array)
        if name == "depth frames":
            picks = np.unique(np.linspace(0, len(array) - 1, max_frames).round().astype(int))
            images += [(f"depth frame {int(t) + 1}/{len(array)}", array[t], "image") for t in picks]
        elif name == "AU activations":
            images.append(("AU activations (frame x AU)", array, "signed", explanation.extra_labels.get(name)))
        else:
            images.append((f"{name} (row -> column)" if name.startswith("edge") else name, array, "matrix"))
    return {"label": label, "images": images}
