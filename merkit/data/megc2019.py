"""The MEGC2019 composite (See et al., FG 2019): CASME II + SAMM + SMIC-HS in three classes.

Two datasets are registered here:

``megc2019``
    built from the three raw loaders. CASME II loses the five clips the challenge excluded
    (:data:`EXCLUDED`). The composite protocol ``megc2019-3`` maps each source by its own table
    (CASME II: negative = disgust + repression; SAMM: negative = anger + contempt + disgust +
    fear + sadness; positive = happiness; SMIC as is) and keeps 442 clips of 68 subjects.
    Samples keep their source dataset (``Sample.dataset`` is ``casme2``, ``samm`` or ``smic``),
    so the LOSO group ``dataset/subject`` keeps subject ids distinct across datasets and metrics
    can be reported per source dataset.

``megc2019-flow``
    the form in which the composite is widely shared: a CSV (``dataset, sub, filename_o,
    label``; 0 negative, 1 positive, 2 surprise) and one 28 x 28 PNG per clip holding the
    onset->apex flow u, v and optical strain, each channel min-max scaled to 0..255 per image,
    optionally with apex face crops named by an ``imagename`` column. These samples have no
    frames: ``frames`` is empty, ``onset_frame = offset_frame = 0`` and ``apex_frame`` is None;
    the precomputed views travel in ``meta``:

    * ``meta["flow_image"]``: path of the flow PNG (read it with :func:`read_flow_image`),
    * ``meta["apex_image"]``: path of the apex crop, only when the release has crops,
    * ``meta["precomputed_views"]``: ``("flow",)`` or ``("flow", "apex")``,
    * ``meta["source_format"] = "megc2019-flow"``.

    ``Sample.emotion`` is the class name (``negative``/``positive``/``surprise``) and
    ``Sample.dataset`` the source dataset, so ``megc2019-3`` applies unchanged.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from merkit.data.annotations import LoadLog, cell_text, collect_rows, header_key, where
from merkit.data.casme2 import CASME2_FPS, load_casme2
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.repairs import Fix
from merkit.data.sample import FrameSource, Sample
from merkit.data.samm import SAMM_FPS, load_samm
from merkit.data.smic import SMIC_FPS, load_smic
from merkit.errors import AnnotationError, DatasetError, MissingFramesError

EXCLUDED = frozenset({("sub04", "EP12_01f"), ("sub05", "EP09_05f"), ("sub24", "EP07_01"), ("sub24", "EP07_04f"),
                      ("sub24", "EP10_03")})
"""CASME II clips (subject, Filename) the MEGC2019 challenge left out of the composite."""

LABELS = ("negative", "positive", "surprise")
SOURCE_FPS = {"casme2": CASME2_FPS, "samm": SAMM_FPS, "smic": SMIC_FPS}

# source -> (loader, folder names it may have under the composite root, a file or folder its root holds)
_SOURCES = {
    "casme2": (load_casme2, ("casme2", "casmeii"), "CASME2-coding-*.xlsx"),
    "samm": (load_samm, ("samm",), "SAMM_Micro_FACS_Codes*.xlsx"),
    "smic": (load_smic, ("smic",), "HS"),
}

LAYOUT = """\
<root>/                          a folder holding the three datasets, each in its own layout
  CASME2/                        (or CASME_II ...) as `merkit datasets list` shows for casme2
  SAMM/                          as for samm
  SMIC/                          (or SMIC-HS ...) as for smic, holding HS/
A source not found under <root> is read from $MERKIT_CASME2_ROOT, $MERKIT_SAMM_ROOT or
$MERKIT_SMIC_ROOT (command line: set them, then `merkit train --dataset megc2019 --root <root>`);
in Python, load_dataset("megc2019", root, casme2_root=..., samm_root=..., smic_root=...) names
them directly."""

FLOW_LAYOUT = """\
<root>/
  <name>.csv                     one CSV with the columns dataset, sub, filename_o, label
                                 (0 negative, 1 positive, 2 surprise) [, imagename, ...]
  <flow folder>/                 e.g. STSNet_whole_norm_u_v_os/
    sub01_EP02_01f .png          one 28x28 RGB image per clip, <sub>_<filename_o> .png
    006_006_1_2 .png ...         (the space before .png is optional): u, v, optical strain
  [<apex folder>/]               optional, e.g. combined_datasets_whole/
    <imagename>                  224x224 apex face crops named by the imagename column"""


def load_megc2019(root: str | Path, on_error: OnError = "repair", *, casme2_root: str | Path | None = None,
                  samm_root: str | Path | None = None, smic_root: str | Path | None = None) -> LoadResult:
    """Load the composite from its three raw datasets (see :data:`LAYOUT`).

    Args:
        root: folder holding the three dataset roots.
        on_error: passed to each source loader.
        casme2_root, samm_root, smic_root: a source root given on its own (takes precedence
            over ``root``; ``$MERKIT_<SOURCE>_ROOT`` is the last resort).

    Returns:
        LoadResult: the samples of CASME II (without :data:`EXCLUDED`), SAMM and SMIC-HS, all
        emotions kept (the ``megc2019-3`` protocol selects and maps them); the fixes of the kept
        samples (their sample ids name the source), skipped lines prefixed with the source
        name, and one skipped line per excluded clip.

    Raises:
        DatasetError: a source root cannot be found, or a source loader's error.
    """
    root = Path(root)
    given = {"casme2": casme2_root, "samm": samm_root, "smic": smic_root}
    samples: list[Sample] = []
    fixes: list[Fix] = []
    skipped: list[str] = []
    for name, (loader, _, _) in _SOURCES.items():
        result = loader(_source_root(name, root, given[name]), on_error=on_error)
        skipped += [f"[{name}] {line}" for line in result.skipped]
        kept = set()
        for sample in result.samples:
            if name == "casme2" and (sample.subject, sample.clip_id) in EXCLUDED:
                skipped.append(f"[casme2] {sample.subject}/{sample.clip_id}: excluded from the MEGC2019 composite")
            else:
                samples.append(sample)
                kept.add(sample.sample_id)
        fixes += [fix for fix in result.fixes if fix.sample_id in kept]
    return LoadResult(samples=samples, fixes=fixes, skipped=skipped)


def _source_root(name: str, root: Path, given: str | Path | None) -> Path:
    if given is not None:
        if not Path(given).is_dir():
            raise DatasetError(f"megc2019: {name}_root {given} does not exist")
        return Path(given)
    _, prefixes, marker = _SOURCES[name]
    if root.is_dir():
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            key = re.sub(r"[^a-z0-9]", "", child.name.lower())
            if key.startswith(prefixes) and _holds(child, marker):
                return child
    env = os.environ.get(f"MERKIT_{name.upper()}_ROOT")
    if env and Path(env).is_dir():
        return Path(env)
    raise DatasetError(f"megc2019: no {name} dataset under {root} (a folder named like {prefixes[0].upper()} holding "
                       f"{marker}), no {name}_root given and MERKIT_{name.upper()}_ROOT unset.\n"
                       f"Expected layout:\n{LAYOUT}")


def _holds(folder: Path, marker: str) -> bool:
    pattern = re.compile(re.escape(marker).replace(r"\*", ".*"), re.IGNORECASE)
    return any(pattern.fullmatch(p.name) for p in folder.iterdir())


# --------------------------------------------------------------------------- released flow format

_DATASET_NAMES = {"casme2": "casme2", "casmeii": "casme2", "samm": "samm", "smic": "smic", "smichs": "smic"}
_FLOW_COLUMNS = ("dataset", "sub", "filename_o", "label")


def load_megc2019_flow(root: str | Path, on_error: OnError = "repair", *, csv_file: str | Path | None = None,
                       flow_dir: str | Path | None = None, apex_dir: str | Path | None = None) -> LoadResult:
    """Load the released MEGC2019 flow images (see :data:`FLOW_LAYOUT` and the module doc).

    Args:
        root: release root.
        on_error: ``repair`` (default) and ``strict`` raise the first bad row (a released
            table has no frame numbers to repair), ``skip`` leaves it out and records why.
        csv_file: the CSV (default: the one .csv in ``root`` or ``root/label`` with the
            required columns).
        flow_dir: folder of the flow PNGs (default: the folder up to three levels below
            ``root`` holding most of the CSV's images).
        apex_dir: folder of the apex crops (default: found the same way from the
            ``imagename`` column; none found means the release has no crops).

    Returns:
        LoadResult: one Sample per CSV row (``dataset`` = source dataset, ``subject`` = sub,
        ``clip_id`` = filename_o, emotion = class name, ``meta`` as in the module doc).

    Raises:
        DatasetError: no CSV, no flow images, or a missing column.
        AnnotationError / MissingFramesError: unless ``on_error="skip"``, a bad row, or a
            missing flow image or apex crop.
    """
    root = Path(root)
    table = Path(csv_file) if csv_file is not None else _find_csv(root)
    if not table.is_absolute() and not table.exists():
        table = root / table
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        rows = [(i, tuple(values)) for i, values in enumerate(reader, start=2)]
    keys = [header_key(h) for h in header]
    missing = [c for c in _FLOW_COLUMNS if header_key(c) not in keys]
    if missing:
        raise AnnotationError(f"missing column(s) {missing}; the header holds {header}", file=str(table), row=1)
    at = {c: keys.index(header_key(c)) for c in (*_FLOW_COLUMNS, "imagename") if header_key(c) in keys}

    def flow_key(values: tuple) -> str:
        return f"{_text(values, at['sub'])}_{_text(values, at['filename_o'])}"

    flow_folder = _pick_folder(root, flow_dir, [flow_key(v) for _, v in rows], png=True)
    if flow_folder is None:
        raise DatasetError(f"megc2019-flow: no flow images <sub>_<filename_o>[ ].png found under {root}.\n"
                           f"Expected layout:\n{FLOW_LAYOUT}")
    flow_files = _listing(flow_folder, png=True)
    apex_folder, apex_files = None, {}
    if "imagename" in at:
        names = [_text(v, at["imagename"]) for _, v in rows]
        apex_folder = _pick_folder(root, apex_dir, names, png=False, exclude=flow_folder)
        apex_files = _listing(apex_folder, png=False) if apex_folder is not None else {}
    elif apex_dir is not None:
        raise AnnotationError("apex_dir given but the CSV has no imagename column", file=str(table), row=1)

    def read_row(row: int, values: tuple) -> tuple[Sample, list[str]]:
        source = _DATASET_NAMES.get(re.sub(r"[^a-z0-9]", "", _text(values, at["dataset"]).lower()))
        if source is None:
            raise AnnotationError(f"dataset: expected casme2, samm or smic, got {_text(values, at['dataset'])!r}",
                                  file=str(table), row=row)
        subject, clip = _text(values, at["sub"]), _text(values, at["filename_o"])
        if not subject or not clip:
            raise AnnotationError("sub and filename_o must not be empty", file=str(table), row=row)
        label = _text(values, at["label"])
        if label not in ("0", "1", "2"):
            raise AnnotationError(f"label: expected 0, 1 or 2, got {label!r}", file=str(table), row=row)
        place = where(table, row, f"{subject}/{clip}")
        flow = flow_files.get(flow_key(values))
        if flow is None:
            raise MissingFramesError(f"{place}: no flow image {flow_key(values)} .png in {flow_folder}")
        meta = {"row": row, "file": str(table), "flow_image": str(flow), "precomputed_views": ("flow",),
                "source_format": "megc2019-flow"}
        if apex_folder is not None:
            crop = apex_files.get(_text(values, at["imagename"]))
            if crop is None:
                raise MissingFramesError(f"{place}: no apex crop {_text(values, at['imagename'])!r} in {apex_folder}")
            meta.update(apex_image=str(crop), precomputed_views=("flow", "apex"))
        sample = Sample(dataset=source, subject=subject, clip_id=clip, frames=FrameSource((), ()), onset_frame=0,
                        apex_frame=None, offset_frame=0, emotion=LABELS[int(label)], fps=SOURCE_FPS[source], meta=meta)
        return sample, []

    log = LoadLog(on_error)
    samples = collect_rows(rows, read_row, log, table)
    return LoadResult(samples=samples, fixes=log.fixes, skipped=log.skipped)


def _text(values: tuple, position: int) -> str:
    return cell_text(values[position]) if position < len(values) else ""


def _find_csv(root: Path) -> Path:
    """The one .csv in ``root`` or ``root/label`` that has the required columns."""
    candidates = []
    for folder in (root, root / "label"):
        for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                header = {header_key(h) for h in next(csv.reader(handle), [])}
            if all(header_key(c) in header for c in _FLOW_COLUMNS):
                candidates.append(path)
    if not candidates:
        raise DatasetError(f"megc2019-flow: no CSV with the columns {', '.join(_FLOW_COLUMNS)} in {root} or "
                           f"{root / 'label'}.\nExpected layout:\n{FLOW_LAYOUT}")
    if len(candidates) > 1:
        raise DatasetError(f"megc2019-flow: several CSVs with the required columns ({', '.join(map(str, candidates))}); "
                           f"choose one with csv_file=")
    return candidates[0]


def _listing(folder: Path, *, png: bool) -> dict[str, Path]:
    """File name -> path; for flow PNGs the key is the stem without trailing spaces."""
    files = {}
    for path in folder.iterdir():
        if not path.is_file():
            continue
        if png:
            if path.suffix.lower() == ".png":
                files[path.stem.rstrip()] = path
        else:
            files[path.name] = path
    return files


def _pick_folder(root: Path, given: str | Path | None, names: list[str], *, png: bool,
                 exclude: Path | None = None) -> Path | None:
    """The given folder, or the folder up to three levels below ``root`` holding most ``names``."""
    if given is not None:
        folder = Path(given) if Path(given).is_absolute() else root / given
        if not folder.is_dir():
            raise DatasetError(f"megc2019-flow: folder {folder} does not exist")
        return folder
    wanted = set(names)
    scored = []
    for folder, dirs, _ in os.walk(root):
        folder = Path(folder)
        if len(folder.relative_to(root).parts) >= 3:
            dirs.clear()
        if folder == exclude:
            continue
        hits = len(wanted & set(_listing(folder, png=png)))
        if hits:
            scored.append((hits, -len(folder.parts), folder))
    return max(scored, key=lambda t: t[:2])[2] if scored else None


def read_flow_image(path: str | Path) -> np.ndarray:
    """A released MEGC2019 flow image as the ``flow`` view.

    The release does not document its channel order; merkit reads the image's R, G, B planes
    as u, v and optical strain (the order of :func:`merkit.preprocess.flow.megc_flow_image`,
    and of an image written from an (H, W, [u, v, strain]) array by Matlab or PIL). Values
    are the released per-image min-max scaled bytes divided by 255: absolute flow magnitude is
    not recoverable.

    Returns:
        (3, H, W) float32 in [0, 1] (H = W = 28 in the release).

    Raises:
        MissingFramesError: the file is missing or unreadable.
    """
    from merkit.data.sample import read_image

    return (read_image(path).transpose(2, 0, 1).astype(np.float32) / 255.0)


register_dataset(DatasetInfo(name="megc2019", loader=load_megc2019, protocols=("megc2019-3",), layout=LAYOUT))
register_dataset(DatasetInfo(name="megc2019-flow", loader=load_megc2019_flow, protocols=("megc2019-3",),
                             layout=FLOW_LAYOUT))
