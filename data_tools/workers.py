"""An ordered map over forked worker processes with a bounded number of results in flight, so
a converter's memory stays flat however far its workers run ahead of the writer.

The workers run numpy, Pillow and protobuf, never a TensorFlow op, so forking after
TensorFlow has loaded is safe.
"""

import collections
import contextlib
import gc
import multiprocessing

from kerasbn.utils import stop_signals

# Jobs queued or finished but not yet taken, per worker: enough to keep every worker busy.
IN_FLIGHT_PER_WORKER = 4


@contextlib.contextmanager
def ordered_map(workers, initializer=None):
    """Yields `map(function, jobs)`: results in the jobs' order, computed in `workers` forked
    processes (in this one for a single worker), at most IN_FLIGHT_PER_WORKER per worker held
    at a time. The pool ends with the block."""
    if workers <= 1:
        if initializer:
            initializer()
        yield map
        return
    # Keeps the workers' garbage collector off the parent's (TensorFlow-sized) heap, whose
    # pages it would otherwise touch and copy in every worker.
    gc.freeze()
    with stop_signals.for_workers():
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=initializer)

    def bounded(function, jobs):
        jobs, pending = iter(jobs), collections.deque()
        for job in jobs:
            pending.append(pool.apply_async(function, (job,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    try:
        yield bounded
    finally:
        # Every result has been taken (or the build failed): nothing left to wait for.
        pool.terminate()
        pool.join()
        gc.unfreeze()
