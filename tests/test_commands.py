"""Commands run through tests/commands.py (forked from a waiting interpreter) start and end as
the same command started afresh does: arguments, working directory, environment, import path,
standard streams, exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import commands

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("how", ["0", "3", "raise", "sigterm"])
def test_a_command_starts_and_ends_as_it_does_in_a_fresh_interpreter(how, tmp_path):
    command = [sys.executable, "-m", "tests.probe_command", how, "key=value with spaces"]
    # From another directory, so that only PYTHONPATH makes the probe importable.
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "PROBE": "ü"}
    fresh = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    forked = commands.run(command, env=env, cwd=tmp_path, timeout=60)
    expected = {"0": 0, "3": 3, "raise": 1, "sigterm": -signal.SIGTERM}[how]
    assert fresh.returncode == forked.returncode == expected
    seen = json.loads(forked.stdout)
    assert seen == json.loads(fresh.stdout)
    assert seen["argv"][1:] == [how, "key=value with spaces"]
    assert seen["cwd"] == str(tmp_path) and seen["probe"] == "ü" and seen["stdin"] == ""
    assert seen["name"] == "__main__" and seen["spec"] == "tests.probe_command"
    assert forked.stderr.splitlines()[0] == "a line on standard error"
    if how == "raise":
        assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
        assert "ValueError: the probe raised" in forked.stderr


def test_a_command_past_its_timeout_is_killed_and_the_next_one_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        commands.run([sys.executable, "-m", "tests.probe_command", "hang"], env=env, timeout=1)
    assert "a line on standard error" in expired.value.stderr
    command = [sys.executable, "-m", "tests.probe_command", "0"]
    assert commands.run(command, env=env, cwd=tmp_path, timeout=60).returncode == 0
