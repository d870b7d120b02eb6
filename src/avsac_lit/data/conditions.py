"""Counterfactual audio for evaluation: does the model listen?

A model that segments the sounding objects must do worse when it hears the wrong sound. Evaluating
the same frames and masks with the audio replaced tells how much of a score comes from the audio:

* ``matched``: the clip's own audio (the protocol);
* ``shuffled``: the audio of another clip of the split, a fixed derangement (clip ``i`` hears clip
  ``(i + n // 2) mod n``), so every run and every model hears the same swaps;
* ``silent``: the log-mel of digital silence (the VGGish front end on a zero waveform), on every
  real frame; padding frames keep their zero log-mels.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset

from avsac_lit.data.audio import SAMPLE_RATE, waveform_to_examples
from avsac_lit.data.avsbench import AVSBenchDataset

AUDIO_CONDITIONS = ("matched", "shuffled", "silent")


@cache
def silent_example() -> torch.Tensor:
    """[1, 96, 64]: the VGGish log-mel example of one second of silence."""
    examples = waveform_to_examples(np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    return torch.as_tensor(examples[0], dtype=torch.float32)  # [1, 96, 64]


def check_condition(condition: str) -> str:
    if condition not in AUDIO_CONDITIONS:
        raise ValueError(
            f"Unknown audio condition {condition!r} in test_audio; expected a list of "
            f"{', '.join(AUDIO_CONDITIONS)} (e.g. test_audio=[matched,shuffled,silent])."
        )
    return condition


def metric_prefix(condition: str) -> str:
    """Where a condition's test metrics are logged: ``test`` for the protocol, else
    ``test_<condition>``."""
    return "test" if condition == "matched" else f"test_{check_condition(condition)}"


def condition_of(dataset: Dataset) -> str:
    """The audio a test dataset gives its clips: an :class:`AudioCondition`'s, else matched."""
    return dataset.condition if isinstance(dataset, AudioCondition) else "matched"


class AudioCondition(Dataset):
    """A dataset whose items carry counterfactual audio (see the module docstring).

    Args:
        dataset: any dataset returning the suite's item format.
        condition: ``matched``, ``shuffled`` or ``silent``.
    """

    def __init__(self, dataset: Dataset, condition: str = "matched") -> None:
        self.dataset = dataset
        self.condition = check_condition(condition)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if self.condition == "shuffled":
            # The donor's examples as its loader pads them (AVSS: a 5-frame donor gives 5 zero
            # log-mels at the end).
            item = {**item, "audio": self.donor_audio(self.partner(index))}
        elif self.condition == "silent":
            audio = item["audio"].clone()
            audio[item["frame_valid"]] = silent_example()
            item = {**item, "audio": audio}
        return item

    def donor_audio(self, index: int) -> torch.Tensor:
        if isinstance(self.dataset, AVSBenchDataset):  # read only the audio, not the frames
            return self.dataset.load_audio(self.dataset.clips[index])
        return self.dataset[index]["audio"]

    def partner(self, index: int) -> int:
        """The clip whose audio ``index`` hears under ``shuffled``: never itself when n > 1."""
        count = len(self.dataset)
        return (index + max(1, count // 2)) % count


CONDITION_LABELS = {
    "matched": "true audio",
    "shuffled": "audio of another clip",
    "silent": "silence",
}
