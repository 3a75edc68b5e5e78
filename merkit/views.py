"""View specifications: what a model needs from the preprocessing pipeline.

A view is a named float32 array built from one :class:`~merkit.data.Sample`. Shapes, per sample
(a batch puts ``B`` in front):

============ ================= ===============================================================
name         shape             content
============ ================= ===============================================================
onset        (C, H, W)         onset frame, values in [0, 1]
apex         (C, H, W)         apex frame, values in [0, 1]
diff         (C, H, W)         apex - onset, values in [-1, 1]
flow         (3, H, W)         onset->apex optical flow u, v (pixels at H x W) and optical strain
flow_regions (3, H, W)         the ``flow`` view cut into four (H/2, W/2) facial regions around
                               the eyes and mouth corners, arranged 2 x 2 (HTNet; see
                               :mod:`merkit.preprocess.regions`); never flipped or shifted
frames       (T, C, H, W)      T frames from onset to offset, values in [0, 1]
flow_seq     (T, 3, H, W)      onset->frame flow (u, v, strain) for T frames
depth_seq    (T, 1, H, W)      depth of T frames, values in [0, 1]
au           (T, A)            per-frame AU intensities minus the onset frame's (A = len(AU_VOCAB))
============ ================= ===============================================================

``C`` is 1 (grey) or 3 (RGB). Every model declares the views it needs in its ``input_spec``
attribute; the pipeline builds exactly those. :data:`VIEWS` is the one table of view names and
their kinds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewKind:
    """What kind of array a view is (one row of :data:`VIEWS`).

    Attributes:
        sequence: the view has a time axis ``T`` (its spec needs a ``length``).
        content: ``image`` (intensities in [0, 1], ``C`` = 1 or 3 channels), ``difference``
            (apex - onset intensities), ``flow`` (u, v, strain: 3 channels), ``regions`` (flow
            cut into facial regions and rearranged: 3 channels), ``depth`` (one channel) or
            ``au`` (per-frame AU intensities, no image axes).
    """

    sequence: bool
    content: str

    @property
    def spatial(self) -> bool:
        """The view has image axes ``(H, W)`` last."""
        return self.content != "au"

    @property
    def augmented(self) -> bool:
        """Augmentation flips and shifts it: every spatial view but a region arrangement, whose
        flip or shift would move regions into each other's places."""
        return self.spatial and self.content != "regions"

    @property
    def takes_channels(self) -> bool:
        """The number of channels is a choice (1 grey or 3 RGB) rather than fixed by the content."""
        return self.content in ("image", "difference")


#: The one table of view names and kinds; the pipeline, the augmentation, the config check and
#: the API read it.
VIEWS: dict[str, ViewKind] = {
    "onset": ViewKind(sequence=False, content="image"),
    "apex": ViewKind(sequence=False, content="image"),
    "diff": ViewKind(sequence=False, content="difference"),
    "flow": ViewKind(sequence=False, content="flow"),
    "flow_regions": ViewKind(sequence=False, content="regions"),
    "frames": ViewKind(sequence=True, content="image"),
    "flow_seq": ViewKind(sequence=True, content="flow"),
    "depth_seq": ViewKind(sequence=True, content="depth"),
    "au": ViewKind(sequence=True, content="au"),
}
VIEW_NAMES: tuple[str, ...] = tuple(VIEWS)
SEQUENCE_VIEWS: tuple[str, ...] = tuple(name for name, kind in VIEWS.items() if kind.sequence)
AUGMENTED_VIEWS: tuple[str, ...] = tuple(name for name, kind in VIEWS.items() if kind.augmented)
FLOW_VIEWS: tuple[str, ...] = tuple(name for name, kind in VIEWS.items() if kind.content == "flow")
INTENSITY_VIEWS: tuple[str, ...] = tuple(name for name, kind in VIEWS.items() if kind.content == "image")
CHANNEL_VIEWS: tuple[str, ...] = tuple(name for name, kind in VIEWS.items() if kind.takes_channels)


@dataclass(frozen=True)
class ViewSpec:
    """What one view must look like.

    Attributes:
        name: one of :data:`VIEW_NAMES`.
        size: (H, W) in pixels (ignored for ``au``).
        channels: 1 or 3 for image views; fixed 3 for flow views, 1 for depth.
        length: T for sequence views, None otherwise.
    """

    name: str
    size: tuple[int, int] = (112, 112)
    channels: int = 1
    length: int | None = None

    def __post_init__(self) -> None:
        from merkit.errors import ConfigError

        if self.name not in VIEW_NAMES:
            raise ConfigError(f"unknown view {self.name!r}; expected one of {VIEW_NAMES}")
        sequence = VIEWS[self.name].sequence
        if sequence and (self.length is None or self.length < 2):
            raise ConfigError(f"view {self.name!r} is a sequence and needs length >= 2, got {self.length}")
        if not sequence and self.length is not None:
            raise ConfigError(f"view {self.name!r} is a single map and takes no length")
        if self.channels not in (1, 3):
            raise ConfigError(f"view {self.name!r}: channels must be 1 or 3, got {self.channels}")
        if VIEWS[self.name].spatial and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"view {self.name!r}: size must be (height, width) of at least 1 pixel, got {self.size}")

    def shape(self, num_aus: int | None = None) -> tuple[int, ...]:
        """The per-sample array shape this spec asks for."""
        kind = VIEWS[self.name]
        if kind.content == "au":
            return (self.length, num_aus if num_aus is not None else -1)
        channels = {"flow": 3, "regions": 3, "depth": 1}.get(kind.content, self.channels)
        image = (channels, *self.size)
        return (self.length, *image) if kind.sequence else image
