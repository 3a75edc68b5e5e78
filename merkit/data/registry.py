"""Dataset registry: ``load_dataset(name, root, ...)`` returns a :class:`LoadResult`.

Each loader module registers one :class:`DatasetInfo`. A loader reads the real files in their
real on-disk layout and returns Samples (no protocol applied), the annotation fixes it applied
and the rows it skipped (only when the caller asked for ``on_error="skip"``). The ``on_error``
policies (``repair``, ``strict``, ``skip``) are described in :mod:`merkit.data.repairs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from merkit.data.repairs import Fix
from merkit.data.sample import Sample
from merkit.errors import DatasetError, check_choice

OnError = Literal["repair", "strict", "skip"]
ON_ERROR: tuple[str, ...] = ("repair", "strict", "skip")


@dataclass
class LoadResult:
    """What a loader returns.

    Attributes:
        samples: the clips, in annotation order.
        fixes: one record per value the loader changed: a repair of inconsistent frame
            numbers (``on_error="repair"``) or a reading convention (``str(fix)`` is one line).
        skipped: one line per row left out, naming file, row and why (``on_error="skip"``;
            also rows a loader leaves out by design, e.g. exclusion lists).
    """

    samples: list[Sample]
    fixes: list[Fix] = field(default_factory=list)
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
        repairs: how the default ``repair`` policy treats this dataset's rows (its folder kind,
            the rules that apply, its known fixes), shown in ``datasets list``.
    """

    name: str
    loader: Callable[..., LoadResult]
    protocols: tuple[str, ...]
    layout: str
    licensed: bool = True
    repairs: str = ""


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


def load_dataset(name: str, root: str | Path | None = None, *, on_error: OnError = "repair", **options) -> LoadResult:
    """Load dataset ``name`` from ``root`` (see :func:`resolve_root`).

    Args:
        on_error: ``repair`` (default) mends inconsistent frame numbers by documented rules and
            records each change in ``LoadResult.fixes``; ``strict`` raises the first
            inconsistent row; ``skip`` leaves bad rows out, recorded in ``LoadResult.skipped``.
        options: the loader's own keyword options (e.g. ``frames_dir``, ``depth``).
    """
    check_choice("on_error", on_error, ON_ERROR, error=DatasetError)
    info = get_dataset(name)
    return info.loader(resolve_root(name, root), on_error=on_error, **options)
