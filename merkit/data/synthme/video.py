"""Long SynthME videos for spotting: the clips of one subject joined end to end.

A SynthME clip is a neutral lead-in, one micro-expression and a neutral lead-out. Written with
:data:`SEAMLESS` (no head motion, illumination drift or blinks, which SynthME draws relative to
each clip's onset), every clip of a subject starts and ends on the same neutral face, so joining
them gives one long video whose only changes are the expressions (and sensor noise and JPEG),
with exact intervals. Long lead-ins and lead-outs (``lead_in_range``, ``lead_out_range``) space
the expressions apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from merkit.errors import DatasetError

#: SynthConfig fields that make a subject's clips join without a jump (for ``write_synthme``)
SEAMLESS: dict[str, float] = {
    "head_translation": 0.0, "head_rotation": 0.0, "blink_probability": 0.0,
    "illumination_gain": 0.0, "illumination_gradient": 0.0,
}


@dataclass(frozen=True)
class JoinedVideo:
    """Clips of one SynthME subject joined into one video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB, the clips' frames as written, clip after clip.
        fps: frame rate.
        intervals: one row per clip: ``sample_id, clip_id, emotion, onset, apex, offset``
            (positions in ``frames``), ``first, last`` (the clip's first and last positions),
            ``first_number`` (the dataset frame number of the clip's first frame: position p of
            the clip is frame ``p - first + first_number`` of the dataset clip).
    """

    frames: np.ndarray
    fps: float
    intervals: pd.DataFrame


def join_clips(root: str | Path, subject: str, clip_ids: Sequence[str] | None = None) -> JoinedVideo:
    """Join the clips of ``subject`` of a SynthME folder (every frame of each clip's folder).

    Args:
        root: a folder written by :func:`~merkit.data.synthetic.write_synthme`.
        subject: the subject id as the loader gives it (``sub01``).
        clip_ids: the clips in order (None: all of the subject's, in the coding file's order).

    Raises:
        DatasetError: not a SynthME folder, an unknown subject or clip, or a SynthME set written
            with head motion, illumination drift or blinks (the joins would jump).
    """
    import json

    from merkit.data.registry import load_dataset

    config = json.loads((Path(root) / "synthme.json").read_text())["config"] if (Path(root) / "synthme.json").is_file() else None
    if config is None:
        raise DatasetError(f"{root}: holds no synthme.json; not a SynthME folder")
    jumpy = sorted(k for k, v in SEAMLESS.items() if config.get(k) != v)
    if jumpy:
        raise DatasetError(f"{root}: written with {', '.join(jumpy)} != 0, so its clips do not join seamlessly; "
                           "write it with merkit.data.synthme.video.SEAMLESS")
    samples = [s for s in load_dataset("synthme", root).samples if s.subject == subject]
    if not samples:
        raise DatasetError(f"{root}: no clips of subject {subject!r}")
    by_id = {s.clip_id: s for s in samples}
    order = list(clip_ids) if clip_ids is not None else [s.clip_id for s in samples]
    unknown = [c for c in order if c not in by_id]
    if unknown:
        raise DatasetError(f"{root}: subject {subject} has no clips {unknown}; its clips: {sorted(by_id)}")
    frames, rows, start = [], [], 0
    for clip_id in order:
        sample = by_id[clip_id]
        source = sample.frames
        clip = np.stack([source.read(n) for n in source.numbers])
        first = source.numbers[0]
        rows.append({"sample_id": sample.sample_id, "clip_id": clip_id, "emotion": sample.emotion,
                     "onset": start + sample.onset_frame - first, "apex": start + sample.apex_frame - first,
                     "offset": start + sample.offset_frame - first, "first": start, "last": start + len(clip) - 1,
                     "first_number": first})
        frames.append(clip)
        start += len(clip)
    return JoinedVideo(np.concatenate(frames), float(samples[0].fps), pd.DataFrame(rows))
