"""The ``merkit`` command. Thin: parses arguments, calls the library, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from merkit.errors import ConfigError, MerkitError, check_choice
from merkit.views import VIEW_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Facial micro-expression recognition toolkit.")
datasets_app = typer.Typer(no_args_is_help=True, help="Dataset loaders: list them, inspect a copy on disk.")
app.add_typer(datasets_app, name="datasets")
console = Console()


def _fail(err: MerkitError) -> None:
    console.print(f"[bold red]error[/]: {escape(str(err))}")  # messages may hold brackets: pip install 'merkit[ray]'
    raise typer.Exit(code=2)


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


def _run_with_progress(samples, protocol, config, run_dir, cache_dir, workers, fold_workers=1, executor=None) -> dict:
    from merkit.train.loso import run_loso

    with _progress() as progress:
        task = progress.add_task(f"{config.model_name}: views", total=len(samples))

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_fold(finished: int, total: int, name: str) -> None:
            progress.update(task, description=f"{config.model_name}: folds (last finished: {name})", completed=finished,
                            total=total)

        return run_loso(samples, protocol, config, run_dir, cache_dir=cache_dir, workers=workers,
                        fold_workers=fold_workers, executor=executor, on_fold=on_fold, on_progress=on_progress)


DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: the config's train.device, auto: a CUDA GPU, else MPS, else the CPU)"
AMP_HELP = "mixed precision: none | bf16 | fp16 (default: the config's train.amp; fp16 needs CUDA or MPS)"
DETERMINISTIC_HELP = "torch's determinism flags (cuDNN, cuBLAS, deterministic algorithms); recorded in metrics.json"


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
    model: Optional[str] = typer.Option(None, help="model name; config: configs/<model>-<dataset>.yaml if it exists, else <model>-cpu.yaml (or --config)"),
    config: Optional[str] = typer.Option(None, help="config file or name in configs/"),
    protocol: Optional[str] = typer.Option(None, help="label protocol (default: the dataset's first)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<dataset>-<model>)"),
    epochs: Optional[int] = typer.Option(None, help="override train.epochs"),
    seed: Optional[int] = typer.Option(None, min=0, help="override the run seed"),
    selection: Optional[str] = typer.Option(None, help="last | val-split"),
    apex_policy: Optional[str] = typer.Option(None, help="annotated | annotated-or-middle | middle | spotted"),
    workers: int = typer.Option(1, min=1, help="preprocessing worker processes"),
    fold_workers: int = typer.Option(1, min=1, help="LOSO folds trained at once (one process and thread each)"),
    pretrained: Optional[Path] = typer.Option(None, help="start every fold from this checkpoint (from `merkit pretrain`)"),
    cache: Path = typer.Option(Path(".merkit-cache"), help="view cache folder (with --executor ray: a folder every node sees at the same path)"),
    skip_bad: bool = typer.Option(False, help="skip malformed annotation rows instead of failing (recorded)"),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    amp: Optional[str] = typer.Option(None, help=AMP_HELP),
    deterministic: bool = typer.Option(False, "--deterministic", help=DETERMINISTIC_HELP),
    executor: str = typer.Option("local", help="local (this machine) | ray (a Ray task per fold; pip install 'merkit\\[ray]')"),
    address: Optional[str] = typer.Option(None, help="with --executor ray: auto (the cluster of `ray start`) or ray://host:10001; default: a local Ray instance"),
    gpus_per_fold: Optional[float] = typer.Option(None, help="with --executor ray: GPUs per fold, fractions share a GPU (default: 1 when the device is a GPU, else 0)"),
    cpus_per_fold: float = typer.Option(1, help="with --executor ray: CPUs (and torch threads) per fold"),
) -> None:
    """Leave-one-subject-out training and evaluation; writes a run directory."""
    from merkit.api import prepare_run

    try:
        fold_executor, fold_workers = _executor(executor, fold_workers, address, gpus_per_fold, cpus_per_fold)
        run = prepare_run(
            dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out, epochs=epochs,
            seed=seed, selection=selection, apex_policy=apex_policy, pretrained=pretrained, device=device, amp=amp,
            deterministic=deterministic or None, on_error="skip" if skip_bad else "raise")
        for line in run.notes:
            console.print(f"[cyan]note[/] {line}")
        for line in run.skipped:
            console.print(f"[yellow]skipped[/] {line}")
        cfg, run_dir = run.config, run.run_dir
        metrics = _run_with_progress(run.samples, run.protocol, cfg, run_dir, cache, workers, fold_workers, fold_executor)
    except MerkitError as err:
        _fail(err)
    from merkit.eval.reports import format_results

    console.print(format_results({cfg.model_name: metrics}))
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


@app.command()
def pretrain(
    dataset: str = typer.Option(..., help="dataset to pre-train on (every subject; nothing is evaluated)"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: $MERKIT_<DATASET>_ROOT)"),
    model: Optional[str] = typer.Option(None, help="model name; config: configs/<model>-<dataset>.yaml if it exists, else <model>-cpu.yaml (or --config)"),
    config: Optional[str] = typer.Option(None, help="config file or name in configs/"),
    protocol: Optional[str] = typer.Option(None, help="label protocol (default: the dataset's first)"),
    out: Path = typer.Option(..., help="folder for model.pt, config.yaml, history.json"),
    epochs: Optional[int] = typer.Option(None, help="override train.epochs"),
    workers: int = typer.Option(1, min=1, help="preprocessing worker processes"),
    cache: Path = typer.Option(Path(".merkit-cache"), help="view cache folder"),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    amp: Optional[str] = typer.Option(None, help=AMP_HELP),
    deterministic: bool = typer.Option(False, "--deterministic", help=DETERMINISTIC_HELP),
) -> None:
    """Train on a whole dataset; then `merkit train --pretrained OUT/model.pt` fine-tunes under LOSO."""
    from merkit.api import prepare_run
    from merkit.train.loso import train_all

    try:
        run = prepare_run(dataset=dataset, root=root, model=model, config=config, protocol=protocol, out=out,
                          epochs=epochs, device=device, amp=amp, deterministic=deterministic or None)
        with console.status(f"pre-training {run.config.model_name} on {len(run.samples)} clips of {dataset}"):
            path = train_all(run.samples, run.protocol, run.config, out, cache_dir=cache, workers=workers)
    except MerkitError as err:
        _fail(err)
    console.print(f"pre-trained weights: {path}  (fine-tune with: merkit train ... --pretrained {path})")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="a run directory holding predictions.csv")) -> None:
    """Recompute metrics.json and confusion_matrix.png from a run's predictions.csv."""
    from merkit.eval.metrics import evaluate_run
    from merkit.eval.reports import format_results

    try:
        metrics = evaluate_run(run_dir)
    except MerkitError as err:
        _fail(err)
    console.print(format_results({run_dir.name: metrics}))


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
    cache: Path = typer.Option(Path(".merkit-cache"), help="view cache folder"),
    skip_bad: bool = typer.Option(False, help="skip samples whose views fail (recorded) instead of stopping"),
) -> None:
    """Build and cache views for every sample of a dataset (N worker processes)."""
    from merkit.api import preprocess_specs
    from merkit.data.registry import load_dataset
    from merkit.preprocess.pipeline import ViewBuilder

    try:
        specs, views_config = preprocess_specs(views=views, model=model, config=config, dataset=dataset, size=size,
                                               channels=channels, num_frames=num_frames)
        samples = load_dataset(dataset, root, on_error="skip" if skip_bad else "raise").samples
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

    for name, info in all_datasets().items():
        console.rule(f"[bold]{name}[/]" + ("  (licensed)" if info.licensed else ""))
        console.print(f"protocols: {', '.join(info.protocols)}")
        console.print(info.layout)


@datasets_app.command("inspect")
def datasets_inspect(
    name: str = typer.Argument(...),
    root: Optional[Path] = typer.Option(None),
    protocol: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    skip_bad: bool = typer.Option(False, help="skip malformed rows instead of failing (recorded)"),
) -> None:
    """Counts per class, subject and source dataset, with every fix and skip applied."""
    from merkit.api import inspect_dataset

    try:
        report = inspect_dataset(name, root, protocol, on_error="skip" if skip_bad else "raise")
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
    for line in report["fixes"]:
        console.print(f"[cyan]fix[/] {line}")
    for line in report["skipped"]:
        console.print(f"[yellow]skipped[/] {line}")


if __name__ == "__main__":  # pragma: no cover
    app()
