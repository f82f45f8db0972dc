"""Keeps a command's console to its own lines: TensorFlow's start-up chatter is silenced.

TensorFlow writes its oneDNN and CUDA-stub notices while it is imported and a `failed call
to cuInit` error when it first looks for GPUs, all before its logging starts, so neither
TF_CPP_MIN_LOG_LEVEL nor absl can hide them. Standard error is closed at the descriptor
level around both moments instead, and TensorFlow's Python logger then reports errors only
(its warnings, such as a checkpoint's unrestored values at exit, would follow a command's
own last line). absl's own `-v`/`--verbosity` on the command line, read
here before TensorFlow is imported, leaves everything as TensorFlow prints it.
"""

import contextlib
import os
import sys


def verbose_requested(argv):
    """Whether `argv` asks for logs: absl's -v or --verbosity, in any of its spellings."""
    return any(arg in ("-v", "--verbosity") or arg.startswith(("-v=", "--verbosity="))
               for arg in argv[1:])


@contextlib.contextmanager
def silenced_stderr():
    """Sends the process's file descriptor 2 (C++ and Python writes alike) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def import_tensorflow():
    """Imports TensorFlow and Keras and lists the GPUs, quietly unless logs were asked for."""
    if "tensorflow" in sys.modules:
        return
    if verbose_requested(sys.argv):
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with silenced_stderr():
        import keras  # noqa: F401
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
    tf.get_logger().setLevel("ERROR")


def at_most(lines, limit, rest):
    """The first `limit` of `lines`, then one saying how many more there are and `rest`
    (where they are all listed)."""
    more = [f"  ... and {len(lines) - limit} more, {rest}"] if len(lines) > limit else []
    return lines[:limit] + more
