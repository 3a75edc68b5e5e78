"""Output folders (run directories, view caches, SynthME folders): create them, or say in one
line why they cannot be created or written."""

from __future__ import annotations

import tempfile
from pathlib import Path

from merkit.errors import OutputError


def make_output_dir(path: str | Path, what: str) -> Path:
    """Create the folder ``path`` (and its parents) and check that files can be written in it.

    Args:
        path: the folder.
        what: what the folder is, for the message (``"run directory"``, ``"view cache"``).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: a file is in the way (``path`` or one of its parents), or the folder cannot
            be created or written (no permission, read-only file system); the message names it.
    """
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"lies under {part}, which is a file"
            raise OutputError(f"{path}: {where}; a {what} must be a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # the one reliable test of writability (root, ACLs, read-only mounts)
            pass
    except OSError as err:
        raise OutputError(f"{path}: cannot write the {what} here ({err.strerror or err})") from None
    return path
