"""Fault injection for the resume tests: KERASBN_FAULT=POINT:ITERATION kills this process with
SIGKILL when the run passes that point at that iteration, so a test can end training at a
chosen moment (inside a checkpoint write too) instead of by timing luck.

Points: `iteration` (right after an iteration's update, before any event), `checkpoint`
(inside a checkpoint save: its files are written, the checkpoint index not yet updated).
"""

import os
import signal


def point(name, iteration):
    """Kills the process if KERASBN_FAULT names this point and iteration."""
    if os.environ.get("KERASBN_FAULT") == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
