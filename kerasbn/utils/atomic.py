"""Whole-file writes: a reader (or a crash) sees the old file or the complete new one.

Every file that is rewritten in place (manifest.json, summary.json, flags.txt, config.json, a
converter's shard state) goes through here, so none is ever left half written.
"""

import json
import os


def write_text(path, text):
    """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`.
    A file name in it that is not UTF-8 (held as lone surrogates, as os.fsdecode gives it) is
    written as its own bytes."""
    write_with(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def write_with(path, write):
    """`write(binary file)` into a temporary file beside `path`, synced, then renamed over
    `path` (numpy's np.save, say)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, value, indent=1):
    """`value` written whole as JSON (non-ASCII kept, newline at the end). A file name that
    is not UTF-8 holds lone surrogates; they are written as JSON's \\udcXX escapes, which
    read back as the same name."""
    text = json.dumps(value, indent=indent, ensure_ascii=False) + "\n"
    write_with(path, lambda f: f.write(text.encode("utf-8", "backslashreplace")))


def follow_umask(path):
    """Gives a directory or file made private by tempfile (0700, 0600) the permissions any
    new one gets under this process's umask, so a serving process of another user can read
    an export as it reads the rest of the user's files."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)
