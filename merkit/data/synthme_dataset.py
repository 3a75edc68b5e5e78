"""The ``synthme`` dataset: a SynthME folder read through the CASME II loader.

SynthME (:mod:`merkit.data.synthetic`) writes the real CASME II layout, so the CASME II loader
reads it unchanged; this entry only renames the dataset to ``synthme`` (so runs never pass
synthetic numbers off as CASME II ones), takes the frame rate the folder was generated at, and attaches what the generator knows exactly:
``meta["synthme_truth"]`` is the clip's ``synthme_truth.npz`` (every frame's depth and 68 landmarks,
:mod:`merkit.data.synthme.truth`), which the pipeline's ``synthme`` depth and AU sources read;
``meta["synthme"] = (root, subject number, Filename)`` names the clip for
:func:`~merkit.data.synthetic.load_synth_clip` (which re-renders it, e.g. for the true flow in tests).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from merkit.data.casme2 import LAYOUT as CASME2_LAYOUT
from merkit.data.casme2 import load_casme2
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.synthme.truth import TRUTH_FILE
from merkit.errors import DatasetError

LAYOUT = CASME2_LAYOUT.replace("CASME2-coding-<date>.xlsx", "CASME2-coding-synthme.xlsx").replace(
    "<root>/", "<root>/                          written by `merkit synth`\n  synthme.json                   generator parameters (exact ground truth)", 1).replace(
    "reg_img47.jpg ...", "reg_img47.jpg ...\n        synthme_truth.npz        every frame's depth and 68 landmarks", 1)


def load_synthme(root: str | Path, on_error: OnError = "repair") -> LoadResult:
    """Load a folder written by :func:`~merkit.data.synthetic.write_synthme`.

    Raises:
        DatasetError: ``synthme.json`` is missing (not a SynthME folder) or malformed.
    """
    root = Path(root)
    record = root / "synthme.json"
    if not record.is_file():
        raise DatasetError(f"synthme: {root} holds no synthme.json; generate one with `merkit synth --out {root}`")
    try:
        fps = float(json.loads(record.read_text())["config"]["fps"])
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise DatasetError(f"{record}: malformed SynthME record ({type(err).__name__}: {err}); write the folder "
                           f"again with `merkit synth --out {root}`") from None
    result = load_casme2(root, on_error=on_error)
    samples = [
        replace(s, dataset="synthme", fps=fps, meta={**s.meta, "synthme": (str(root), int(s.subject[3:]), s.clip_id),
                                                     "synthme_truth": str(s.frames.paths[0].parent / TRUTH_FILE)})
        for s in result.samples
    ]
    fixes = [replace(fix, sample_id=f"synthme/{fix.sample_id.split('/', 1)[1]}") if fix.sample_id else fix
             for fix in result.fixes]
    return LoadResult(samples=samples, fixes=fixes, skipped=result.skipped)


register_dataset(DatasetInfo(name="synthme", loader=load_synthme, protocols=("casme2-5", "casme2-3"),
                             layout=LAYOUT, licensed=False))
