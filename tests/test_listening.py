"""Counterfactual audio for the test split, and the table that compares the conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsac_lit.analysis.listening import listening_table
from avsac_lit.data import build_dataset
from avsac_lit.data.audio import LOG_OFFSET
from avsac_lit.data.conditions import AudioCondition, metric_prefix, silent_example
from avsac_lit.run.conditions import conditions_table


def test_silent_example_is_the_log_offset_everywhere():
    example = silent_example()
    assert example.shape == (1, 96, 64)
    assert torch.allclose(example, torch.full_like(example, float(np.log(LOG_OFFSET))))


@pytest.mark.parametrize("task", ["ms3", "avss"])
def test_conditions_change_only_the_audio(task, synth_trees):
    dataset = build_dataset(task, synth_trees[task], "train", img_size=32)  # several clips
    matched, shuffled, silent = (
        AudioCondition(dataset, condition) for condition in ("matched", "shuffled", "silent")
    )
    for index in range(len(dataset)):
        original = matched[index]
        swapped, quiet = shuffled[index], silent[index]
        for item in (swapped, quiet):
            assert torch.equal(item["frames"], original["frames"])
            assert torch.equal(item["masks"], original["masks"])
        partner = shuffled.partner(index)
        assert partner != index
        assert torch.equal(swapped["audio"], dataset[partner]["audio"])
        real = original["frame_valid"]
        silence = silent_example().expand(int(real.sum()), -1, -1, -1)
        assert torch.equal(quiet["audio"][real], silence)
        assert not quiet["audio"][~real].any()  # AVSS padding keeps its zero log-mels


def test_unknown_condition_is_refused_with_the_choices(synth_trees):
    dataset = build_dataset("ms3", synth_trees["ms3"], "test", img_size=32)
    with pytest.raises(ValueError, match="matched, shuffled, silent"):
        AudioCondition(dataset, "reversed")


def test_listening_table_rows_and_gains():
    metrics = {
        "test/miou": 0.80, "test/f": 0.85,
        "test_shuffled/miou": 0.50, "test_shuffled/f": 0.55,
        "test_silent/miou": 0.40, "test_silent/f": 0.45,
    }  # fmt: skip
    references = {"vision_only": {"miou": 0.56, "fscore": 0.58}}
    table = listening_table(metrics, ["matched", "shuffled", "silent"], references)
    rows = table.strip().splitlines()
    assert len(rows) == 6  # header, rule, three conditions, reference
    assert rows[2] == "| true audio | 0.800 | 0.850 |  |"
    assert rows[3] == "| audio of another clip | 0.500 | 0.550 | +0.300 |"
    assert rows[4] == "| silence | 0.400 | 0.450 | +0.400 |"
    assert rows[5].endswith("| 0.560 | 0.580 | +0.240 |")
    assert metric_prefix("matched") == "test" and metric_prefix("silent") == "test_silent"
    with_share = listening_table({**metrics, "test/audio_share": 0.4321}, ["matched"])
    assert (
        with_share.strip()
        .splitlines()[-1]
        .startswith("Audio share of the final feature (true audio): 0.432,")
    )


def test_the_test_call_prints_one_column_per_condition():
    """One test call scores every condition; Lightning's own table would repeat all of them in a
    column per loader, so the run prints this one instead."""
    metrics = {
        "test/miou": 0.8, "test/audio_share": 0.25, "test_shuffled/miou": 0.5,
        "val/miou": 0.7, "test_silent/miou": 0.4,
    }  # fmt: skip
    table = conditions_table(metrics, ["matched", "shuffled"])
    columns = {column.header: list(column.cells) for column in table.columns}
    assert columns == {
        "Test metric": ["audio_share", "miou"],
        "true audio": ["0.2500", "0.8000"],
        "audio of another clip": ["", "0.5000"],
    }
