"""The three AVSBench datasets, read from their published on-disk layouts.

* S4, AVSBench-Object single-source (``Single-source/``): 5 frames, one sounding category per
  clip; train clips have a mask for the first frame only.
* MS3, AVSBench-Object multi-source (``Multi-sources/``): 5 frames, masks for all of them.
* AVSS, AVSBench-semantic: 5-frame (v1s, v1m) and 10-frame (v2) clips, colour-coded class labels,
  padded to 10 frames.

The layouts are drawn in :data:`~avsac_lit.data.metadata.LAYOUTS` and in ``docs/data.md``; the
item format is in the package docstring (:mod:`avsac_lit.data`). Where a task's copy is and what
its metadata lists (checked row by row) is :mod:`avsac_lit.data.metadata`; here, the clips' files
are found and loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from avsac_lit.data.io import (
    check_finite_audio,
    image_size,
    load_binary_mask,
    load_color_label,
    load_frame,
    load_log_mel_pickle,
    voc_palette,
)
from avsac_lit.data.logmel import LogMelCache
from avsac_lit.data.metadata import (
    AVSS_CLIP_FRAMES,
    LAYOUTS,
    METADATA_FILES,
    SPLITS,
    TASKS,
    WHERE_TO_GET_AVSBENCH,
    Clip,
    DatasetLayoutError,
    check_choice,
    check_rows,
    column_index,
    read_class_names,
    read_csv_rows,
    resolve_root,
)


class AVSBenchDataset(Dataset):
    """Common base: metadata parsing, root checks and audio loading. Use a task subclass.

    Args:
        root: the task's directory (``Single-source/``, ``Multi-sources/``, ``AVSBench-semantic/``)
            or a directory containing it.
        split: ``train``, ``val`` or ``test``.
        img_size: frames and masks are resized to ``img_size`` x ``img_size``.
        cache_dir: the suite's cache directory (``paths.cache_dir``); log-mels computed from wavs
            go to its ``log_mel/`` (see :class:`LogMelCache`).
        in_memory: keep every item once loaded (decoded, resized and normalised), so that later
            epochs read no file: for small datasets (a 96 px SynthAVS split is ~30 MB a 100
            clips). An item is what loading it again would give: nothing here is random.
    """

    task: str
    num_frames: int

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        img_size: int = 224,
        cache_dir: str | Path | None = None,
        in_memory: bool = False,
    ) -> None:
        self.split = check_choice("split", split, SPLITS)
        self.in_memory = in_memory
        self.kept: dict[int, dict] = {}
        if img_size <= 0:
            raise ValueError(f"img_size must be a positive number of pixels, got {img_size}.")
        self.img_size = img_size
        self.root = resolve_root(self.task, root)
        self.audio_cache = LogMelCache(cache_dir)
        self.clips = self._read_clips()
        if not self.clips:
            raise ValueError(
                f"{self.root / METADATA_FILES[self.task]} lists no clip with split={split!r}."
            )
        self._check_first_clip()

    def _split_rows(self, *columns: str) -> tuple[Path, list[int], list[list[str]]]:
        """(metadata path, indices of ``columns``, rows of this split), every row of every split
        checked (:func:`~avsac_lit.data.metadata.check_rows`)."""
        path = self.root / METADATA_FILES[self.task]
        header, rows = read_csv_rows(path)
        split, *indices = [column_index(header, name, path) for name in ("split", *columns)]
        check_rows(
            path, header, rows, root=self.root, split=split, columns=indices,
            names=self.path_fields(indices), key=self.key_column(indices),
        )  # fmt: skip
        return path, indices, [row for row in rows if row[split] == self.split]

    def key_column(self, indices: list[int]) -> int:
        """The column that identifies a clip in a metadata row: its name (column 0)."""
        return 0

    def path_fields(self, indices: list[int]) -> list[int]:
        """The columns of a metadata row that become folder and file names: the name (column
        0)."""
        return [0]

    # Subclasses say where the files are.
    def _read_clips(self) -> list[Clip]:
        raise NotImplementedError

    def frame_paths(self, clip: Clip) -> list[Path]:
        raise NotImplementedError

    def mask_paths(self, clip: Clip) -> list[Path]:
        """Ground-truth files for the first ``len(...)`` frames that are annotated."""
        raise NotImplementedError

    def audio_paths(self, clip: Clip) -> tuple[Path | None, Path]:
        """(precomputed log-mel pickle or None, wav)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """1 for the binary S4/MS3 masks, the number of classes (background included) for AVSS."""
        return 1

    def __len__(self) -> int:
        return len(self.clips)

    def _check_first_clip(self) -> None:
        # A wrong root usually fails on the first clip's first file; say so with the layout drawn.
        clip = self.clips[0]
        pickle_path, wav_path = self.audio_paths(clip)
        audio_ok = (pickle_path is not None and pickle_path.is_file()) or wav_path.is_file()
        for path in [self.frame_paths(clip)[0], self.mask_paths(clip)[0]]:
            if not path.is_file():
                self._layout_error(path)
        if not audio_ok:
            self._layout_error(pickle_path or wav_path)

    def _layout_error(self, missing: Path) -> None:
        raise DatasetLayoutError(
            f"AVSBench {self.task.upper()} root {self.root} does not match the published layout: "
            f"{missing} is missing.\nExpected layout:\n{LAYOUTS[self.task]}\n"
            + WHERE_TO_GET_AVSBENCH.format(task=self.task)
        )

    def load_audio(self, clip: Clip) -> torch.Tensor:
        """Log-mel examples [num_frames, 1, 96, 64]: the .pkl when there is one, else the wav's."""
        pickle_path, wav_path = self.audio_paths(clip)
        expected = (self.num_frames, 1, 96, 64)
        if pickle_path is not None and pickle_path.is_file():
            return load_log_mel_pickle(pickle_path, expected)
        if not wav_path.is_file():
            both = (
                f"neither {pickle_path} nor {wav_path} exists"
                if pickle_path
                else f"{wav_path} is missing"
            )
            raise FileNotFoundError(f"No audio for clip {clip.name}: {both}.")
        examples = self.audio_cache.load(wav_path)
        check_finite_audio(examples, wav_path)
        if len(examples) == 0:
            raise ValueError(
                f"Audio {wav_path} is shorter than one VGGish example (0.975 s at 16 kHz)."
            )
        return self.fit_examples(examples)

    def precompute_audio(self) -> int:
        """Compute and cache the log-mels of every clip that has no .pkl; returns how many."""
        computed = 0
        for clip in self.clips:
            pickle_path, wav_path = self.audio_paths(clip)
            if pickle_path is None or not pickle_path.is_file():
                self.audio_cache.load(wav_path)
                computed += 1
        return computed

    def fit_examples(self, examples: torch.Tensor) -> torch.Tensor:
        """Match a wav's examples to the clip length as AVSBench's S4/MS3 preprocessing does:
        truncate, or pad by repeating the last example."""
        examples = examples[: self.num_frames]
        missing = self.num_frames - len(examples)
        return (
            torch.cat([examples, examples[-1:].expand(missing, -1, -1, -1)])
            if missing
            else examples
        )

    def __getitem__(self, index: int) -> dict:
        if index in self.kept:
            return dict(self.kept[index])  # the loader stacks copies; the tensors stay intact
        try:
            item = self.load_item(index)
        except FileNotFoundError as error:
            raise FileNotFoundError(self.missing_files_message(self.clips[index], error)) from error
        if self.in_memory:
            self.kept[index] = dict(item)
        return item

    def missing_files_message(self, clip: Clip, error: FileNotFoundError) -> str:
        """What of a listed clip is missing: frames, masks and audio, checked together, since a
        clip whose folders are all gone would otherwise be reported by one file only."""
        pickle_path, wav_path = self.audio_paths(clip)
        audio = [p for p in (pickle_path, wav_path) if p is not None]
        parts = {
            "frames": self.frame_paths(clip),
            "masks": self.mask_paths(clip),
            "audio": audio,
        }
        missing = {kind: [p for p in paths if not p.is_file()] for kind, paths in parts.items()}
        if any(p.is_file() for p in audio):
            missing["audio"] = []  # one of the pickle and the wav is enough
        listed = "; ".join(
            f"{kind}: {len(paths)} missing, e.g. {paths[0]}"
            for kind, paths in missing.items()
            if paths
        )
        return (
            f"Clip {clip.name}, listed in {self.root / METADATA_FILES[self.task]} for split "
            f"{self.split!r}, is incomplete ({listed or error}). Restore its files, or delete "
            "its row from the metadata to leave it out."
        )

    def load_item(self, index: int) -> dict:
        raise NotImplementedError


class _ObjectDataset(AVSBenchDataset):
    """S4 and MS3: binary masks, 5 frames, log-mel pickles."""

    num_frames = 5

    def load_item(self, index: int) -> dict:
        clip = self.clips[index]
        frame_paths = self.frame_paths(clip)
        frames = torch.stack([load_frame(path, self.img_size) for path in frame_paths])
        masks = torch.zeros(self.num_frames, self.img_size, self.img_size)
        mask_valid = torch.zeros(self.num_frames, dtype=torch.bool)
        for k, path in enumerate(self.mask_paths(clip)):
            masks[k] = load_binary_mask(path, self.img_size, image_size(frame_paths[k]))
            mask_valid[k] = True
        return {
            "frames": frames,
            "audio": self.load_audio(clip),
            "masks": masks,
            "mask_valid": mask_valid,
            "frame_valid": torch.ones(self.num_frames, dtype=torch.bool),
            "name": clip.name,
        }


class S4Dataset(_ObjectDataset):
    """AVSBench-Object single-source (S4). Train clips are annotated on their first frame only."""

    task = "s4"

    def _read_clips(self) -> list[Clip]:
        # The reference indexes name and category by position (0 and 2), whatever the header says.
        return [Clip(name=row[0], category=row[2]) for row in self._split_rows()[2]]

    def path_fields(self, indices: list[int]) -> list[int]:
        return [0, 2]  # name and category

    def _clip_dir(self, kind: str, clip: Clip) -> Path:
        return self.root / "s4_data" / kind / self.split / clip.category

    def frame_paths(self, clip: Clip) -> list[Path]:
        folder = self._clip_dir("visual_frames", clip) / clip.name
        return [folder / f"{clip.name}_{k}.png" for k in range(1, self.num_frames + 1)]

    def mask_paths(self, clip: Clip) -> list[Path]:
        annotated = 1 if self.split == "train" else self.num_frames
        folder = self._clip_dir("gt_masks", clip) / clip.name
        return [folder / f"{clip.name}_{k}.png" for k in range(1, annotated + 1)]

    def audio_paths(self, clip: Clip) -> tuple[Path, Path]:
        return (
            self._clip_dir("audio_log_mel", clip) / f"{clip.name}.pkl",
            self._clip_dir("audio_wav", clip) / f"{clip.name}.wav",
        )


class MS3Dataset(_ObjectDataset):
    """AVSBench-Object multi-source (MS3). Every frame of every split is annotated."""

    task = "ms3"

    def _read_clips(self) -> list[Clip]:
        return [Clip(name=row[0]) for row in self._split_rows()[2]]

    def frame_paths(self, clip: Clip) -> list[Path]:
        folder = self.root / "ms3_data" / "visual_frames" / clip.name
        return [folder / f"{clip.name}.mp4_{k}.png" for k in range(1, self.num_frames + 1)]

    def mask_paths(self, clip: Clip) -> list[Path]:
        folder = self.root / "ms3_data" / "gt_masks" / self.split / clip.name
        return [folder / f"{clip.name}_{k}.png" for k in range(1, self.num_frames + 1)]

    def audio_paths(self, clip: Clip) -> tuple[Path, Path]:
        data = self.root / "ms3_data"
        return (
            data / "audio_log_mel" / self.split / f"{clip.name}.pkl",
            data / "audio_wav" / self.split / f"{clip.name}.wav",
        )


class AVSSDataset(AVSBenchDataset):
    """AVSBench-semantic (AVSS): class-labelled masks, clips padded to 10 frames.

    Train frames are resized on their short side and centre-cropped; val/test frames are resized
    without keeping the aspect ratio, as in the reference. Audio comes from ``audio.wav`` through
    the VGGish front end (cached), zero-padded to 10 examples like AVSegFormer's AVSS pipeline.
    """

    task = "avss"
    num_frames = 10

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.class_names = self._read_class_names()
        self.palette = voc_palette(len(self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _read_class_names(self) -> list[str]:
        path = self.root / "label2idx.json"
        if not path.is_file():
            self._layout_error(path)
        return read_class_names(path)

    def _read_clips(self) -> list[Clip]:
        path, (uid, label), rows = self._split_rows("uid", "label")
        clips = []
        for row in rows:
            if row[label] not in AVSS_CLIP_FRAMES:
                raise ValueError(
                    f"{path}: clip {row[uid]} has label {row[label]!r}; expected one of "
                    f"{', '.join(AVSS_CLIP_FRAMES)}."
                )
            clips.append(Clip(name=row[uid], label=row[label]))
        return clips

    def _clip_dir(self, clip: Clip) -> Path:
        return self.root / clip.label / clip.name

    def key_column(self, indices: list[int]) -> int:
        return indices[0]  # the uid

    def path_fields(self, indices: list[int]) -> list[int]:
        return indices  # uid and label

    def frame_paths(self, clip: Clip) -> list[Path]:
        count = AVSS_CLIP_FRAMES[clip.label]
        return [self._clip_dir(clip) / "frames" / f"{i}.jpg" for i in range(count)]

    def mask_paths(self, clip: Clip) -> list[Path]:
        annotated = (
            1 if (clip.label == "v1s" and self.split == "train") else len(self.frame_paths(clip))
        )
        return [self._clip_dir(clip) / "labels_rgb" / f"{i}.png" for i in range(annotated)]

    def audio_paths(self, clip: Clip) -> tuple[None, Path]:
        return None, self._clip_dir(clip) / "audio.wav"

    def fit_examples(self, examples: torch.Tensor) -> torch.Tensor:
        # AVSegFormer pads AVSS audio with all-zero log-mel examples, not with repeats.
        examples = examples[: self.num_frames]
        padding = examples.new_zeros(self.num_frames - len(examples), *examples.shape[1:])
        return torch.cat([examples, padding])

    def load_item(self, index: int) -> dict:
        clip = self.clips[index]
        crop = self.split == "train"
        size, count = self.img_size, self.num_frames
        frames = torch.zeros(count, 3, size, size)
        frame_valid = torch.zeros(count, dtype=torch.bool)
        for i, path in enumerate(self.frame_paths(clip)):
            frames[i] = load_frame(path, size, crop=crop)
            frame_valid[i] = True
        masks = torch.zeros(count, size, size, dtype=torch.long)
        mask_valid = torch.zeros(count, dtype=torch.bool)
        for i, path in enumerate(self.mask_paths(clip)):
            masks[i] = load_color_label(path, size, self.palette, crop=crop)
            mask_valid[i] = True
        return {
            "frames": frames,
            "audio": self.load_audio(clip),
            "masks": masks,
            "mask_valid": mask_valid,
            "frame_valid": frame_valid,
            "name": clip.name,
        }


DATASETS: dict[str, type[AVSBenchDataset]] = {
    "s4": S4Dataset,
    "ms3": MS3Dataset,
    "avss": AVSSDataset,
}


def build_dataset(
    task: str,
    root: str | Path,
    split: str,
    img_size: int = 224,
    cache_dir: str | Path | None = None,
    in_memory: bool = False,
) -> AVSBenchDataset:
    """The ``split`` of ``task`` (``s4``, ``ms3`` or ``avss``) read from ``root``."""
    dataset_class = DATASETS[check_choice("task", task, TASKS)]
    return dataset_class(
        root=root, split=split, img_size=img_size, cache_dir=cache_dir, in_memory=in_memory
    )
