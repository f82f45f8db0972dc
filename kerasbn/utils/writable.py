"""Whether a command can write where it is asked to, checked before its work: a read-only
or forbidden --out ends in one line naming it, not in an OSError traceback after minutes of
work (evaluate once embedded everything first)."""

import os
import tempfile

from kerasbn.utils import errors


def check(path, flag="out"):
    """Raises UserError when no file can be made at `path` (a directory, or a file to be
    written): its nearest existing folder refuses a new file."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise errors.UserError(f"--{flag}={path}: nothing can be written in {folder} "
                               f"({e.strerror}); give a directory you can write to") from None


def check_utf8(path, flag):
    """Raises UserError when `path` is not UTF-8 text: TensorFlow's file functions
    (checkpoints, SavedModels, TFRecords) take paths as UTF-8 and fail on any other name,
    once a run dir already held its first files."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.UserError(f"--{flag}={path}: TensorFlow reads and writes only paths that "
                               "are UTF-8 text, and this one is not; choose another name") \
            from None
