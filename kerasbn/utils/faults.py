"""Fault injection for the resume and signal tests: KERASBN_FAULT=POINT:ITERATION[:SIGNAL]
sends this process SIGNAL (default SIGKILL) when the run passes that point at that iteration,
so a test can stop training at a chosen moment (inside a checkpoint write too) instead of by
timing luck.

Points: `iteration` (right after an iteration's update, before any event), `checkpoint`
(inside a checkpoint save: its files are written, the checkpoint index not yet updated).
"""

import os
import signal

_fired = set()


def point(name, iteration):
    """Signals the process, once, if KERASBN_FAULT names this point and iteration."""
    spec = os.environ.get("KERASBN_FAULT", "")
    if spec.split(":")[:2] == [name, str(iteration)] and spec not in _fired:
        _fired.add(spec)
        parts = spec.split(":")
        os.kill(os.getpid(), getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL)
