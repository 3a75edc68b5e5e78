"""Progress of a LOSO run as log lines: folds done / total, the last fold's score, ETA.

A run of 68 folds takes tens of minutes; in a terminal the CLI shows a progress bar, but a job
run under ``nohup``, a batch scheduler or a notebook has no terminal. The runner therefore logs
one line per finished fold (into the run's ``log.txt``; the CLI also echoes merkit's log to stderr
when stdout is not a terminal)::

    fold 12/68 done (samm-007): 6 test clips, acc 0.833 | so far 80 clips: UF1 0.712, UAR 0.698 | elapsed 5m02s, ETA 23m10s

The pooled UF1/UAR so far are reported, never used: nothing is selected by looking at them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence

import numpy as np
import pandas as pd

from merkit.eval.metrics import unweighted_average_recall, unweighted_f1

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``310`` -> ``"5m10s"``, ``42.4`` -> ``"42s"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class FoldProgress:
    """Counts finished folds and logs one progress line for each.

    Args:
        total: number of folds of the run.
        classes: the protocol's class names (for the pooled UF1/UAR so far).
        reused: names of folds whose finished predictions are reused (they take no time, so the
            ETA is estimated from the folds trained in this run only).
        workers: folds trained at once. The ETA assumes folds of equal length trained in rounds
            of ``workers``: a fold takes ``elapsed / rounds so far``, and the folds left take
            that times ``left / workers``.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, total: int, classes: Sequence[str], reused: Collection[str] = (), workers: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.workers = max(1, workers)
        self.classes = list(classes)
        self.reused_left = set(reused)
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.trained = 0
        self.tables: list[pd.DataFrame] = []
        self.lines: list[str] = []

    def fold_done(self, name: str, table: pd.DataFrame, reused: bool | None = None) -> pd.DataFrame:
        """Record fold ``name``'s predictions (the fold's ``predictions.csv`` table), log the
        progress line and return ``table`` unchanged. ``reused``: whether the fold's finished
        predictions were reused (default: whether it was listed as reused; a listed fold whose
        predictions were damaged is trained again)."""
        self.done += 1
        if reused is None:
            reused = name in self.reused_left
        self.reused_left.discard(name)
        self.trained += not reused
        self.tables.append(table)
        y_true, y_pred = table["y_true"].to_numpy(), table["y_pred"].to_numpy()
        pooled = pd.concat(self.tables, ignore_index=True)
        elapsed = self.clock() - self.start
        to_train = self.total - self.done - len(self.reused_left)
        if self.done == self.total:
            eta = "finished"
        elif self.trained:
            per_fold = elapsed / math.ceil(self.trained / self.workers)
            eta = f"ETA {format_duration(per_fold * to_train / self.workers)}"
        else:
            eta = "ETA unknown"
        score = f"acc {np.mean(y_true == y_pred):.3f}" if len(table) else "no test clips"
        line = (f"fold {self.done}/{self.total} {'reused' if reused else 'done'} ({name}): {len(table)} test clips, {score} | "
                f"so far {len(pooled)} clips: UF1 {unweighted_f1(pooled.y_true, pooled.y_pred, self.classes):.3f}, "
                f"UAR {unweighted_average_recall(pooled.y_true, pooled.y_pred, self.classes):.3f} | "
                f"elapsed {format_duration(elapsed)}, {eta}")
        self.lines.append(line)
        log.info(line)
        return table
