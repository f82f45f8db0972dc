"""Ctrl-C (SIGINT) and a cluster's preemption notice (SIGTERM) as requests to stop cleanly.

While training, the first of them is recorded (`StopRequests.signal`); the `StopOnSignal`
callback then ends training after the current iteration and `Snapshot` checkpoints it, as
Caffe's solver snapshots when stopped early. A second SIGINT stops at once. Outside training
(`as_interrupt`), SIGTERM is made a KeyboardInterrupt, so a converter stops the way Ctrl-C
stops it: its finished shards kept.
"""

import contextlib
import signal
import sys

STOPS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """Training stopped by `signum` after `iteration`, checkpointed there."""

    def __init__(self, signum, iteration):
        super().__init__(signum, iteration)
        self.signum = signum
        self.iteration = iteration


class StopRequests:
    """Catches SIGINT and SIGTERM in a `with` block; `signal` is the first one caught."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for signum in STOPS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"{signal.Signals(signum).name} received: checkpointing after this iteration, "
              "then stopping (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block, as SIGINT does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def for_workers():
    """Processes forked inside the block start with SIGTERM's default action and SIGINT
    ignored: a worker that inherited `as_interrupt`'s handler would turn Pool.terminate's
    SIGTERM into a KeyboardInterrupt it can be stuck handling (waiting on a lock its killed
    sibling held), and the parent's join would wait for it forever; Ctrl-C is the parent's."""
    previous = {signum: signal.signal(signum, action)
                for signum, action in ((signal.SIGTERM, signal.SIG_DFL),
                                       (signal.SIGINT, signal.SIG_IGN))}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
