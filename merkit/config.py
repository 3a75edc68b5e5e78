"""Run configuration: one YAML per paper setting, shipped in the package (``merkit/configs/``,
read with :mod:`importlib.resources`, so an installed wheel has them), validated by pydantic.

A config file has the top-level sections ``model`` (``name`` plus builder keyword arguments),
``train``, ``views``, and optionally ``dataset`` and ``selection``. Unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from merkit.errors import ConfigError

#: the configs shipped with merkit (a folder of the installed package)
CONFIG_DIR: Traversable = resources.files("merkit") / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per epoch.

    ``exponential``: lr_e = lr * gamma**e. ``cosine``: cosine annealing to 0 over the epochs.
    """

    type: Literal["none", "exponential", "cosine"] = "none"
    gamma: float = 0.95


class AugmentConfig(_Strict):
    """Training-time augmentation, applied identically to every view of a sample.

    ``random_crop``: pad by this many pixels (the border replicated) and crop back at a random offset.
    ``shift``: the same as a translation of up to this many pixels (paper 004's face-box shift).
    ``color_jitter``: maximum relative brightness/contrast change of image views.
    Horizontal flips negate the flow's u channel, vertical flips its v channel.
    ``test_hflip`` (test-time): every prediction (test clips, validation, inner folds, new
    footage) averages the class probabilities of the clip and of its mirror image, made as a
    training flip makes it (:func:`merkit.train.augment.mirror_views`).

    Offline expansion (paper 004, Sec. 3.2 (2), as printed): the training set is enlarged with
    fixed copies of every clip before the online augmentation above: ``offline_shift`` > 0 adds
    four copies translated by that many pixels left, right, up and down; ``offline_vflip`` adds
    one upside-down copy. Every epoch then visits every copy once
    (:func:`merkit.train.augment.offline_copies`).
    """

    hflip: bool = False
    vflip: bool = False
    random_crop: int = 0
    shift: int = 0
    color_jitter: float = 0.0
    offline_shift: int = Field(0, ge=0)
    offline_vflip: bool = False
    test_hflip: bool = False


class TrainConfig(_Strict):
    """Optimisation, and where and how precisely it computes.

    ``sampler``: ``shuffle`` (every training clip once per epoch, in a random order) or
    ``balanced`` (as many draws per epoch as training clips, with replacement, each class equally
    likely: the class-balanced counterpart of a class-weighted loss that works with every
    model's own loss).
    ``device``: ``auto`` (first CUDA GPU, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``,
    ``mps``. ``amp``: ``none`` (float32), ``bf16`` (CPU, MPS, CUDA with native bfloat16) or
    ``fp16`` (CUDA and MPS, with a gradient scaler). ``deterministic``: torch's determinism flags
    (cuDNN, cuBLAS, deterministic algorithms), recorded in ``metrics.json``. ``device`` and
    ``deterministic`` say how a run computes, not what: a finished fold is reused on another
    device (:mod:`merkit.train.device`).
    """

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    grad_clip: float | None = None
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    deterministic: bool = False
    ema: float | None = Field(None, gt=0, lt=1)
    members: int = Field(1, ge=1)


class ViewsConfig(_Strict):
    """How views are built (the model's input spec says which views and their sizes).

    The model's ``input_spec`` is the one source of view names, sizes, channels and lengths.
    ``size``, ``channels`` and ``num_frames`` may be written here to document a paper setting;
    when given they must agree with the input spec (checked at run start).

    Attributes:
        fps: resample the onset..offset course to this frame rate before sampling (None: keep).
        sampling: ``uniform`` positions, ``interpolate`` (linear temporal interpolation of the
            whole course to num_frames; for the ``frames`` and ``flow_seq`` views),
            ``keyframes`` (spatio-temporal-slice key frames, paper 004) or ``all`` (every frame of
            the course, after ``fps``; the view's length is a capacity: shorter clips are
            zero-padded, with ``<view>_mask`` marking real frames, longer ones keep that many
            evenly spaced frames; only for models that read the mask, e.g. ATM-GCN). Sequence
            views carry each frame's distance from the onset in ``<view>_position``.
        apex_policy: ``annotated`` (error if missing), ``annotated-or-middle``, ``middle``, ``spotted``.
        flow: optical-flow method for flow views.
        magnify: Eulerian magnification factor alpha for sequence views (None: off).
        face: ``none`` (frames are already face crops), ``mtcnn`` or ``dlib`` (detect, align by a
            similarity transform, crop), or ``dlib-box`` (the square around dlib's 68 landmarks on
            the onset frame, cut from every frame without rotation: paper 004's crop).
        depth: where depth_seq comes from: ``dataset`` (the Sample's depth frames), ``synthme``,
            ``depth-anything:<checkpoint dir>`` or ``depth-anything`` (the directory in
            ``$MERKIT_DEPTH_ANYTHING``); see :mod:`merkit.preprocess.depth`.
        au: where the au view's landmarks come from (``dlib`` landmarks, or ``synthme`` ground truth).
        release_flow: how a release's flow images (the MEGC2019 flow format: u, v and strain each
            min-max scaled per image) become the ``flow`` view. ``minmax``: the released bytes / 255,
            each channel in [0, 1] (what the published STSTNet and HTNet code read); no motion
            sits at a different level in every image (the level of the pixels that do not move).
            ``centered``: u and v minus their per-image median, so that 0 is the motion of the
            median face pixel (no expression motion), as in the flow merkit computes; negating u
            then mirrors the clip exactly, so flips are allowed (with ``minmax`` they are refused).
            Strain is left as released. Applies to a release's flow images and to flow computed
            with ``flow_form: release``.
        flow_form: how a flow view computed from frames is scaled. ``raw``: u and v in pixels
            of the view's grid, strain from that field (:func:`merkit.preprocess.flow.flow_view`).
            ``release``: rendered as the MEGC2019 release renders it (onset->apex flow at the
            frames' resolution, 28 x 28, each channel min-max scaled per image:
            :func:`merkit.preprocess.flow.megc_flow_image`), then read exactly as a released
            flow image (``release_flow``, then resized to the view's size): the input form of a
            model trained on the release, e.g. to pre-train on SynthME and fine-tune on the
            composite. A release's own flow images ignore this setting.
    """

    size: tuple[int, int] | None = None
    channels: Literal[1, 3] | None = None
    num_frames: int | None = Field(None, ge=2)
    fps: float | None = None
    sampling: Literal["uniform", "interpolate", "keyframes", "all"] = "uniform"
    apex_policy: Literal["annotated", "annotated-or-middle", "middle", "spotted"] = "annotated-or-middle"
    spotting: Literal["diff", "flow", "frequency"] = "diff"
    flow: Literal["tvl1", "dis", "farneback"] = "tvl1"
    magnify: float | None = None
    face: Literal["none", "mtcnn", "dlib", "dlib-box"] = "none"
    depth: str = "dataset"
    au: Literal["dlib", "synthme"] = "dlib"
    release_flow: Literal["minmax", "centered"] = "minmax"
    flow_form: Literal["raw", "release"] = "raw"

    @model_validator(mode="after")
    def _interpolation_sets_its_own_rate(self) -> "ViewsConfig":
        if self.sampling == "interpolate" and self.fps is not None:
            raise ValueError("sampling 'interpolate' resamples the whole course to num_frames; fps must be null with it")
        return self


class SelectionConfig(_Strict):
    """Model selection; never looks at the test subject.

    ``last``: the model after the last epoch of the fixed budget.
    ``val-split``: hold out ``val_fraction`` of the *training* subjects (at least one), keep the
    epoch with the best validation UF1.
    """

    policy: Literal["last", "val-split"] = "last"
    val_fraction: float = Field(0.2, gt=0, lt=1)


class DatasetConfig(_Strict):
    name: str = "casme2"
    protocol: str | None = None
    root: str | None = None


class RunConfig(_Strict):
    """A full run: what ``config.yaml`` in a run directory holds (resolved)."""

    model: dict[str, Any]
    train: TrainConfig = TrainConfig()
    views: ViewsConfig = ViewsConfig()
    selection: SelectionConfig = SelectionConfig()
    dataset: DatasetConfig = DatasetConfig()
    seed: int = Field(0, ge=0)
    folds: Literal["loso", "leave-one-sample-out"] = Field(
        "loso", description="loso: one fold per subject (subject-independent, the default); leave-one-sample-out: "
                            "one fold per clip, the test subject's other clips train (paper 004's Eq. 4.5; not "
                            "subject-independent, labelled so in metrics.json)")
    shuffle_labels: bool = Field(False, description="leak check: permute training labels")
    pretrained: str | None = Field(None, description="checkpoint every fold starts from (pre-train -> fine-tune)")

    @field_validator("model")
    @classmethod
    def _has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("the model section needs a 'name'")
        return value

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_names() -> list[str]:
    """Names of the configs shipped with merkit (``tsfmicro-cpu``, ...), sorted."""
    return sorted(entry.name[: -len(".yaml")] for entry in CONFIG_DIR.iterdir() if entry.name.endswith(".yaml"))


def find_config(name_or_path: str | Path) -> Path | Traversable:
    """A config file by path, or by the name of a config shipped with merkit (``tsfmicro-cpu``).

    Raises:
        ConfigError: neither an existing file nor a shipped config's name (the message lists them).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"config {str(name_or_path)!r} is a folder, not a YAML file")
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if "/" not in str(name_or_path) and candidate.is_file():
        return candidate
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor the name of a config shipped with merkit "
                      f"(known: {', '.join(config_names())})")


def _read_raw(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path | Traversable]:
    path = find_config(name_or_path)
    identity = str(path.resolve()) if isinstance(path, Path) else str(path)
    if identity in seen:
        raise ConfigError(f"{path}: 'base' configs form a cycle")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config ({err.__class__.__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, train:, views: ...), got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is not None:
        parent, _ = _read_raw(base, seen + (identity,))
        raw = _merge(parent, raw)
    return raw, path


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a config file, applying nested ``overrides``.

    A file may start from another with ``base: <name or path>``; its own keys are merged over
    the base's (nested sections key by key).

    Raises:
        ConfigError: unreadable YAML or a value that fails validation (message names the key).
    """
    raw, path = _read_raw(name_or_path)
    return config_from_dict(_merge(raw, overrides or {}), source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


#: ``train`` settings that say how a run computes, not what: left out of :func:`result_settings`
COMPUTE_SETTINGS = ("device", "deterministic")

#: ``train`` settings (their paths) added after runs were recorded, with the value that leaves
#: training as it was: left out of :func:`result_settings` while they have it, so runs recorded
#: before the setting existed stay reusable
LATER_SETTINGS = {("ema",): None, ("augment", "test_hflip"): False, ("members",): 1}


def result_settings(config: RunConfig) -> dict[str, Any]:
    """The resolved config as a dict without the compute settings (:data:`COMPUTE_SETTINGS`) and
    the later settings at their old behaviour (:data:`LATER_SETTINGS`): what a run's results
    depend on, and what resuming a fold or a benchmark run compares, so a run may resume on
    another device."""
    settings = config.model_dump(mode="json")
    for key in COMPUTE_SETTINGS:
        settings["train"].pop(key)
    for (*parents, key), unchanged in LATER_SETTINGS.items():
        section = settings["train"]
        for parent in parents:
            section = section[parent]
        if section[key] == unchanged:
            section.pop(key)
    return settings


def dump_config(config: RunConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the fully resolved config (plus ``extra`` sections such as ``protocol``) as YAML."""
    data = config.model_dump(mode="json")
    data.update(extra or {})
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
