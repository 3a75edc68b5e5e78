"""Fold progress lines: counts, the last fold's score, pooled scores so far, ETA."""

import logging

import pandas as pd

from merkit.train.progress import FoldProgress, format_duration


def _table(fold: str, y_true: list[int], y_pred: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"fold": fold, "y_true": y_true, "y_pred": y_pred})


def test_durations():
    assert [format_duration(s) for s in (0, 42.4, 310, 3725)] == ["0s", "42s", "5m10s", "1h02m"]


def test_eta_counts_trained_folds_only(caplog):
    now = [100.0]
    progress = FoldProgress(4, ["a", "b"], reused=["s1"], clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="merkit.train.progress"):
        progress.fold_done("s1", _table("s1", [0, 1], [0, 1]))  # reused: no time, no rate
        now[0] = 160.0
        progress.fold_done("s2", _table("s2", [0, 0, 1, 1], [0, 1, 1, 1]))  # trained in 60 s; 2 folds left
        now[0] = 220.0
        progress.fold_done("s3", _table("s3", [1], [0]))
        now[0] = 280.0
        progress.fold_done("s4", _table("s4", [0], [0]))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == progress.lines
    assert lines[0] == "fold 1/4 reused (s1): 2 test clips, acc 1.000 | so far 2 clips: UF1 1.000, UAR 1.000 | elapsed 0s, ETA unknown"
    # pooled: y_true 0 0 0 1 1 1, y_pred 0 0 1 1 1 1 -> recalls 2/3 and 1 (UAR 0.833); F1 0.8 and 0.857 (UF1 0.829)
    assert lines[1] == ("fold 2/4 done (s2): 4 test clips, acc 0.750 | so far 6 clips: UF1 0.829, UAR 0.833 | "
                        "elapsed 1m00s, ETA 2m00s")
    assert lines[2].endswith("elapsed 2m00s, ETA 1m00s")
    assert "acc 0.000" in lines[2] and lines[3].endswith("elapsed 3m00s, finished")


def test_eta_with_folds_trained_two_at_a_time():
    """Two workers finish a round of two folds every 10 minutes: after the first fold the ETA is
    5.5 rounds for the 11 folds left (55 minutes), not 11 fold lengths."""
    now = [0.0]
    progress = FoldProgress(12, ["a"], workers=2, clock=lambda: now[0])
    etas = []
    for minute in (10.0, 10.1, 20.0, 20.2):
        now[0] = 60 * minute
        progress.fold_done("s", _table("s", [0], [0]))
        etas.append(progress.lines[-1].split("ETA ")[1])
    assert etas == ["55m00s", "50m30s", "45m00s", "40m24s"]
