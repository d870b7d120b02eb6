"""The suite's commands (``python -m avsac_lit.<command> ...``) run as a user runs them: in a
process of their own, with their arguments, environment and working directory, their output
captured and their exit status returned, as :func:`subprocess.run` does.

The process is forked from a waiting interpreter that has already imported ``avsac_lit`` and
timm, not started afresh. Every ``python -m avsac_lit.<command>`` imports the package first (and
with it torch, Lightning and torchmetrics), which took a fresh interpreter ~5 s of a core: a
quarter of ``make test``'s time went on such imports (py-spy, 0.7.0). The waiting interpreter
does those imports once per pytest process and nothing else, so each command starts from the
package's import state, as it would from a shell. It runs no Python thread when it forks (it
checks), so the fork cannot inherit a lock that another thread held (numpy's OpenBLAS keeps an
idle native pool, which handles a fork itself). A command whose environment would set up the
interpreter otherwise (``PYTHON*`` variables other than ``PYTHONPATH``) runs afresh.

What this cannot show, whether each command imports in a fresh interpreter, the wheel check
(``make wheel-check``: train, eval and predict from an installed wheel), the SLURM check and the
demo show. tests/test_commands.py compares a probe command run both ways.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run by the waiting interpreter (``python -c``). Requests and replies are JSON lines on its
# standard input and output; a forked child leaves the loop and runs its command at top level, so
# that an exception it does not catch ends it as it would end ``python -m``.
_SERVER = r"""
import gc, json, os, sys, threading
import avsac_lit, timm

# What Python's gc docs advise for a process that forks without exec: the children's collections,
# and their collection at exit (1.4 s of the 1.8 s such a process took to end), skip the objects
# the imports made.
gc.freeze()

base_path = [p for p in sys.path if p != ""]

def read_line():
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)

def reply(**message):
    os.write(1, (json.dumps(message) + "\n").encode())

def serve():
    while True:
        request = read_line()
        if request is None:
            return None
        if threading.active_count() != 1:
            reply(error=f"the waiting interpreter has {threading.active_count()} threads")
            continue
        pid = os.fork()
        if pid == 0:
            return request
        reply(pid=pid)
        _, status = os.waitpid(pid, 0)
        reply(returncode=os.waitstatus_to_exitcode(status))

request = serve()
if request is not None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(os.open(request["stdout"], os.O_WRONLY), 1)
    os.dup2(os.open(request["stderr"], os.O_WRONLY), 2)
    # As `python -m` sets it: the working directory, then PYTHONPATH, then the installation's.
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *base_path]
    module, *sys.argv = request["arguments"]
    sys.argv.insert(0, "-m")  # run_module puts the module's file here, as `python -m` does
    del request, serve, read_line, reply, null, extra
    import runpy
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class _Server:
    """One waiting interpreter per pytest process, started on first use."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.startup_env = _interpreter_settings(env)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        self.buffer = b""
        atexit.register(self.close)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def send(self, request: dict) -> None:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, deadline: float | None) -> dict | None:
        """The next reply, or None at the deadline."""
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([descriptor], [], [], left)[0]:
                return None
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                raise RuntimeError(f"The waiting interpreter ended ({self.process.wait()}).")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


_server: _Server | None = None


def _interpreter_settings(env: dict[str, str]) -> dict[str, str]:
    """The variables an interpreter reads as it starts, but for PYTHONPATH (a child sets it)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONPATH"}


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, ...)`` for a ``[sys.executable,
    "-m", module, *arguments]`` command, in a process forked from the waiting interpreter."""
    global _server
    env = dict(os.environ if env is None else env)
    if command[:2] != [sys.executable, "-m"]:
        raise ValueError(f"{command[:3]}: expected [sys.executable, '-m', module, ...]")
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
    if _interpreter_settings(env) != _server.startup_env:  # it would start differently
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout, check=check)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        stdout.touch()
        stderr.touch()
        _server.send({
            "arguments": command[2:], "env": env, "cwd": str(Path(cwd or os.getcwd()).resolve()),
            "stdout": str(stdout), "stderr": str(stderr),
        })  # fmt: skip
        started = _server.receive(None)
        if "error" in started:
            raise RuntimeError(started["error"])
        deadline = None if timeout is None else time.monotonic() + timeout
        finished = _server.receive(deadline)
        if finished is None:
            os.kill(started["pid"], signal.SIGKILL)
            _server.receive(None)
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_text(),
                                            stderr.read_text())  # fmt: skip
        result = subprocess.CompletedProcess(
            command, finished["returncode"], stdout.read_text(), stderr.read_text()
        )
    if check:
        result.check_returncode()
    return result
