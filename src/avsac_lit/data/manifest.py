"""The manifest of a SynthAVS tree (``manifest.json``), read in one place.

The generator writes it first (marked incomplete) and last (with the settings and reference
scores), each time whole; the data module, ``data.check``, the listening table and the report read
it, and the generator tells its own trees by it (:func:`is_generated_tree`). A manifest that is
not a JSON object (cut short by a copy or a full disk, edited) is said to be damaged, with the
file named: read as "no manifest", the generator would take the tree for a user's data, and the
data module would fail on a bare ``JSONDecodeError``.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"
# What the manifest of a tree the generator wrote names as its "generator".
GENERATOR = "avsac_lit.data.synthetic"


class DamagedManifestError(ValueError):
    """A ``manifest.json`` that is there but cannot be read as the generator's JSON object."""


def read_manifest(root: str | Path) -> dict | None:
    """The manifest in ``root``, or None when there is none.

    Raises:
        DamagedManifestError: it is there but not a JSON object; the message names the file and
            how to go on.
    """
    path = Path(root) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedManifestError(damaged(path, f"unreadable ({error})")) from error
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise DamagedManifestError(damaged(path, f"not valid JSON ({error})")) from error
    if not isinstance(manifest, dict):
        raise DamagedManifestError(
            damaged(path, f"a JSON {type(manifest).__name__}, not an object")
        )
    return manifest


def damaged(path: Path, why: str) -> str:
    """The message for a damaged manifest: which file, that it is there (not absent), and the way
    on for a generated tree and for a user's own data."""
    root = path.parent
    return (
        f"{path} is damaged: {why}. It is there, so this is not a missing manifest: a copy or a "
        "disk cut it short, or it was edited. It records a SynthAVS tree's settings and "
        f"reference scores, and without it the tree cannot be told from a user's data. If {root} "
        "is a generated SynthAVS tree, delete the tree (rm -r "
        f"{root}) and generate it again (python -m avsac_lit.data.synthetic --task TASK --out "
        f"{root}, or a synthetic experiment regenerates it), or generate into a new directory "
        "(--out DIR, data.root=DIR); if it holds data of your own, move the manifest.json out of "
        "it."
    )


def reference_scores(root: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """The synthetic generator's reference scores of a split (``{}`` for data without them)."""
    manifest = read_manifest(root)
    if manifest is None:
        return {}
    splits = manifest.get("splits", {})
    return splits.get(split, {}).get("reference_scores", {})


def is_generated_tree(root: Path) -> bool:
    """Whether ``root`` holds a manifest the SynthAVS generator wrote (complete or not).

    Raises:
        DamagedManifestError: a manifest that is there but damaged: the tree may be a generated
            one, or a user's data with a file of that name; the message says how to tell.
    """
    manifest = read_manifest(root) if root.is_dir() else None
    return manifest is not None and manifest.get("generator") == GENERATOR
