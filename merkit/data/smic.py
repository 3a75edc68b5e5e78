"""SMIC-HS (Li et al., FG 2013): 164 micro-expression clips of 16 subjects at 100 fps.

SMIC has no coding spreadsheet: the emotion is the folder a clip lies in,
``<root>/HS/<subject>/micro/{positive,negative,surprise}/<clip>/image<number>.bmp``. Each clip
folder runs from onset to offset, so ``onset_frame``/``offset_frame`` are its first and last
frame numbers; SMIC annotates no apex, so ``apex_frame`` is None (the run's apex policy decides).
Folders beside ``micro/`` (``non_micro/``) and subjects without ``micro/`` are not read.
"""

from __future__ import annotations

from pathlib import Path

from merkit.data.annotations import LoadLog, child_dir, frame_source, natural_key
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.sample import Sample
from merkit.errors import DatasetError

SMIC_FPS = 100.0
SMIC_EMOTIONS = ("negative", "positive", "surprise")

LAYOUT = """\
<root>/
  HS/                            the high-speed (100 fps) part
    s1/                          one folder per subject
      micro/
        negative/                one folder per emotion: negative, positive, surprise
          s1_ne_01/              one folder per clip, onset to offset
            image0106440.bmp     frames named image<frame number>.bmp
            image0106441.bmp ...
        positive/ ...
        surprise/ ...
    s2/ ... s20/"""


def load_smic(root: str | Path, on_error: OnError = "repair") -> LoadResult:
    """Load SMIC from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root holding ``HS/``.
        on_error: ``repair`` (default) and ``strict`` raise on the first bad clip folder (SMIC has
            no frame numbers to repair: a clip runs from its first to its last frame), ``skip``
            leaves it out and records why.

    Returns:
        LoadResult: one Sample per clip folder, in natural order of subject, emotion and clip
        (``dataset="smic"``, ``subject`` = the subject folder name, ``clip_id`` = the clip folder
        name, ``apex_frame=None``, ``fps=100``, ``meta={"folder": clip folder}``).

    Raises:
        DatasetError: ``HS/`` is missing or holds no clip; unless ``on_error="skip"`` also an
            emotion folder other than negative/positive/surprise.
        MissingFramesError: unless ``on_error="skip"``, a clip folder without .bmp frames.
    """
    root = Path(root)
    part_dir = child_dir(root, "HS")
    if part_dir is None:
        raise DatasetError(f"smic: no HS/ folder in {root}.\nExpected layout:\n{LAYOUT}")
    log = LoadLog(on_error)
    samples: list[Sample] = []
    subjects = sorted((p for p in part_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    for subject_dir in subjects:
        micro = child_dir(subject_dir, "micro")
        if micro is None:
            continue
        for emotion_dir in sorted((p for p in micro.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            emotion = emotion_dir.name.strip().lower()
            if emotion not in SMIC_EMOTIONS:
                log.problem(DatasetError(f"{emotion_dir}: unknown emotion folder; expected one of {SMIC_EMOTIONS}"))
                continue
            for clip_dir in sorted((p for p in emotion_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
                try:
                    frames = frame_source(clip_dir, "*.bmp", file=clip_dir, row=None, clip=clip_dir.name)
                except DatasetError as err:
                    log.problem(err)
                    continue
                samples.append(Sample(dataset="smic", subject=subject_dir.name, clip_id=clip_dir.name, frames=frames,
                                      onset_frame=frames.numbers[0], apex_frame=None, offset_frame=frames.numbers[-1],
                                      emotion=emotion, fps=SMIC_FPS, meta={"folder": str(clip_dir)}))
    if not samples and not log.skipped:
        raise DatasetError(f"smic: no clip folders under {part_dir}.\nExpected layout:\n{LAYOUT}")
    return LoadResult(samples=samples, fixes=log.fixes, skipped=log.skipped)


register_dataset(DatasetInfo(name="smic", loader=load_smic, protocols=("smic-3",), layout=LAYOUT,
                             repairs="no coding sheet: a clip folder is onset..offset, no apex; nothing to repair."))
