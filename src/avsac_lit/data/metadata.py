"""An AVSBench copy as its metadata describes it, before any item is loaded: the tasks and splits,
where a task's copy is (:func:`resolve_root`: the root or a known child of it; the layouts drawn
for the messages, :data:`LAYOUTS`), its metadata CSV read and checked row by row
(:func:`check_rows`: every split known, no clip listed twice, no name that would reach outside the
root as a path) and AVSS's class names (:func:`read_class_names`). The datasets that load the
clips' files are in :mod:`avsac_lit.data.avsbench`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from avsac_lit.storage.safe_paths import component_problem

TASKS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")

WHERE_TO_GET_AVSBENCH = (
    "AVSBench is published by its authors (GitHub: OpenNLPLab/AVSBench, section 'Data', which "
    "links the request form). To try the suite without it, generate the synthetic twin in the "
    "same layout: python -m avsac_lit.data.synthetic --task {task} --out DIR"
)

LAYOUTS = {
    "s4": """\
Single-source/                       <- root
  s4_meta_data.csv                   columns: name (col 0), start, category (col 2), split
  s4_data/
    visual_frames/{split}/{category}/{name}/{name}_{k}.png     k = 1..5
    audio_log_mel/{split}/{category}/{name}.pkl                pickled tensor [5, 1, 96, 64]
    audio_wav/{split}/{category}/{name}.wav                    used when the .pkl is missing
    gt_masks/{split}/{category}/{name}/{name}_{k}.png          train: k = 1 only; val/test: 1..5""",
    "ms3": """\
Multi-sources/                       <- root
  ms3_meta_data.csv                  columns: name (col 0), ..., split
  ms3_data/
    visual_frames/{name}/{name}.mp4_{k}.png                    k = 1..5 (not split into folders)
    audio_log_mel/{split}/{name}.pkl                           pickled tensor [5, 1, 96, 64]
    audio_wav/{split}/{name}.wav                               used when the .pkl is missing
    gt_masks/{split}/{name}/{name}_{k}.png                     k = 1..5 in every split""",
    "avss": """\
AVSBench-semantic/                   <- root
  metadata.csv                       columns: uid, split, label (v1s | v1m | v2), ...
  label2idx.json                     {"background": 1, "accordion": 2, ...} (71 classes)
  {label}/{uid}/frames/{i}.jpg       i = 0..4 (v1s, v1m) or 0..9 (v2)
  {label}/{uid}/labels_rgb/{i}.png   colour labels; v1s train: 0.png only
  {label}/{uid}/audio.wav""",
}

# Directory names users commonly keep each task under, so that ``root`` may also be their parent.
TASK_DIRS = {
    "s4": ("Single-source",),
    "ms3": ("Multi-sources",),
    "avss": ("AVSBench-semantic", "AVSS", "avs_released"),
}
METADATA_FILES = {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}

AVSS_CLIP_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


class DatasetLayoutError(FileNotFoundError):
    """The root does not hold the task's published layout."""


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    """``value``, if it is one of ``choices``.

    Raises:
        ValueError: naming the ``kind`` of setting and the choices.
    """
    if value not in choices:
        raise ValueError(f"Unknown {kind} {value!r}; expected one of {', '.join(choices)}.")
    return value


def resolve_root(task: str, root: str | Path) -> Path:
    """The directory holding ``task``'s metadata file: ``root`` itself or a known child of it."""
    root = Path(root).expanduser()
    metadata = METADATA_FILES[task]
    candidates = [root] + [root / name for name in TASK_DIRS[task]]
    for candidate in candidates:
        if (candidate / metadata).is_file():
            return candidate
    where = "does not exist" if not root.exists() else f"has no {metadata}"
    check_not_another_task(task, root)
    raise DatasetLayoutError(
        f"AVSBench {task.upper()} root {root} {where} (looked for {root / metadata}"
        + "".join(f" and {c / metadata}" for c in candidates[1:])
        + f").\nExpected layout:\n{LAYOUTS[task]}\n"
        + WHERE_TO_GET_AVSBENCH.format(task=task)
    )


def _holds_task(root: Path, task: str) -> bool:
    candidates = [root] + [root / name for name in TASK_DIRS[task]]
    return any((c / METADATA_FILES[task]).is_file() for c in candidates)


def check_not_another_task(task: str, root: str | Path) -> None:
    """Refuse a root that holds another task's copy and not ``task``'s (a checkpoint of one
    task evaluated on another's data, or a synthetic tree generated over a real one)."""
    root = Path(root).expanduser()
    if _holds_task(root, task):
        return
    others = [t for t in TASKS if t != task and _holds_task(root, t)]
    if others:
        raise DatasetLayoutError(
            f"{root} holds AVSBench {others[0].upper()} ({METADATA_FILES[others[0]]}), but the "
            f"task here is {task.upper()} (for avsac_lit.eval and predict: the task the checkpoint "
            f"was trained on). Point data.root at a copy of {task.upper()}, or use a model "
            f"trained on {others[0].upper()}."
        )


def read_class_names(path: Path) -> list[str]:
    """AVSS class names in class order from ``label2idx.json`` (name -> 1..N, background 1)."""
    with path.open() as handle:
        label_to_index = json.load(handle)
    indices = sorted(label_to_index.values())
    if indices != list(range(1, len(indices) + 1)) or label_to_index.get("background") != 1:
        raise ValueError(
            f"{path} must map class names to 1..N with background = 1 (AVSBench-semantic uses "
            f"1..71); found indices {indices[:5]}... and background = "
            f"{label_to_index.get('background')}."
        )
    return sorted(label_to_index, key=label_to_index.__getitem__)


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the metadata CSV ``path``, blank lines left out; an empty file is
    refused."""
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(
            f"Metadata file {path} is empty; expected a header row and one row a clip."
        )
    return [name.strip() for name in rows[0]], rows[1:]


def column_index(header: list[str], name: str, path: Path) -> int:
    """The index of the column ``name`` in ``header``; a file without it is refused."""
    if name not in header:
        raise ValueError(
            f"Metadata file {path} has no {name!r} column (its columns: {', '.join(header)})."
        )
    return header.index(name)


def check_rows(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    *,
    root: Path,
    split: int,
    columns: list[int],
    names: list[int],
    key: int,
) -> None:
    """Check every row of the metadata file ``path`` (``header``, ``rows``), not only one
    split's: a row whose split is misspelt (``Train``) would otherwise belong to no split, and a
    repeated clip would count twice.

    Args:
        root: the task's directory, named in the messages.
        split: the index of the split column.
        columns: the indices of the other columns read.
        names: the indices of the columns that become folder and file names.
        key: the index of the column that identifies a clip.

    Raises:
        ValueError: naming the file, the line and the way on, for a row with too few fields, an
            unknown split, a name that is not one plain path component, or a repeated clip.
    """
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(split, *columns, *names):
            raise ValueError(
                f"{path}, line {line}: {len(row)} fields, fewer than the header's columns "
                f"({', '.join(header)}). Complete or delete the row."
            )
        if row[split] not in SPLITS:
            raise ValueError(
                f"{path}, line {line}: clip {row[0]} has split {row[split]!r}; expected one "
                f"of {', '.join(SPLITS)} (lower case). Correct the row, or delete it to leave "
                "the clip out."
            )
        for index in names:
            check_path_field(path, line, header, index, row[index], root)
        clip = row[key]
        if clip in first_line:
            raise ValueError(
                f"{path}, line {line}: clip {clip} is listed again (first on line "
                f"{first_line[clip]}), so it would be trained or scored twice. Delete the "
                "repeated row."
            )
        first_line[clip] = line


def check_path_field(
    path: Path, line: int, header: list[str], index: int, value: str, root: Path
) -> None:
    """Refuse a field that names a clip's files and folders but is not one plain name."""
    # A name that is absolute or holds "../" would read another clip's or any file as this
    # clip's frames, and write its overlay and cached log-mel outside their folders.
    problem = component_problem(value)
    if problem is None:
        return
    column = f"column {index + 1}" + (f" ({header[index]!r})" if index < len(header) else "")
    raise ValueError(
        f"{path}, line {line}: {column} holds {value!r}, which names the clip's files and "
        f"folders, but {problem}: the loader could read files outside {root} as this "
        "clip's and write outside the run's folders. Expected one plain name, as AVSBench's "
        "rows hold (no '/', '\\', '..' or absolute path). Correct the row, or delete it to "
        "leave the clip out."
    )


@dataclass(frozen=True)
class Clip:
    """One clip's identity in the metadata: everything needed to locate its files."""

    name: str
    category: str = ""  # S4 only
    label: str = ""  # AVSS only: v1s, v1m or v2
