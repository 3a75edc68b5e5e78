"""Benchmarks: models x datasets x seeds under LOSO, written as one results table.

Every (dataset, model entry, seed) is a normal run directory (:mod:`merkit.train.loso`, or a
nested run of :mod:`merkit.train.tune` when a grid is given), so an interrupted benchmark
resumes like a run: finished runs are read back, unfinished ones resume from their finished
folds. A model entry is a registered model name (its config is ``<model>-<dataset>`` when that
exists, else ``<model>-cpu``) or a config name or file.

Layout of a benchmark folder::

    <out>/benchmark.json                    what was asked (entries, datasets, seeds, ensembles, grid)
    <out>/<dataset>/<entry>/seed<k>/        one run directory per run, plus timing.json
    <out>/<dataset>/ensemble-<a>+<b>/seed<k>/   predictions averaged over the members' runs
    <out>/<dataset>/seed-ensemble-<entry>/       with seed_ensemble: a row's runs averaged over the seeds
    <out>/results.md, results.csv, results.tex, results.json

The table has one row per dataset and entry (and, for composite datasets, one per source
dataset beneath it): ACC, UF1 and UAR pooled over the LOSO folds of each run, as the mean and
sample standard deviation over the seeds, how each model was selected, and the wall time
(mean seconds per seed run, summed over resumed sessions; an ensemble adds its members'; left
empty when a run reused folds the benchmark did not train, whose time it cannot know).

An ensemble averages the class probabilities of its members' ``predictions.csv`` for the same
dataset and seed. No choice is made on the test subject: the members are fixed in advance and
each was selected by its own honest policy. A *seed ensemble* (``seed_ensemble``) averages the
runs of one row (an entry or an ensemble) over all the benchmark's seeds: one figure per row,
whose ``seeds`` column counts the seeds averaged; set against the row's mean over seeds it shows
how much of a model's error is the variance of its training (an average of k seeds removes
most of it) and how much is bias.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from merkit.errors import ConfigError, MetricsError
from merkit.eval.metrics import RUN_FACTS_FILE, evaluate_run, read_predictions, write_predictions
from merkit.outputs import make_output_dir
from merkit.train.executors import Executor

log = logging.getLogger(__name__)

METRICS = ("acc", "uf1", "uar")


@dataclass(frozen=True)
class RunSpec:
    """One run of a benchmark: ``entry`` (model name or config) on ``dataset`` with ``seed``."""

    dataset: str
    entry: str
    seed: int
    run_dir: Path


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced.

    Attributes:
        rows: the table rows (dicts with the CSV columns).
        files: the written table files by format (``md``, ``csv``, ``tex``, ``json``).
        runs: per run directory, its metrics.
    """

    rows: list[dict[str, Any]]
    files: dict[str, Path]
    runs: dict[str, dict] = field(default_factory=dict)


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", Path(text).stem if text.endswith((".yaml", ".yml")) else text)


def entry_label(entry: str) -> str:
    """How an entry is named in the table and the folder tree (a config file by its stem)."""
    return _folder_name(entry)


def plan_runs(entries: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], out: str | Path) -> list[RunSpec]:
    """The runs of a benchmark, dataset by dataset, entry by entry, seed by seed.

    Raises:
        ConfigError: no entry, dataset or seed, a duplicate, or two entries with one label.
    """
    for what, values in (("model", entries), ("dataset", datasets), ("seed", seeds)):
        if not values:
            raise ConfigError(f"a benchmark needs at least one {what}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{what}s repeat: {list(values)}")
    labels = [entry_label(e) for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two model entries share a label: {labels}")
    out = Path(out)
    return [RunSpec(d, e, int(s), out / _folder_name(d) / entry_label(e) / f"seed{int(s)}")
            for d in datasets for e in entries for s in seeds]


def _is_model_name(entry: str) -> bool:
    from merkit.models.registry import available

    return entry in available()


def _fingerprint(config, samples) -> str:
    """What a finished run's results depend on: the resolved config (without the compute
    settings: a run resumes on another device) and the labelled clips."""
    from merkit.config import result_settings

    payload = {"config": result_settings(config), "clips": sorted((s.sample_id, int(s.label)) for s in samples)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _run_one(spec: RunSpec, *, root: str | Path | None, protocol: str | None, epochs: int | None,
             grid: Mapping[str, Sequence[Any]] | None, inner: str, inner_folds: int, inner_repeats: int,
             selection_groups: int | None,
             cache_dir: str | Path | None, workers: int, fold_workers: int,
             on_fold: Callable[[int, int, str], None] | None, executor: Executor | None = None,
             compute: Mapping[str, Any] | None = None) -> tuple[dict, float | None]:
    """Run (or read back) one benchmark run; returns its metrics and wall seconds (None when
    folds it reuses were trained outside the benchmark, which timed nothing of them)."""
    from merkit.api import prepare_run

    as_model = _is_model_name(spec.entry)
    run = prepare_run(dataset=spec.dataset, root=root, model=spec.entry if as_model else None,
                      config=None if as_model else spec.entry, protocol=protocol, out=spec.run_dir, epochs=epochs,
                      seed=spec.seed, **(compute or {}))
    fingerprint = _fingerprint(run.config, run.samples)
    if grid:
        from merkit.train.tune import tuning_settings

        tuning = tuning_settings(grid, inner, inner_folds, selection_groups, inner_repeats)
        fingerprint += "+nested:" + hashlib.sha1(json.dumps(tuning, sort_keys=True).encode()).hexdigest()
    timing_path = spec.run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if timing and timing.get("fingerprint") != fingerprint:
        raise ConfigError(f"{spec.run_dir} holds a run of another setting (config, clips or grid differ): resuming "
                          "would mix results; write the benchmark to a new folder or delete that run")
    if timing.get("complete") and (spec.run_dir / "metrics.json").is_file():
        log.info("%s: finished earlier, reading it back", spec.run_dir)
        return json.loads((spec.run_dir / "metrics.json").read_text()), _wall_seconds(timing)
    # folds already there without a timing of this benchmark (a run copied or trained into its
    # folder): their training time is unknown, so the run's is too
    untimed = timing.get("untimed", not timing and any((spec.run_dir / "folds").glob("*/predictions.csv")))
    spent = float(timing.get("wall_s", 0.0))
    start = time.perf_counter()

    def record(complete: bool) -> float | None:
        wall = spent + time.perf_counter() - start
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        timing_path.write_text(json.dumps({"fingerprint": fingerprint, "wall_s": wall, "complete": complete,
                                           "untimed": untimed}))
        return None if untimed else wall

    def fold_done(done: int, total: int, name: str) -> None:
        record(False)
        if on_fold is not None:
            on_fold(done, total, name)

    if grid:
        from merkit.train.tune import run_nested

        metrics = run_nested(run.samples, run.protocol, run.config, grid, spec.run_dir, inner=inner,
                             inner_folds=inner_folds, inner_repeats=inner_repeats, selection_groups=selection_groups,
                             cache_dir=cache_dir, workers=workers, fold_workers=fold_workers, executor=executor,
                             on_fold=fold_done)
    else:
        from merkit.train.loso import run_loso

        metrics = run_loso(run.samples, run.protocol, run.config, spec.run_dir, cache_dir=cache_dir, workers=workers,
                           fold_workers=fold_workers, executor=executor, on_fold=fold_done, fixes=run.fixes,
                           skipped=run.skipped, notes=run.notes)
    return metrics, record(True)


def _wall_seconds(timing: Mapping[str, Any]) -> float | None:
    """A finished run's wall seconds from its ``timing.json`` (None: not all of it was timed)."""
    return None if timing.get("untimed") else float(timing["wall_s"])


def ensemble_predictions(tables: Sequence[pd.DataFrame], classes: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    """Average the class probabilities of several runs' predictions of the same clips.

    Args:
        tables: ``predictions.csv`` tables (with ``p_<class>`` columns).
        classes: the protocol's classes, in index order.
        names: a name per table, for error messages.

    Returns:
        A predictions table (rows in the first table's order) whose ``p_<class>`` are the
        means over the tables and ``y_pred`` their argmax.

    Raises:
        MetricsError: a table lacks probabilities, or the tables disagree on the clips, their
            labels or their folds.
    """
    columns = [f"p_{c}" for c in classes]
    base = tables[0].set_index("sample_id")
    total = np.zeros((len(base), len(columns)))
    for table, name in zip(tables, names):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise MetricsError(f"{name}: predictions lack the probability columns {missing}")
        other = table.set_index("sample_id")
        if set(other.index) != set(base.index):
            difference = sorted(set(other.index) ^ set(base.index))
            raise MetricsError(f"{name}: predicts other clips than {names[0]} (e.g. {difference[:3]})")
        other = other.loc[base.index]
        for column in ("y_true", "fold", "dataset", "subject"):
            if not (other[column].astype(str).to_numpy() == base[column].astype(str).to_numpy()).all():
                raise MetricsError(f"{name}: column {column} disagrees with {names[0]} for the same clips")
        total += other[columns].to_numpy(dtype=np.float64)
    mean = total / len(tables)
    out = base[["dataset", "subject", "fold", "y_true"]].reset_index()
    out["y_pred"] = mean.argmax(1)
    for k, column in enumerate(columns):
        out[column] = mean[:, k]
    return out


def ensemble_selection(members: Sequence[str]) -> dict[str, Any]:
    return {"policy": "ensemble", "members": list(members),
            "description": "class probabilities averaged over fixed member runs, each selected by its own policy; "
                           "nothing is chosen on the test subject"}


def write_ensemble(member_dirs: Sequence[Path], members: Sequence[str], run_dir: Path) -> dict:
    """Write an ensemble run directory from its members' run directories; returns its metrics."""
    classes = None
    tables = []
    for member_dir in member_dirs:
        config = yaml.safe_load((member_dir / "config.yaml").read_text())
        member_classes = config["protocol"]["classes"]
        if classes is not None and member_classes != classes:
            raise MetricsError(f"{member_dir}: classes {member_classes} differ from {classes}")
        classes = member_classes
        tables.append(read_predictions(member_dir / "predictions.csv"))
    predictions = ensemble_predictions(tables, classes, [str(d) for d in member_dirs])
    make_output_dir(run_dir, "run directory")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "ensemble": {"members": list(members), "runs": [str(d) for d in member_dirs]},
        "protocol": {"name": yaml.safe_load((member_dirs[0] / "config.yaml").read_text())["protocol"]["name"],
                     "classes": classes}}, sort_keys=False))
    write_predictions(predictions, run_dir / "predictions.csv")
    facts = {"model": "ensemble", "label": f"ensemble {' + '.join(members)}", "selection": ensemble_selection(members)}
    (run_dir / RUN_FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    return evaluate_run(run_dir)  # the one evaluation, as for run_loso and `merkit evaluate`


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def summarise(results: Sequence[tuple[str, str, dict, float | None]],
              averaged_seeds: Mapping[tuple[str, str], int] | None = None) -> list[dict[str, Any]]:
    """Table rows from ``(dataset, label, metrics, wall seconds)`` per run, seeds pooled.

    ``averaged_seeds``: ``(dataset, label)`` of a seed ensemble -> the number of seed runs its one
    run averages (its ``seeds`` column; its standard deviations are None).

    Returns:
        Per dataset and label, in first-seen order: a row with ``source = "all"`` and, when the
        runs report several source datasets (composites), one row per source. Each row holds
        ``dataset, source, model, seeds, n_samples, acc_mean, acc_std, uf1_mean, uf1_std,
        uar_mean, uar_std, selection, wall_s`` (std None for one seed; wall_s, the mean per
        seed run, only on the ``all`` row; None also when a run's time is unknown).
    """
    grouped: dict[tuple[str, str], list[tuple[dict, float | None]]] = {}
    for dataset, label, metrics, wall in results:
        grouped.setdefault((dataset, label), []).append((metrics, wall))
    rows = []
    for (dataset, label), runs in grouped.items():
        selection = sorted({m.get("selection", {}).get("policy", "unknown") for m, _ in runs})
        sources = sorted(set().union(*(m.get("per_dataset", {}).keys() for m, _ in runs)))
        parts: list[tuple[str, list[dict]]] = [("all", [m for m, _ in runs])]
        if len(sources) > 1:
            parts += [(source, [m["per_dataset"][source] for m, _ in runs]) for source in sources]
        for source, scores in parts:
            seed_count = (averaged_seeds or {}).get((dataset, label), len(runs))
            row: dict[str, Any] = {"dataset": dataset, "source": source, "model": label, "seeds": seed_count,
                                   "n_samples": int(scores[0]["n_samples"])}
            for key in METRICS:
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([s[key] for s in scores])
            row["selection"] = "/".join(selection)
            walls = [w for _, w in runs]
            row["wall_s"] = float(np.mean(walls)) if source == "all" and None not in walls else None
            rows.append(row)
    return rows


def _score(row: Mapping[str, Any], key: str, plus_minus: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.4f}" if std is None else f"{mean:.4f} {plus_minus} {std:.4f}"


def _wall(row: Mapping[str, Any]) -> str:
    return "" if row["wall_s"] is None else f"{row['wall_s'] / 60:.1f}"


SELECTION_LEGEND = {
    "last": "model after the last epoch of a fixed budget",
    "val-split": "epoch with the best UF1 on validation subjects carved from the training subjects",
    "nested": "hyper-parameters chosen per outer fold by inner cross-validation on its training subjects",
    "ensemble": "class probabilities averaged over fixed member runs",
}


def format_markdown(rows: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """The results table in Markdown, with its notes (how scores are pooled, selection legend)."""
    lines = ["| dataset | source | model | seeds | n | ACC | UF1 | UAR | selection | wall (min/seed) |",
             "|---|---|---|---:|---:|---|---|---|---|---:|"]
    for row in rows:
        lines.append(f"| {row['dataset']} | {row['source']} | {row['model']} | {row['seeds']} | {row['n_samples']} | "
                     + " | ".join(_score(row, k, "±") for k in METRICS) + f" | {row['selection']} | {_wall(row)} |")
    used = sorted({part for row in rows for part in row["selection"].split("/")})
    text = ["LOSO over subjects; ACC, UF1 and UAR pooled over the folds of each run (the MEGC convention); "
            "mean ± sample standard deviation over seeds."]
    text += [f"Selection `{name}`: {SELECTION_LEGEND.get(name, name)}." for name in used]
    return "\n".join(["\n".join(text), "", *lines, "", *notes]).rstrip() + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", str(text))


def format_latex(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table as a LaTeX ``tabular`` (booktabs rules)."""
    lines = [r"\begin{tabular}{lllrrccclr}", r"\toprule",
             r"Dataset & Source & Model & Seeds & $n$ & ACC & UF1 & UAR & Selection & Wall (min/seed) \\", r"\midrule"]
    plus_minus = r"\pm"
    for row in rows:
        scores = " & ".join(f"${_score(row, k, plus_minus)}$" for k in METRICS)
        lines.append(" & ".join(_latex_escape(row[c]) for c in ("dataset", "source", "model", "seeds", "n_samples"))
                     + f" & {scores} & {_latex_escape(row['selection'])} & {_wall(row)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping[str, Any]], out: str | Path, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.tex`` and ``results.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "results.md", "csv": out / "results.csv", "tex": out / "results.tex", "json": out / "results.json"}
    files["md"].write_text(format_markdown(rows, notes))
    pd.DataFrame(list(rows)).to_csv(files["csv"], index=False)
    files["tex"].write_text(format_latex(rows))
    files["json"].write_text(json.dumps({"rows": list(rows), "notes": list(notes)}, indent=2))
    return files


def run_benchmark(
    entries: Sequence[str],
    datasets: Sequence[str],
    out: str | Path,
    *,
    roots: Mapping[str, str | Path] | None = None,
    seeds: Sequence[int] = (0,),
    protocol: str | None = None,
    epochs: int | None = None,
    ensembles: Sequence[Sequence[str]] = (),
    seed_ensemble: bool = False,
    grid: Mapping[str, Sequence[Any]] | None = None,
    inner: str = "kfold",
    inner_folds: int = 3,
    inner_repeats: int = 1,
    selection_groups: int | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    fold_workers: int = 1,
    executor: Executor | None = None,
    device: str | None = None,
    amp: str | None = None,
    deterministic: bool | None = None,
    command: str | None = None,
    on_run: Callable[[int, int, RunSpec], None] | None = None,
    on_fold: Callable[[int, int, str], None] | None = None,
) -> BenchmarkResult:
    """Run every entry on every dataset for every seed under LOSO and write the results table.

    Args:
        entries: model names or config names/files.
        datasets: dataset names.
        out: the benchmark folder (module doc); finished runs in it are read back.
        roots: dataset name -> root (missing: ``$MERKIT_<DATASET>_ROOT``).
        seeds: run seeds.
        protocol: label protocol for every dataset (default: each config's or dataset's).
        epochs: overrides ``train.epochs`` of every entry.
        ensembles: groups of entries whose runs are averaged (an extra row each).
        seed_ensemble: also average each row's runs (entries and ensembles) over all seeds (an
            extra row each, ``seed-ensemble-<entry>``; needs two seeds or more).
        grid: dotted config keys -> candidate values: every run becomes a nested LOSO run
            (:func:`merkit.train.tune.run_nested`) with ``inner`` / ``inner_folds`` /
            ``inner_repeats`` / ``selection_groups``.
        cache_dir, workers, fold_workers, executor: as for :func:`merkit.train.loso.run_loso`;
            every run's folds go to the same executor (a Ray cluster runs them all).
        device, amp, deterministic: override ``train.device``, ``train.amp`` and
            ``train.deterministic`` of every entry (as ``merkit train --device`` ...).
        command: the command line that started the benchmark, written under the table.
        on_run: callback ``(run number, number of runs, spec)`` before each run.
        on_fold: callback passed to each run.

    Returns:
        The table rows, the written files and every run's metrics.

    Raises:
        ConfigError: bad entries, seeds or ensembles, or a folder holding another setting.
    """
    specs = plan_runs(entries, datasets, seeds, out)
    if seed_ensemble and len(seeds) < 2:
        raise ConfigError(f"a seed ensemble averages a model's runs over seeds: needs at least two seeds, got {list(seeds)}")
    labels = {entry_label(e) for e in entries}
    for group in ensembles:
        unknown = [m for m in group if entry_label(m) not in labels]
        if len(group) < 2 or unknown:
            raise ConfigError(f"ensemble {list(group)}: needs at least two of the benchmark's models "
                              f"({sorted(labels)})" + (f"; unknown {unknown}" if unknown else ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps({
        "models": list(entries), "datasets": list(datasets), "seeds": [int(s) for s in seeds], "protocol": protocol,
        "epochs": epochs, "ensembles": [list(g) for g in ensembles], "seed_ensemble": seed_ensemble,
        "grid": {k: list(v) for k, v in grid.items()} if grid else None,
        "inner": {"scheme": inner, "folds": inner_folds, "repeats": inner_repeats} if grid else None,
        "selection_groups": selection_groups if grid else None, "command": command}, indent=2))
    roots = dict(roots or {})
    results: list[tuple[str, str, dict, float | None]] = []
    runs: dict[str, dict] = {}
    walls: dict[Path, float | None] = {}
    for number, spec in enumerate(specs):
        if on_run is not None:
            on_run(number + 1, len(specs), spec)
        metrics, wall = _run_one(spec, root=roots.get(spec.dataset), protocol=protocol, epochs=epochs, grid=grid,
                                 inner=inner, inner_folds=inner_folds, inner_repeats=inner_repeats,
                                 selection_groups=selection_groups, cache_dir=cache_dir, workers=workers,
                                 fold_workers=fold_workers, on_fold=on_fold, executor=executor,
                                 compute={"device": device, "amp": amp, "deterministic": deterministic})
        results.append((spec.dataset, entry_label(spec.entry), metrics, wall))
        runs[str(spec.run_dir)] = metrics
        walls[spec.run_dir] = wall
    def add_ensemble(dataset: str, label: str, member_dirs: list[Path], members: list[str], run_dir: Path) -> None:
        """Write an ensemble run of ``member_dirs`` and record its row; its wall time is the members' sum."""
        metrics = write_ensemble(member_dirs, members, run_dir)
        member_walls = [walls[d] for d in member_dirs]
        walls[run_dir] = None if None in member_walls else sum(member_walls)
        results.append((dataset, label, metrics, walls[run_dir]))
        runs[str(run_dir)] = metrics

    for group in ensembles:
        members = [entry_label(m) for m in group]
        label = "ensemble-" + "+".join(members)
        for dataset in datasets:
            for seed in seeds:
                add_ensemble(dataset, label, [out / _folder_name(dataset) / m / f"seed{int(seed)}" for m in members],
                             members, out / _folder_name(dataset) / label / f"seed{int(seed)}")
    averaged_seeds: dict[tuple[str, str], int] = {}
    if seed_ensemble:
        for dataset, label in dict.fromkeys((d, l) for d, l, _, _ in results):
            name = "seed-ensemble-" + label.removeprefix("ensemble-")
            add_ensemble(dataset, name, [out / _folder_name(dataset) / label / f"seed{int(seed)}" for seed in seeds],
                         [f"{label}/seed{int(seed)}" for seed in seeds], out / _folder_name(dataset) / name)
            averaged_seeds[(dataset, name)] = len(seeds)
    rows = summarise(results, averaged_seeds)
    notes = [f"Command: `{command}`"] if command else []
    if seed_ensemble:
        notes.append("`seed-ensemble-<x>`: the class probabilities of x's runs averaged over all seeds (one run; "
                     "its seeds column counts the seeds averaged, its wall time is their runs' summed).")
    if grid:
        from merkit.train.tune import nested_description

        description = nested_description(grid, inner, inner_folds, selection_groups, inner_repeats)["description"]
        notes.append(f"Nested selection: {description}. Grid {dict(grid)}; the point chosen per outer fold is in "
                     "each run's metrics.json.")
    return BenchmarkResult(rows=rows, files=write_tables(rows, out, notes), runs=runs)
