"""The ``merkit`` command. Thin: parses arguments, calls the library, prints."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from merkit.errors import ConfigError, MerkitError, check_choice
from merkit.views import VIEW_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Facial micro-expression recognition toolkit.")
datasets_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Dataset loaders: list them, inspect a copy on disk.")
app.add_typer(datasets_app, name="datasets")
console = Console(soft_wrap=True)  # lines (paths, messages) are never re-wrapped at the terminal width


def _fail(err: MerkitError) -> None:
    console.print(f"[bold red]error[/]: {escape(str(err))}", highlight=False)  # one line; messages may hold brackets
    raise typer.Exit(code=2)


def _policy(strict: bool, skip_bad: bool) -> str:
    """The loaders' ``on_error`` policy of the --strict / --skip-bad flags (default: repair)."""
    if strict and skip_bad:
        raise ConfigError("give --strict or --skip-bad, not both")
    return "strict" if strict else "skip" if skip_bad else "repair"


def _warn_skipped(lines) -> None:
    for line in lines:
        console.print(f"[yellow]warning: skipped[/] {escape(line)}", highlight=False)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def synth(
    out: Path = typer.Option(..., help="output folder (CASME II layout)"),
    subjects: int = typer.Option(10, min=1),
    clips_per_subject: int = typer.Option(10, min=1),
    preset: str = typer.Option("default", help="default | hard"),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Generate a SynthME dataset with exact ground truth, in the CASME II on-disk layout."""
    from merkit.data.synthetic import write_synthme

    try:
        path = write_synthme(out, subjects=subjects, clips_per_subject=clips_per_subject, preset=preset, seed=seed)
    except MerkitError as err:
        _fail(err)
    console.print(f"wrote SynthME ({subjects} subjects x {clips_per_subject} clips, preset {preset}, seed {seed}) to {path}")


@contextlib.contextmanager
def _log_to_stderr_without_terminal() -> Iterator[None]:
    """Without a terminal (a batch job, ``nohup``, a pipe) the progress bar is invisible: echo
    merkit's log (one line per finished fold: folds done / total, its score, ETA) to stderr."""
    if console.is_terminal:
        yield
        return
    logger = logging.getLogger("merkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run_with_progress(samples, protocol, config, run_dir, cache_dir, workers, fold_workers=1, **recorded) -> dict:
    from merkit.train.loso import run_loso

    with _progress() as progress, _log_to_stderr_without_terminal():
        task = progress.add_task(f"{config.model_name}: views", total=len(samples))

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_fold(finished: int, total: int, name: str) -> None:
            progress.update(task, description=f"{config.model_name}: folds (last finished: {name})", completed=finished,
                            total=total)

        return run_loso(samples, protocol, config, run_dir, cache_dir=cache_dir, workers=workers,
                        fold_workers=fold_workers, on_fold=on_fold, on_progress=on_progress, **recorded)


DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: the config's train.device, auto: a CUDA GPU, else MPS, else the CPU)"
AMP_HELP = "mixed precision: none | bf16 | fp16 (default: the config's train.amp; fp16 needs CUDA or MPS)"
DETERMINISTIC_HELP = "torch's determinism flags (cuDNN, cuBLAS, deterministic algorithms); recorded in metrics.json"
EXECUTOR_HELP = "local (this machine) | ray (a Ray task per fold; pip install 'merkit[ray]')"
ADDRESS_HELP = "with --executor ray: auto (the cluster of `ray start`) or ray://host:10001; default: a local Ray instance"
GPUS_PER_FOLD_HELP = "with --executor ray: GPUs per fold, fractions share a GPU (default: 1 when the device is a GPU, else 0)"
CPUS_PER_FOLD_HELP = "with --executor ray: CPUs (and torch threads) per fold"

# Options shared by the commands that train (train, pretrain, benchmark, tune): one definition each.
DeviceOption = Annotated[Optional[str], typer.Option(help=DEVICE_HELP)]
AmpOption = Annotated[Optional[str], typer.Option(help=AMP_HELP)]
DeterministicOption = Annotated[bool, typer.Option("--deterministic", help=DETERMINISTIC_HELP)]
ExecutorOption = Annotated[str, typer.Option(help=EXECUTOR_HELP)]
AddressOption = Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)]
GpusPerFoldOption = Annotated[Optional[float], typer.Option(help=GPUS_PER_FOLD_HELP)]
CpusPerFoldOption = Annotated[float, typer.Option(help=CPUS_PER_FOLD_HELP)]
WorkersOption = Annotated[int, typer.Option(min=1, help="preprocessing worker processes")]
CacheOption = Annotated[Path, typer.Option(help="view cache folder")]
RayCacheOption = Annotated[Path, typer.Option(help="view cache folder (with --executor ray: a folder every node sees "
                                                   "at the same path)")]


def _executor(name: str, fold_workers: int, address: Optional[str], gpus_per_fold: Optional[float],
              cpus_per_fold: float):
    """``(executor, fold_workers for run_loso)`` for the train options."""
    check_choice("executor", name, ("local", "ray"))
    if name == "local":
        if address is not None or gpus_per_fold is not None:
            raise ConfigError("--address and --gpus-per-fold are options of --executor ray")
        return None, fold_workers
    if fold_workers != 1:
        raise ConfigError("--fold-workers is an option of --executor local (Ray runs as many folds as the cluster fits)")
    from merkit.train.executors import RayExecutor

    return RayExecutor(address=address, gpus_per_fold=gpus_per_fold, cpus_per_fold=cpus_per_fold), 1


@app.command()
def train(
    dataset: str = typer.Option(..., help="dataset name (see `merkit datasets list`)"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: $MERKIT_<DATASET>_ROOT)"),
    model: Optional[str] = typer.Option(None, help="model name (see `merkit models`); config: <model>-<dataset> if merkit ships one, else <model>-cpu (or --config)"),
    config: Optional[str] = typer.Option(None, help="config: a YAML file, or the name of a config merkit ships (merkit/configs/)"),
    protocol: Optional[str] = typer.Option(None, help="label protocol (default: the dataset's first)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<dataset>-<model>)"),
    epochs: Optional[int] = typer.Option(None, help="override train.epochs"),
    seed: Optional[int] = typer.Option(None, min=0, help="override the run seed"),
    selection: Optional[str] = typer.Option(None, help="last | val-split"),
    apex_policy: Optional[str] = typer.Option(None, help="annotated | annotated-or-middle | middle | spotted"),
    workers: WorkersOption = 1,
    fold_workers: int = typer.Option(1, min=1, help="LOSO folds trained at once (one process and thread each)"),
    pretrained: Optional[Path] = typer.Option(None, help="start every fold from this checkpoint (from `merkit pretrain`)"),
    cache: RayCacheOption = Path(".merkit-cache"),
    strict: bool = typer.Option(False, help="fail on the first inconsistent annotation row (no repairs)"),
    skip_bad: bool = typer.Option(False, help="leave inconsistent or unreadable annotation rows out instead of repairing "
                                  "them, and samples whose frames cannot be read (truncated ...) instead of stopping; "
                                  "recorded in metrics.json and log.txt"),
    allow_pretrain_overlap: bool = typer.Option(False, help="run folds whose test subject --pretrained was trained on "
                                                "(refused otherwise); the run is labelled leaking"),
    all_subjects: bool = typer.Option(False, "--all-subjects", help="train one final model on every subject with the "
                                      "config's fixed budget (no evaluation): a model directory for `merkit predict`"),
    device: DeviceOption = None,
    amp: AmpOption = None,
    deterministic: DeterministicOption = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    gpus_per_fold: GpusPerFoldOption = None,
    cpus_per_fold: CpusPerFoldOption = 1,
) -> None:
    """Leave-one-subject-out training and evaluation; writes a run directory.

    By default inconsistent frame numbers in the annotation are repaired by the rules that
    `merkit datasets list` shows, and every repair is recorded in metrics.json and log.txt.
    """
    from merkit.api import prepare_run

    if all_subjects:
        return _train_all_subjects(dataset, root, model, config, protocol, out, epochs, seed, apex_policy, workers,
                                   pretrained, cache, strict, skip_bad, device, amp, deterministic)

    try:
        fold_executor, fold_workers = _executor(executor, fold_workers, address, gpus_per_fold, cpus_per_fold)
        run = prepare_run(
            dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out, epochs=epochs,
            seed=seed, selection=selection, apex_policy=apex_policy, pretrained=pretrained, device=device, amp=amp,
            deterministic=deterministic or None, on_error=_policy(strict, skip_bad))
        for line in run.notes:
            console.print(f"[cyan]note[/] {line}")
        if run.fixes:
            console.print(f"[cyan]note[/] {len(run.fixes)} annotation fix(es) applied, listed in the run's "
                          f"metrics.json and log.txt (`merkit datasets inspect {dataset}` shows them)")
        _warn_skipped(run.skipped)
        cfg, run_dir = run.config, run.run_dir
        metrics = _run_with_progress(run.samples, run.protocol, cfg, run_dir, cache, workers, fold_workers,
                                     on_error="skip" if skip_bad else "raise", skipped=run.skipped, fixes=run.fixes,
                                     notes=run.notes, allow_pretrain_overlap=allow_pretrain_overlap,
                                     executor=fold_executor)
    except MerkitError as err:
        _fail(err)
    from merkit.eval.reports import format_results

    console.print(format_results({metrics["label"]: metrics}))
    _warn_skipped(metrics["skipped"][len(run.skipped):])  # samples whose views failed
    if metrics["pretrain"] and metrics["pretrain"]["leaking"]:
        console.print(f"[red]leaking[/]: test subjects seen in pre-training: {', '.join(metrics['pretrain']['overlap'])}")
    if len(metrics.get("per_dataset", {})) > 1:
        table = Table(title="per source dataset")
        for col in ("dataset", "n", "ACC", "UF1", "UAR"):
            table.add_column(col)
        for name, m in metrics["per_dataset"].items():
            table.add_row(name, str(m["n_samples"]), f"{m['acc']:.4f}", f"{m['uf1']:.4f}", f"{m['uar']:.4f}")
        console.print(table)
    console.print(f"run directory: {run_dir}  (selection: {metrics['selection']['policy']})")
    compute = metrics["compute"]
    console.print(f"trained on {', '.join(compute['devices_used']) or compute['device']} (amp {compute['amp']}, "
                  f"executor {compute['executor']['name']})")


def _train_all_subjects(dataset, root, model, config, protocol, out, epochs, seed, apex_policy, workers, pretrained,
                        cache, strict: bool, skip_bad: bool, device: str | None, amp: str | None,
                        deterministic: bool) -> None:
    from merkit.api import prepare_run
    from merkit.train.loso import train_all

    try:
        run = prepare_run(dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out,
                          epochs=epochs, seed=seed, apex_policy=apex_policy, pretrained=pretrained, device=device,
                          amp=amp, deterministic=deterministic or None, on_error=_policy(strict, skip_bad))
        if out is None:
            run.run_dir = run.run_dir.with_name(run.run_dir.name + "-final")
        if run.config.selection.policy != "last":
            console.print(f"[cyan]note[/] selection {run.config.selection.policy} needs held-out subjects; the final "
                          f"model is the one after the config's {run.config.train.epochs} epochs")
        with console.status(f"training {run.config.model_name} on all {len(run.samples)} clips of {dataset}"):
            path = train_all(run.samples, run.protocol, run.config, run.run_dir, cache_dir=cache, workers=workers)
    except MerkitError as err:
        _fail(err)
    console.print(f"model directory: {path.parent}  (use it with: merkit predict {path.parent} VIDEO)")


@app.command()
def pretrain(
    dataset: str = typer.Option(..., help="dataset to pre-train on (every subject; nothing is evaluated)"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: $MERKIT_<DATASET>_ROOT)"),
    model: Optional[str] = typer.Option(None, help="model name (see `merkit models`); config: <model>-<dataset> if merkit ships one, else <model>-cpu (or --config)"),
    config: Optional[str] = typer.Option(None, help="config: a YAML file, or the name of a config merkit ships (merkit/configs/)"),
    protocol: Optional[str] = typer.Option(None, help="label protocol (default: the dataset's first)"),
    out: Path = typer.Option(..., help="folder for model.pt, config.yaml, history.json"),
    epochs: Optional[int] = typer.Option(None, help="override train.epochs"),
    workers: WorkersOption = 1,
    cache: CacheOption = Path(".merkit-cache"),
    device: DeviceOption = None,
    amp: AmpOption = None,
    deterministic: DeterministicOption = False,
) -> None:
    """Train on a whole dataset; then `merkit train --pretrained OUT/model.pt` fine-tunes under LOSO."""
    from merkit.api import prepare_run
    from merkit.train.loso import train_all

    try:
        run = prepare_run(dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out,
                          epochs=epochs, device=device, amp=amp, deterministic=deterministic or None)
        _warn_skipped(run.skipped)
        with console.status(f"pre-training {run.config.model_name} on {len(run.samples)} clips of {dataset}"):
            path = train_all(run.samples, run.protocol, run.config, out, cache_dir=cache, workers=workers)
    except MerkitError as err:
        _fail(err)
    console.print(f"pre-trained weights: {path}  (fine-tune with: merkit train ... --pretrained {path})")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="a run directory holding predictions.csv")) -> None:
    """Recompute metrics.json and confusion_matrix.png from a run's predictions.csv and run facts
    (the evaluation training ran: evaluating again changes nothing)."""
    from merkit.eval.metrics import evaluate_run
    from merkit.eval.reports import format_results

    try:
        metrics = evaluate_run(run_dir)
    except MerkitError as err:
        _fail(err)
    console.print(format_results({metrics.get("label", run_dir.name): metrics}))


@app.command()
def demo(
    data: Path = typer.Option(Path("data/synthme-demo"), help="where the SynthME demo set is generated (reused)"),
    out: Path = typer.Option(Path("runs/demo"), help="folder of the demo's run directories (rewritten on every demo)"),
    models: Optional[str] = typer.Option(None, help="comma-separated subset of the demo models"),
    workers: int = typer.Option(2, min=1, help="preprocessing processes, and LOSO folds trained at once"),
) -> None:
    """SynthME -> every model's CPU config under LOSO -> a results table (what `make demo` runs)."""
    import shutil
    import time

    from merkit.api import DEMO_MODELS, demo_samples
    from merkit.eval.reports import format_results

    start = time.perf_counter()
    try:
        chosen = DEMO_MODELS if models is None else _demo_models(models)
        samples, proto = demo_samples(data)
        console.print(f"SynthME demo set: {len(samples)} clips, {len({s.subject for s in samples})} subjects, "
                      f"protocol {proto.name} ({', '.join(proto.classes)}) at {data}")
        results = {}
        for name, config_name in chosen.items():
            from merkit.config import load_config

            cfg = load_config(config_name)
            cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={  # where `merkit report` finds the clips
                "name": "synthme", "protocol": proto.name, "root": str(data)})})
            t0 = time.perf_counter()
            shutil.rmtree(out / name, ignore_errors=True)  # the demo retrains; the view cache is kept
            results[name] = _run_with_progress(samples, proto, cfg, out / name, out / "cache", workers, workers)
            console.print(f"  {name}: {time.perf_counter() - t0:.0f} s, run directory {out / name}")
    except MerkitError as err:
        _fail(err)
    console.print(format_results(results))
    console.print(f"total {time.perf_counter() - start:.0f} s; LOSO over subjects, selection: last epoch of a fixed budget")


def _demo_models(names: str) -> dict[str, str]:
    from merkit.api import DEMO_MODELS

    chosen = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        check_choice("demo model", name, DEMO_MODELS)
        chosen[name] = DEMO_MODELS[name]
    return chosen


@app.command()
def preprocess(
    dataset: str = typer.Option(..., help="dataset name"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: $MERKIT_<DATASET>_ROOT)"),
    views: Optional[str] = typer.Option(None, help=f"comma-separated views ({','.join(VIEW_NAMES)})"),
    model: Optional[str] = typer.Option(None, help="build the views this model's config needs instead of --views"),
    config: Optional[str] = typer.Option(None, help="config file/name: its views section sets how views are built"),
    size: int = typer.Option(112, min=1, help="view size in pixels (with --views)"),
    channels: int = typer.Option(1, help="1 grey or 3 RGB (with --views)"),
    num_frames: int = typer.Option(8, help="length of sequence views (with --views)"),
    workers: int = typer.Option(1, min=1),
    cache: CacheOption = Path(".merkit-cache"),
    strict: bool = typer.Option(False, help="fail on the first inconsistent annotation row (no repairs)"),
    skip_bad: bool = typer.Option(False, help="leave inconsistent annotation rows and samples whose views fail out (recorded)"),
) -> None:
    """Build and cache views for every sample of a dataset (N worker processes)."""
    from merkit.api import preprocess_specs
    from merkit.data.registry import load_dataset
    from merkit.preprocess.pipeline import ViewBuilder

    try:
        specs, views_config = preprocess_specs(views=views, model=model, config=config, dataset=dataset, size=size,
                                               channels=channels, num_frames=num_frames)
        loaded = load_dataset(dataset, root, on_error=_policy(strict, skip_bad))
        samples = loaded.samples
        _warn_skipped(loaded.skipped)
        if loaded.fixes:
            console.print(f"[cyan]note[/] {len(loaded.fixes)} annotation fix(es) applied "
                          f"(`merkit datasets inspect {dataset}` lists them)")
        builder = ViewBuilder(specs, views_config, cache_dir=cache, workers=workers,
                              on_error="skip" if skip_bad else "raise")
        with _progress() as progress:
            task = progress.add_task("views", total=len(samples))
            kept, arrays = builder.build(samples, progress=lambda d, t: progress.update(task, completed=d))
    except MerkitError as err:
        _fail(err)
    for name, array in arrays.items():
        console.print(f"{name}: {tuple(array.shape)} {array.dtype}")
    for line in builder.skipped:
        console.print(f"[yellow]skipped[/] {line}")
    console.print(f"{len(kept)} of {len(samples)} samples cached in {cache}")


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _roots(values: list[str], datasets: list[str]) -> dict[str, Path]:
    """``--root DIR`` (one dataset) or ``--root NAME=DIR`` (repeatable) -> dataset name -> root."""
    roots: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise ConfigError(f"--root {value}: with several datasets write --root NAME=DIR for each")
            name, folder = datasets[0], value
        if name not in datasets:
            raise ConfigError(f"--root {value}: {name!r} is not one of the benchmark's datasets {datasets}")
        roots[name] = Path(folder)
    return roots


def _read_grid(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    try:
        grid = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to lists of values (train.lr: [1e-3, 1e-4])")
    return grid


@app.command()
def benchmark(
    models: str = typer.Option(..., help="comma-separated model names or config names/files"),
    datasets: str = typer.Option(..., help="comma-separated dataset names"),
    out: Path = typer.Option(..., help="benchmark folder (one run directory per run; resumable)"),
    root: list[str] = typer.Option([], help="DIR for one dataset, or NAME=DIR (repeatable)"),
    seeds: str = typer.Option("0", help="comma-separated run seeds"),
    protocol: Optional[str] = typer.Option(None, help="label protocol for every dataset"),
    epochs: Optional[int] = typer.Option(None, help="override train.epochs of every model"),
    ensemble: list[str] = typer.Option([], help="models whose probabilities are averaged, joined by '+' (repeatable)"),
    seed_ensemble: bool = typer.Option(False, "--seed-ensemble",
                                       help="also average each row's runs over all seeds (one more row each)"),
    tune: Optional[Path] = typer.Option(None, help="grid YAML (dotted key or pretrained: [values]; a joint axis sets keys together): every run is a nested LOSO"),
    inner: str = typer.Option("kfold", help="with --tune: inner scheme, loso | kfold"),
    inner_folds: int = typer.Option(3, min=2, help="with --tune and --inner kfold: subject-grouped folds"),
    inner_repeats: int = typer.Option(1, min=1, help="with --tune: run the inner scheme this many times (new splits "
                                      "and fit seeds); a point scores its mean inner UF1"),
    selection_groups: Optional[int] = typer.Option(
        None, min=2, help="with --tune: choose once per group of subjects, on the other groups' subjects (merkit tune)"),
    workers: WorkersOption = 1,
    fold_workers: int = typer.Option(1, min=1, help="LOSO folds trained at once (one process and thread each)"),
    cache: RayCacheOption = Path(".merkit-cache"),
    device: DeviceOption = None,
    amp: AmpOption = None,
    deterministic: DeterministicOption = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    gpus_per_fold: GpusPerFoldOption = None,
    cpus_per_fold: CpusPerFoldOption = 1,
) -> None:
    """Models x datasets x seeds under LOSO -> one table (results.md/.csv/.tex) in OUT."""
    import shlex
    import sys

    from merkit.benchmark import format_markdown, run_benchmark

    try:
        fold_executor, fold_workers = _executor(executor, fold_workers, address, gpus_per_fold, cpus_per_fold)
        dataset_names = _split_list(datasets)
        seed_values = [int(s) for s in _split_list(seeds)] if all(s.isdigit() for s in _split_list(seeds)) else None
        if not seed_values:
            raise ConfigError(f"--seeds {seeds!r}: expected comma-separated non-negative integers")
        with _progress() as progress, _log_to_stderr_without_terminal():
            task = progress.add_task("benchmark", total=None)

            def on_run(number: int, total: int, spec) -> None:
                progress.update(task, description=f"run {number}/{total}: {spec.entry} on {spec.dataset}, seed {spec.seed}",
                                completed=0, total=None)

            def on_fold(done: int, total: int, name: str) -> None:
                progress.update(task, completed=done, total=total)

            result = run_benchmark(
                _split_list(models), dataset_names, out, roots=_roots(root, dataset_names), seeds=seed_values,
                protocol=protocol, epochs=epochs, ensembles=[[m for m in e.split("+") if m] for e in ensemble],
                seed_ensemble=seed_ensemble, grid=_read_grid(tune) if tune is not None else None, inner=inner, inner_folds=inner_folds,
                inner_repeats=inner_repeats, selection_groups=selection_groups,
                cache_dir=cache, workers=workers, fold_workers=fold_workers, executor=fold_executor, device=device,
                amp=amp, deterministic=deterministic or None, command=shlex.join(["merkit", *sys.argv[1:]]),
                on_run=on_run, on_fold=on_fold)
    except MerkitError as err:
        _fail(err)
    console.print(format_markdown(result.rows))
    console.print("tables: " + ", ".join(str(p) for p in result.files.values()))


@app.command("tune")
def tune_command(
    dataset: str = typer.Option(..., help="dataset name"),
    grid: Path = typer.Option(..., help="grid YAML: dotted config keys (or pretrained) -> lists of values (train.lr: [1e-3, 1e-4]); a name -> list of mappings sets their keys together"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: $MERKIT_<DATASET>_ROOT)"),
    model: Optional[str] = typer.Option(None, help="model name (config as for `merkit train`)"),
    config: Optional[str] = typer.Option(None, help="base config file or name"),
    protocol: Optional[str] = typer.Option(None, help="label protocol"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<dataset>-<model>-nested)"),
    seed: Optional[int] = typer.Option(None, min=0, help="override the run seed"),
    inner: str = typer.Option("kfold", help="inner scheme on each outer fold's training subjects: loso | kfold"),
    inner_folds: int = typer.Option(3, min=2, help="subject-grouped folds of --inner kfold"),
    inner_repeats: int = typer.Option(1, min=1, help="run the inner scheme this many times (new subject splits and "
                                      "fit seeds each time); a point scores the mean of its repeats' inner UF1"),
    selection_groups: Optional[int] = typer.Option(
        None, min=2, help="choose once per group of subjects, on the other groups' subjects (cheaper, still honest)"),
    workers: WorkersOption = 1,
    fold_workers: int = typer.Option(1, min=1, help="outer folds (or group choices) computed at once"),
    cache: RayCacheOption = Path(".merkit-cache"),
    device: DeviceOption = None,
    amp: AmpOption = None,
    deterministic: DeterministicOption = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    gpus_per_fold: GpusPerFoldOption = None,
    cpus_per_fold: CpusPerFoldOption = 1,
) -> None:
    """Nested LOSO: hyper-parameters chosen per outer fold on its training subjects only."""
    from merkit.api import prepare_run
    from merkit.eval.reports import format_results
    from merkit.train.tune import run_nested

    try:
        fold_executor, fold_workers = _executor(executor, fold_workers, address, gpus_per_fold, cpus_per_fold)
        run = prepare_run(dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out, seed=seed,
                          device=device, amp=amp, deterministic=deterministic or None)
        run_dir = out if out is not None else Path("runs") / f"{dataset}-{run.config.model_name}-nested"
        for line in run.notes:
            console.print(f"[cyan]note[/] {line}")
        _warn_skipped(run.skipped)
        with _progress() as progress, _log_to_stderr_without_terminal():
            task = progress.add_task(f"{run.config.model_name}: nested LOSO", total=None)
            metrics = run_nested(run.samples, run.protocol, run.config, _read_grid(grid), run_dir, inner=inner,
                                 inner_folds=inner_folds, inner_repeats=inner_repeats,
                                 selection_groups=selection_groups, cache_dir=cache,
                                 workers=workers, fold_workers=fold_workers, executor=fold_executor,
                                 on_fold=lambda done, total, name: progress.update(task, completed=done, total=total))
    except MerkitError as err:
        _fail(err)
    console.print(format_results({run.config.model_name: metrics}))
    chosen = metrics["selection"]["chosen"]
    counts: dict[str, int] = {}
    for point in chosen.values():
        key = json.dumps(point, sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    for key, count in sorted(counts.items(), key=lambda item: -item[1]):
        console.print(f"chosen in {count} of {len(chosen)} outer folds: {key}")
    for group in metrics["selection"].get("groups", []):
        console.print(f"selection group {group['group']} ({len(group['subjects'])} subjects): {json.dumps(group['point'])}")
    groups = f", {selection_groups} selection groups" if selection_groups else ""
    console.print(f"run directory: {run_dir}  (selection: nested, inner {inner}{groups})")


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., metavar="MODEL", help="model directory: `merkit train --all-subjects` output, "
                                     "a LOSO run directory (its fold models averaged) or one of its folds/<subject>"),
    source: str = typer.Argument(..., metavar="INPUT", help="video file, folder of frames, or dataset clip id "
                                 "dataset/subject/clip (with --root)"),
    out: Optional[Path] = typer.Option(None, help="CSV to write (a timeline PNG is written beside it)"),
    onset: Optional[int] = typer.Option(None, help="onset frame of a given interval (else intervals are spotted)"),
    apex: Optional[int] = typer.Option(None, help="apex frame of the given interval (else spotted)"),
    offset: Optional[int] = typer.Option(None, help="offset frame of the given interval"),
    fps: Optional[float] = typer.Option(None, help="frame rate: needed for a frame folder, overrides a video's"),
    face: Optional[str] = typer.Option(None, help="face step: none (INPUT is face crops) | mtcnn | dlib; default: the "
                                       "model's views.face"),
    root: Optional[Path] = typer.Option(None, help="dataset root, for a dataset clip id"),
    threshold: float = typer.Option(5.0, help="spotting: robust z-score a candidate must reach"),
    spotting: str = typer.Option("diff", help="spotting distance: diff | flow"),
    explain: bool = typer.Option(False, help="also draw each interval's explanation map (PNGs beside --out)"),
    device: str = typer.Option("cpu", help="cpu | cuda | mps"),
) -> None:
    """Classify the micro-expressions of a video: spot intervals (or take --onset/--offset), one row each."""
    from merkit.inference import Predictor, SpottingSettings
    from merkit.inference.predictor import write_predictions

    try:
        predictor = Predictor.from_dir(model_dir, device=device)
        table = predictor.predict(source, onset=onset, apex=apex, offset=offset, fps=fps, face=face, root=root,
                                  spotting=SpottingSettings(method=spotting, threshold=threshold), explain=explain)
        written = write_predictions(table, out) if out is not None else []
    except MerkitError as err:
        _fail(err)
    shown = Table(title=f"{predictor.config.model_name} ({predictor.directory.kind}, {len(predictor.models)} model(s)) "
                        f"on {Path(str(table.attrs['source'])).name}")
    for column in ("onset", "apex", "offset", "seconds", "class", "p", "spotting", "status"):
        shown.add_column(column, no_wrap=True)
    probabilities = table[[f"p_{c}" for c in predictor.classes]].max(axis=1)
    for (_, row), confidence in zip(table.iterrows(), probabilities):
        given = row["spotting_score"] != row["spotting_score"]  # NaN: a given interval
        shown.add_row(*(str(row[c]) for c in ("start_frame", "apex_frame", "end_frame")),
                      f"{row['start_s']:.3f}-{row['end_s']:.3f}", row["class"] if isinstance(row["class"], str) else "-",
                      f"{confidence:.3f}" if confidence == confidence else "-",
                      "given" if given else f"z {row['spotting_score']:.1f}", str(row["status"]))
    console.print(shown)
    if table.empty:
        console.print("no interval reached the spotting threshold")
    for path in written:
        console.print(f"wrote {path}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="a LOSO run directory"),
    out: Optional[Path] = typer.Option(None, help="output folder (default RUN/report)"),
    dataset: Optional[str] = typer.Option(None, help="the run's dataset, if not the one RUN/config.yaml records"),
    root: Optional[Path] = typer.Option(None, help="dataset root, if not the one RUN/config.yaml records"),
    cache: CacheOption = Path(".merkit-cache"),
    device: str = typer.Option("cpu", help="cpu | cuda | mps"),
) -> None:
    """Write RUN/report/report.html (images embedded) and its figures: metrics, per class and subject,
    training curves, t-SNE of test features, the model's explanation maps."""
    from merkit.eval.run_report import write_report

    try:
        written = write_report(run_dir, out, dataset=dataset, root=root, cache_dir=cache, device=device)
    except MerkitError as err:
        _fail(err)
    for line in written.notes:
        console.print(f"[cyan]note[/] {line}")
    for name, path in written.figures.items():
        console.print(f"{name}: {path}")
    console.print(f"report: {written.html}")


@app.command("models")
def models_list() -> None:
    """List the registered models."""
    from merkit.models import available

    table = Table(title="models")
    table.add_column("name")
    table.add_column("description")
    for name, description in available().items():
        table.add_row(name, description)
    console.print(table)


@datasets_app.command("list")
def datasets_list() -> None:
    """Registered datasets, their protocols and the files each expects."""
    from merkit.data.registry import all_datasets

    from merkit.data.repairs import READINGS, RULES

    for name, info in all_datasets().items():
        console.rule(f"[bold]{name}[/]" + ("  (licensed)" if info.licensed else ""))
        console.print(f"protocols: {', '.join(info.protocols)}")
        console.print(info.layout, markup=False, highlight=False)
        if info.repairs:
            console.print("repairs (default policy):", markup=False)
            console.print(info.repairs, markup=False)
    console.rule("[bold]annotation policies[/]")
    console.print("default (repair): every row with a usable label is kept; inconsistent frame numbers are repaired "
                  "by the first rule that applies, each change recorded (datasets inspect --json: fixes; a run: "
                  "metrics.json and log.txt). --strict: the first inconsistent row is an error. --skip-bad: "
                  "inconsistent rows are left out, recorded.", markup=False)
    for rule, text in {**RULES, **READINGS}.items():
        console.print(f"  {rule}: {text}", markup=False)


@datasets_app.command("inspect")
def datasets_inspect(
    name: str = typer.Argument(...),
    root: Optional[Path] = typer.Option(None),
    protocol: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    strict: bool = typer.Option(False, help="fail on the first inconsistent annotation row (no repairs)"),
    skip_bad: bool = typer.Option(False, help="leave inconsistent or unreadable rows out (recorded) instead of repairing them"),
) -> None:
    """Counts per class, subject and source dataset, with every fix and skip applied."""
    from merkit.api import inspect_dataset
    from merkit.data.repairs import Fix

    try:
        report = inspect_dataset(name, root, protocol, on_error=_policy(strict, skip_bad))
    except MerkitError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(f"[bold]{report['dataset']}[/] protocol {report['protocol']}: {report['n_samples']} samples, "
                  f"{report['n_subjects']} subjects")
    for title, key in (("class", "class_counts"), ("source dataset", "per_dataset")):
        table = Table(title=f"per {title}")
        table.add_column(title)
        table.add_column("n")
        for k, v in report[key].items():
            table.add_row(str(k), str(v if not isinstance(v, dict) else v.get("n_samples", v)))
        console.print(table)
    if report["left_out"]:
        console.print("left out by the protocol: " + ", ".join(f"{k} {v}" for k, v in report["left_out"].items()))
    for fix in report["fixes"]:
        console.print(f"[cyan]fix[/] {escape(str(Fix(**fix)))}", highlight=False)
    _warn_skipped(report["skipped"])


if __name__ == "__main__":  # pragma: no cover
    app()
