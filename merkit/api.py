"""The Python entry points the CLI calls: prepare a run, the demo data, dataset inspection.

Typical use::

    from merkit.api import prepare_run
    from merkit.train.loso import run_loso
    run = prepare_run(dataset="casme2", root="/data/CASME2", model="tsfmicro")
    metrics = run_loso(run.samples, run.protocol, run.config, run.run_dir, cache_dir=".merkit-cache",
                       skipped=run.skipped, fixes=run.fixes, notes=run.notes)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merkit.config import RunConfig, find_config, load_config
from merkit.data.protocols import Protocol, apply_protocol, get_protocol, label_samples
from merkit.data.registry import OnError, get_dataset, load_dataset
from merkit.data.repairs import Fix
from merkit.data.sample import Sample
from merkit.errors import ConfigError, DatasetError

#: model name -> CPU config the demo runs (each documented in README.md)
DEMO_MODELS: dict[str, str] = {
    "logreg": "logreg-cpu",
    "tsfmicro": "tsfmicro-cpu",
    "atm-gcn": "atm-gcn-cpu",
    "madv-net": "madv-net-synthme",
    "ms3d-resnet": "ms3d-resnet-cpu",
}

#: the SynthME set the demo generates (and reuses when already on disk)
DEMO_DATA = {"subjects": 8, "clips_per_subject": 15, "preset": "default", "seed": 0}
DEMO_PROTOCOL = "casme2-5"


@dataclass
class PreparedRun:
    """Everything a LOSO run needs, resolved.

    Attributes:
        samples: labelled samples. protocol: the label protocol. config: the resolved config.
        run_dir: where the run is written. notes: adjustments merkit made (e.g. a fallback
        variant for a release lacking a view). skipped: annotation rows the loader skipped and
        samples whose emotion the protocol does not know (one line each, with the reason).
        fixes: the loader's recorded changes to annotation rows (repairs and readings).
    """

    samples: list[Sample]
    protocol: Protocol
    config: RunConfig
    run_dir: Path
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)


def prepare_run(
    *,
    dataset: str,
    root: str | Path | None = None,
    model: str | None = None,
    config: str | Path | None = None,
    protocol: str | None = None,
    out: str | Path | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    selection: str | None = None,
    apex_policy: str | None = None,
    pretrained: str | Path | None = None,
    device: str | None = None,
    amp: str | None = None,
    deterministic: bool | None = None,
    on_error: OnError = "repair",
) -> PreparedRun:
    """Load a dataset, apply its protocol and resolve a run config.

    Without ``config`` the shipped config ``<model>-<dataset>`` is used when merkit has one,
    else the model's reduced ``<model>-cpu``. ``epochs``, ``seed``, ``selection``,
    ``apex_policy``, ``pretrained``, ``device``, ``amp`` and ``deterministic`` override the
    config's values when given. ``on_error`` is the loader's policy
    (``repair``, ``strict`` or ``skip``, see :mod:`merkit.data.repairs`); under ``strict`` a
    sample whose emotion the protocol does not know is an error too, otherwise it is skipped
    and listed in ``skipped``.

    Raises:
        ConfigError: neither ``model`` nor ``config`` given, they disagree, an unknown model
            (the message lists the models) or a model option it does not take.
        DatasetError: the dataset root is missing or malformed.
        ProtocolError: ``strict`` and an emotion the protocol does not know.
    """
    from merkit.models.registry import input_spec, model_class

    if model is None and config is None:
        raise ConfigError("give --model NAME or --config FILE")
    if model is not None:
        model_class(model)  # an unknown name lists the models
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    if selection is not None:
        overrides.setdefault("selection", {})["policy"] = selection
    if apex_policy is not None:
        overrides.setdefault("views", {})["apex_policy"] = apex_policy
    if pretrained is not None:
        overrides["pretrained"] = str(pretrained)
    for key, value in (("device", device), ("amp", amp), ("deterministic", deterministic)):
        if value is not None:
            overrides.setdefault("train", {})[key] = value
    cfg = load_config(config if config is not None else default_config_name(model, dataset), overrides)
    if model is not None and cfg.model_name != model:
        raise ConfigError(f"config {config} builds model {cfg.model_name!r}, not {model!r}")
    input_spec(cfg.model_name, **cfg.model_kwargs)  # the model's options, checked before any data is read
    info = get_dataset(dataset)
    proto = get_protocol(protocol or cfg.dataset.protocol or info.protocols[0])
    result = load_dataset(dataset, root, on_error=on_error)
    labelled = label_samples(result.samples, proto, strict=on_error == "strict")
    samples = labelled.samples
    if not samples:
        raise DatasetError(f"{dataset}: protocol {proto.name} keeps no sample")
    cfg, notes = fit_to_release(cfg, samples)
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={
        "name": dataset, "protocol": proto.name, "root": str(root) if root is not None else None})})
    run_dir = Path(out) if out is not None else Path("runs") / f"{dataset}-{cfg.model_name}"
    return PreparedRun(samples, proto, cfg, run_dir, notes=notes, skipped=[*result.skipped, *labelled.skipped],
                       fixes=list(result.fixes))



def default_config_name(model: str, dataset: str) -> str:
    """The shipped config ``<model>-<dataset>`` when it exists, else the reduced ``<model>-cpu``."""
    try:
        find_config(f"{model}-{dataset}")
        return f"{model}-{dataset}"
    except ConfigError:
        return f"{model}-cpu"


#: per model, the config change that lets it run on a release lacking some views
RELEASE_FALLBACKS: dict[str, dict[str, Any]] = {"tsfmicro": {"branches": "temporal"}}


def fit_to_release(cfg: RunConfig, samples: list[Sample]) -> tuple[RunConfig, list[str]]:
    """Check a model's views against what a precomputed release ships (MEGC2019 flow format).

    Samples built from frames can give every view. A release of ready-made views (``meta
    ["precomputed_views"]``) gives only those and the views derived from them
    (:func:`merkit.preprocess.pipeline.release_views`); a model asking for more falls back to
    its variant in :data:`RELEASE_FALLBACKS` with a note, or the run is refused.

    Raises:
        ConfigError: the model needs views the release lacks and has no fallback.
    """
    from merkit.models.registry import input_spec
    from merkit.preprocess.pipeline import release_views

    shipped = [release_views(s.meta["precomputed_views"]) for s in samples if s.meta.get("precomputed_views")]
    if not shipped:
        return cfg, []
    available = set.intersection(*shipped)

    def missing(config: RunConfig) -> set[str]:
        return {v.name for v in input_spec(config.model_name, **config.model_kwargs)} - available

    lacking = missing(cfg)
    if not lacking:
        return cfg, []
    fallback = RELEASE_FALLBACKS.get(cfg.model_name)
    if fallback is not None:
        changed = cfg.model_copy(update={"model": {**cfg.model, **fallback}})
        if not missing(changed):
            setting = ", ".join(f"{k}={v}" for k, v in fallback.items())
            return changed, [f"the release has no {', '.join(sorted(lacking))} view: running {cfg.model_name} with {setting}"]
    raise ConfigError(f"model {cfg.model_name} needs the views {sorted(lacking)}, which this release does not ship "
                      f"(it has {sorted(available)})")


def preprocess_specs(*, views: str | None, model: str | None, config: str | None, dataset: str, size: int = 112,
                     channels: int = 1, num_frames: int = 8):
    """The view specs and views config ``merkit preprocess`` builds.

    ``model`` (or ``config``) gives exactly that model's input spec; ``views`` names views
    built at ``size`` x ``size`` with ``channels`` and ``num_frames``, with the views settings
    (flow method, face step ...) of ``config`` when it is given.

    Raises:
        ConfigError: neither ``views`` nor ``model``/``config``, or both ``views`` and ``model``.
    """
    from merkit.config import ViewsConfig
    from merkit.models.registry import input_spec, model_class
    from merkit.views import VIEWS, ViewSpec

    if views is None and model is None and config is None:
        raise ConfigError("give --views NAMES (optionally with --config for how to build them), or --model/--config")
    if views is not None and model is not None:
        raise ConfigError("give either --views NAMES or --model, not both")
    if views is None:
        if model is not None:
            model_class(model)  # an unknown name lists the models
        cfg = load_config(config if config is not None else default_config_name(model, dataset))
        return input_spec(cfg.model_name, **cfg.model_kwargs), cfg.views
    views_config = load_config(config).views if config is not None else ViewsConfig()
    names = [name.strip() for name in views.split(",") if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if unknown:
        raise ConfigError(f"unknown view {unknown[0]!r} in --views; expected names among {', '.join(VIEWS)}")
    specs = tuple(ViewSpec(name, size=(size, size), channels=channels, length=num_frames if VIEWS[name].sequence else None)
                  for name in names)
    return specs, views_config


def demo_samples(data_dir: str | Path) -> tuple[list[Sample], Protocol]:
    """The SynthME demo set (generated on first use, reused after), labelled by ``casme2-5``."""
    from merkit.data.synthetic import write_synthme
    from merkit.data.synthme.truth import TRUTH_VERSION

    data_dir = Path(data_dir)
    stamp = data_dir / "demo.json"
    wanted = {**DEMO_DATA, "truth_version": TRUTH_VERSION}  # a set written before synthme_truth.npz is regenerated
    if _read_json(stamp) != wanted:  # missing, damaged or another set: generate
        write_synthme(data_dir, **DEMO_DATA)
        stamp.write_text(json.dumps(wanted))
    protocol = get_protocol(DEMO_PROTOCOL)
    return apply_protocol(load_dataset("synthme", data_dir).samples, protocol), protocol


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def inspect_dataset(name: str, root: str | Path | None, protocol: str | None = None, on_error: OnError = "repair",
                    **options: Any) -> dict[str, Any]:
    """Counts per class, subject and source dataset plus the fixes and skips of a loader run.

    Args:
        on_error: the loader's policy (see :func:`prepare_run`).
        options: the loader's own keyword options.

    Returns:
        dict with keys ``dataset, protocol, policy, n_samples, n_subjects, class_counts,
        per_dataset, per_subject, left_out, fixes, skipped`` (class counts under the protocol;
        without a protocol the raw emotion strings are counted). ``left_out``: emotion ->
        samples the protocol leaves out by design; ``fixes``: one dict per recorded change
        (file, row, sample_id, field, old, new, rule, detail); ``skipped``: one line per row or
        sample left out otherwise, with the reason.
    """
    info = get_dataset(name)
    result = load_dataset(name, root, on_error=on_error, **options)
    samples = result.samples
    proto = get_protocol(protocol) if protocol else (get_protocol(info.protocols[0]) if info.protocols else None)
    left_out: dict[str, int] = {}
    skipped = list(result.skipped)
    if proto is not None:
        labelled = label_samples(samples, proto, strict=on_error == "strict")
        samples, left_out = labelled.samples, labelled.left_out
        skipped += labelled.skipped
        class_counts = Counter(proto.classes[s.label] for s in samples)
        class_counts = {c: class_counts.get(c, 0) for c in proto.classes}
    else:
        class_counts = dict(Counter(s.emotion for s in samples))
    per_dataset: dict[str, Any] = {}
    for ds in sorted({s.dataset for s in samples}):
        part = [s for s in samples if s.dataset == ds]
        counts = Counter(proto.classes[s.label] if proto else s.emotion for s in part)
        per_dataset[ds] = {"n_samples": len(part), "n_subjects": len({s.subject for s in part}),
                           "class_counts": dict(sorted(counts.items()))}
    return {
        "dataset": name,
        "protocol": proto.name if proto else None,
        "policy": on_error,
        "n_samples": len(samples),
        "n_subjects": len({s.group for s in samples}),
        "class_counts": class_counts,
        "per_dataset": per_dataset,
        "per_subject": dict(sorted(Counter(s.group for s in samples).items())),
        "left_out": left_out,
        "fixes": [fix.as_dict() for fix in result.fixes],
        "skipped": skipped,
    }
