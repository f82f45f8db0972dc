"""One trial's training: an ordinary `python -m kerasbn.train` run in its own directory, as
a child process whose tests are read from its metrics.jsonl as they land.

A child is stopped with SIGTERM, which training takes as a preemption notice: it
checkpoints the iteration it is in and exits, so a stopped trial's run is whole and can be
resumed or evaluated. The child runs in its own session (Ctrl-C at the terminal reaches
tune alone, which stops the child once) and is sent SIGTERM by the kernel if tune dies, even
by SIGKILL, instead of training on unwatched.
"""

import ctypes
import signal
import subprocess
import time

from kerasbn.runs.run_dir import RunDirError

POLL_SECONDS = 0.2
# How long a stopped child may take to checkpoint and exit before it is killed.
STOP_SECONDS = 300
_PR_SET_PDEATHSIG = 1


def _stop_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _entries(run):
    try:
        return run.read_metrics()
    except (RunDirError, OSError):
        return []


def _stop(child):
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        return child.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def watch(command, run, log_path, on_test, beat, beat_seconds):
    """Runs `command`, a training run in `run` (a RunDir), its output appended to `log_path`.

    After each test `on_test(entries so far)` returns None to go on, or a reason to stop the
    run (stopped with SIGTERM, checkpointed); `beat()` is called every `beat_seconds`. Returns
    (exit status, the reason it was stopped or None, its test entries). On KeyboardInterrupt
    the child is stopped the same way before it is re-raised.
    """
    with open(log_path, "ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_stop_with_parent)
    seen, reason, next_beat = 0, None, 0.0
    try:
        while True:
            code = child.poll()
            entries = _entries(run)
            while reason is None and seen < len(entries):
                seen += 1
                reason = on_test(entries[:seen])
                if reason is not None:
                    code = _stop(child)
            if code is not None:
                return code, reason, _entries(run)
            if time.monotonic() >= next_beat:
                beat()
                next_beat = time.monotonic() + beat_seconds
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        _stop(child)
        raise
