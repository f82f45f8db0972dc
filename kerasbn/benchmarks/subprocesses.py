"""A benchmark's measurement in a Python process of its own (so its threads and peak memory
are its own), the one line of a failure shown."""

import json
import os
import subprocess
import sys


def run(args, what):
    """The stdout of `python ARGS`; exits with one line naming `what` when it fails."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        sys.exit(f"error: {what} failed: {' '.join(last)}")
    return done.stdout


def last_json(args, what):
    """The JSON that `python ARGS` prints last (`run`)."""
    return json.loads(run(args, what).strip().splitlines()[-1])
