"""evaluate_run round trip, confusion-matrix figure and results table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from merkit.errors import ConfigError, MetricsError
from merkit.eval import compute_metrics, evaluate_run, format_results, plot_confusion_matrix, read_predictions

CLASSES = ("negative", "positive", "surprise")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _predictions() -> pd.DataFrame:
    """Two subjects of one dataset, 3 of 4 correct: pooled ACC 3/4."""
    return pd.DataFrame({
        "sample_id": ["casme2/01/a", "casme2/01/b", "casme2/02/a", "casme2/02/b"],
        "dataset": "casme2",
        "subject": ["01", "01", "02", "02"],
        "fold": ["01", "01", "02", "02"],
        "y_true": [0, 1, 2, 2],
        "y_pred": [0, 1, 2, 0],
        "p_negative": [0.7, 0.2, 0.1, 0.5],
        "p_positive": [0.2, 0.6, 0.1, 0.2],
        "p_surprise": [0.1, 0.2, 0.8, 0.3],
    })


def _write_run(run_dir, selection=None):
    run_dir.mkdir()
    config = {"protocol": {"name": "casme2-3", "classes": list(CLASSES)}}
    if selection is not None:
        config["selection"] = selection
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    _predictions().to_csv(run_dir / "predictions.csv", index=False)
    return run_dir


def test_evaluate_run_round_trip(tmp_path):
    run_dir = tmp_path / "run"
    _write_run(run_dir, selection={"strategy": "from-config"})
    facts = {"label": "tsfmicro LOSO (casme2-3)", "selection": {"strategy": "last-epoch"}, "skipped": ["row 7"]}
    (run_dir / "run.json").write_text(json.dumps(facts))
    (run_dir / "metrics.json").write_text(json.dumps({"acc": 0.0, "selection": {"strategy": "stale"}}))

    metrics = evaluate_run(run_dir)

    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == metrics
    # the run facts training recorded win over the config's; a stale metrics.json is never read
    assert {key: metrics[key] for key in facts} == facts
    expected = compute_metrics(read_predictions(run_dir / "predictions.csv"), CLASSES)
    assert {key: value for key, value in metrics.items() if key not in facts} == expected
    assert metrics["acc"] == pytest.approx(3 / 4)
    png = (run_dir / "confusion_matrix.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_evaluate_run_takes_selection_from_config_or_leaves_it_out(tmp_path):
    from_config = evaluate_run(_write_run(tmp_path / "a", selection={"strategy": "fixed-epochs"}))
    assert from_config["selection"] == {"strategy": "fixed-epochs"}
    assert "selection" not in evaluate_run(_write_run(tmp_path / "b"))


def test_evaluate_run_requires_protocol_classes(tmp_path):
    run_dir = tmp_path / "run"
    _write_run(run_dir)
    for config in ({"protocol": {"name": "casme2-3"}}, {"protocol": "casme2-3"}, ["casme2-3"]):
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=r"config\.yaml.*protocol\.classes"):
            evaluate_run(run_dir)
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="not found"):
        evaluate_run(run_dir)


def test_plot_confusion_matrix_with_an_empty_row(tmp_path):
    path = plot_confusion_matrix(np.array([[3, 0, 0], [0, 0, 0], [0, 1, 2]]), CLASSES,
                                 tmp_path / "figures" / "cm.png", title="demo")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_confusion_matrix_rejects_mismatched_classes(tmp_path):
    with pytest.raises(MetricsError, match=r"expected \(2, 2\)"):
        plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "cm.png")


def test_format_results_lists_each_model():
    metrics = compute_metrics(_predictions(), CLASSES)
    table = format_results({"tsfmicro": metrics, "baseline": {**metrics, "acc": 0.5}})
    console = Console(record=True, width=100)
    console.print(table)
    text = console.export_text()
    assert "tsfmicro" in text and "0.7500" in text and "0.5000" in text
    assert f"{metrics['uf1']:.4f}" in text and f"{metrics['uar']:.4f}" in text
    with pytest.raises(MetricsError, match="n_samples"):
        format_results({"broken": {"acc": 1.0, "uf1": 1.0, "uar": 1.0}})
