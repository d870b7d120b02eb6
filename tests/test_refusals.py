"""A refusal, an error the suite raised itself with a message that says what is wrong and how to
fix it, ends a command with that message alone: ``avsac_lit.<command>: <message>`` on standard
error, status 1. Up to 0.7.1 it came after two tracebacks (the crash log's and Hydra's); an error
the suite did not raise on purpose keeps its traceback (docs/bad_inputs.md, row 38.17)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from avsac_lit.run.settings import check_number_settings
from avsac_lit.run.wrapper import raised_on_purpose
from avsac_lit.storage.atomic import megabytes
from tests import commands

IMG_SIZE_63 = (
    "data.img_size=63: expected a multiple of 4, at least 32 (pixels: the masks are predicted "
    "at a quarter of it and upsampled 4x, and the PVT backbones need 8 x 8 of that quarter), "
    "e.g. data.img_size=224."
)


def caught(call) -> BaseException:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError(f"{call} raised nothing")


def test_only_an_error_the_suite_raised_itself_counts_as_a_refusal():
    bad = OmegaConf.create({"data": {"img_size": 63}})
    assert raised_on_purpose(caught(lambda: check_number_settings(bad)))
    # Hydra wraps what a constructor raised; the suite's own raise inside is a refusal.
    target = "avsac_lit.run.settings.check_number_settings"
    built = OmegaConf.create({"_target_": target, "cfg": bad})
    assert raised_on_purpose(caught(lambda: instantiate(built, _convert_="none")))
    # Python's own error in the suite's code, and a library's, keep their tracebacks.
    assert not raised_on_purpose(caught(lambda: megabytes("a lot")))
    assert not raised_on_purpose(caught(lambda: torch.zeros(2) @ torch.zeros(3)))


@pytest.mark.parametrize("full_error", [False, True], ids=["refusal", "HYDRA_FULL_ERROR=1"])
def test_a_refused_setting_ends_the_command_with_its_message_alone(tmp_path, full_error):
    env = os.environ | {"AVSAC_ROOT": str(tmp_path)}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    result = commands.run(
        [sys.executable, "-m", "avsac_lit.train", "+experiment=synthetic_ms3",
         "data.img_size=63", f"hydra.run.dir={tmp_path / 'run'}",
         f"data.root={tmp_path / 'data'}"],
        timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    if full_error:  # what a developer asks for
        assert "Traceback" in result.stderr and IMG_SIZE_63 in result.stderr
        return
    assert result.stderr == f"avsac_lit.train: {IMG_SIZE_63}\n"
    assert "Traceback" not in result.stdout
    assert IMG_SIZE_63 in (tmp_path / "run" / "train.log").read_text()  # the run's own record
    assert not (tmp_path / "data").exists()


def test_eval_of_a_missing_checkpoint_says_so_in_one_line(tmp_path):
    missing = tmp_path / "missing.ckpt"
    result = commands.run(
        [sys.executable, "-m", "avsac_lit.eval", f"ckpt_path={missing}",
         f"hydra.run.dir={tmp_path / 'eval'}"],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"avsac_lit.eval: ckpt_path={missing} does not exist. Pass a checkpoint written by "
        "avsac_lit.train, e.g. logs/train/runs/<time>/checkpoints/last.ckpt.\n"
    )
    assert "Traceback" not in result.stdout
