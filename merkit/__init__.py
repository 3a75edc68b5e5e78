"""merkit: facial micro-expression recognition toolkit.

Data flows one way: dataset files -> loader -> :class:`~merkit.data.Sample` -> preprocess ->
views -> model -> logits -> LOSO runner -> predictions.csv -> metrics -> report.

The public entry points, importable from the top level (loaded on first use, so ``import
merkit`` stays light)::

    merkit.list_models()                      # registered model names -> descriptions
    merkit.create_model(name, num_classes=K, **options)
    merkit.load_config(name_or_path, overrides)
    merkit.prepare_run(dataset=..., root=..., model=...)   # samples, protocol, config, run_dir
    merkit.run_loso(samples, protocol, config, run_dir)    # trains, writes the run directory
    merkit.run_nested(samples, protocol, config, grid, run_dir)   # nested LOSO over a grid
    merkit.run_benchmark(models, datasets, out, roots=..., seeds=...)   # one results table
    merkit.evaluate_run(run_dir)              # metrics recomputed from predictions.csv
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_PUBLIC: dict[str, tuple[str, str]] = {
    "create_model": ("merkit.models.registry", "create"),
    "list_models": ("merkit.models.registry", "available"),
    "load_config": ("merkit.config", "load_config"),
    "prepare_run": ("merkit.api", "prepare_run"),
    "run_loso": ("merkit.train.loso", "run_loso"),
    "run_nested": ("merkit.train.tune", "run_nested"),
    "run_benchmark": ("merkit.benchmark", "run_benchmark"),
    "evaluate_run": ("merkit.eval.metrics", "evaluate_run"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'merkit' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
