"""Names read from data, used as file names only where they cannot lead elsewhere.

A dataset's metadata names its clips, and those names become folders and files: the frames read,
the validation overlays and the log-mel cache written. A name that is absolute or holds ``..``
would lead outside the dataset's root or the run directory, so every name from data is checked
to be one plain path component before it is joined to a directory (:func:`inside`), and the
metadata reader refuses such names, with the row, when it reads them (``data/metadata.py``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

SEPARATORS = ("/", "\\")


def component_problem(name: str) -> str | None:
    """Why ``name`` is not one plain path component (a file or folder name that stays in the
    directory it is joined to), in words; None when it is one."""
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return f"it is {name!r}, which names a folder itself ({name!r} is the folder above)"
    if "\0" in name:
        return "it holds a NUL character"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return "it is an absolute path"
    separator = next((s for s in SEPARATORS if s in name), None)
    if separator is not None:
        return f"it holds {separator!r}, a path separator, so it names a path of several parts"
    return None


def inside(directory: str | Path, name: str) -> Path:
    """``directory / name`` for a ``name`` from data (a clip's name, a cache key): refused when
    the result would not be a file or folder directly in ``directory``.

    Raises:
        ValueError: naming ``name``, ``directory`` and why.
    """
    problem = component_problem(name)
    if problem is not None:
        raise ValueError(
            f"Refusing to use {name!r} as a file name in {directory}: {problem}, so the path "
            f"would lead outside {directory}. Names from a dataset must be plain file names; "
            "correct the dataset's metadata (the loaders name the row)."
        )
    return Path(directory) / name
