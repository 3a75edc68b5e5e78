"""Dataset registry: ``load_dataset(name, root, ...)`` returns a :class:`LoadResult`.

Each loader module registers one :class:`DatasetInfo`. A loader reads the real files in their
real on-disk layout and returns Samples (no protocol applied), the annotation fixes it applied
and the rows it skipped (only when the caller asked for ``on_error="skip"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from merkit.data.sample import Sample
from merkit.errors import DatasetError

OnError = Literal["raise", "skip"]


@dataclass
class LoadResult:
    """What a loader returns.

    Attributes:
        samples: the clips, in annotation order.
        fixes: one human-readable line per known annotation error fixed in code.
        skipped: one line per row skipped (``on_error="skip"`` only), naming file, row and why.
    """

    samples: list[Sample]
    fixes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    Attributes:
        name: dataset id used on the command line (``casme2``).
        loader: ``loader(root: Path, on_error: OnError, **options) -> LoadResult``.
        protocols: protocol names defined for it, default first.
        layout: the on-disk layout merkit expects, shown in errors and ``datasets list``.
        licensed: whether users must obtain the data from its owners.
    """

    name: str
    loader: Callable[..., LoadResult]
    protocols: tuple[str, ...]
    layout: str
    licensed: bool = True


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    if info.name in DATASETS:
        raise DatasetError(f"dataset {info.name} registered twice")
    DATASETS[info.name] = info
    return info


def _load_all() -> None:
    import importlib

    for module in ("casme2", "synthme_dataset", "samm", "smic", "casme_sq", "casme3", "megc2019"):
        try:
            importlib.import_module(f"merkit.data.{module}")
        except ModuleNotFoundError as err:  # loader not written yet
            if err.name != f"merkit.data.{module}":
                raise


def get_dataset(name: str) -> DatasetInfo:
    _load_all()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def all_datasets() -> dict[str, DatasetInfo]:
    _load_all()
    return dict(sorted(DATASETS.items()))


def resolve_root(name: str, root: str | Path | None) -> Path:
    """The dataset root: ``root`` if given, else ``$MERKIT_<NAME>_ROOT``.

    Raises:
        DatasetError: no root given, or it does not exist; the message says the dataset is
            licensed and shows the layout merkit expects.
    """
    info = get_dataset(name)
    env = f"MERKIT_{name.upper().replace('-', '_')}_ROOT"
    if root is None:
        root = os.environ.get(env)
    if root is None or not Path(root).exists():
        what = "no root given" if root is None else f"root {root} does not exist"
        licence = (
            f"{name} is a licensed dataset: request it from its owners, then point merkit at it "
            f"with --root DIR or the environment variable {env}."
            if info.licensed
            else f"give --root DIR or set {env}."
        )
        raise DatasetError(f"{name}: {what}. {licence}\nExpected layout:\n{info.layout}")
    return Path(root)


def load_dataset(name: str, root: str | Path | None = None, *, on_error: OnError = "raise", **options) -> LoadResult:
    """Load dataset ``name`` from ``root`` (see :func:`resolve_root`)."""
    info = get_dataset(name)
    return info.loader(resolve_root(name, root), on_error=on_error, **options)
