"""A command that reports what it started with, for tests/test_commands.py: one JSON line on
standard output, one line on standard error, then it ends as its first argument says."""

import json
import os
import signal
import sys
import time

if __name__ == "__main__":
    seen = {
        "name": __name__,
        "spec": __spec__.name,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "path": sys.path,
        "probe": os.environ.get("PROBE"),
        "stdin": sys.stdin.read(),
    }
    print(json.dumps(seen))
    print("a line on standard error", file=sys.stderr)
    how = sys.argv[1]
    if how == "raise":
        raise ValueError("the probe raised")
    if how == "hang":
        time.sleep(600)
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    sys.exit(int(how))
