"""Whole-file writes: a reader (or a crash) sees the old file or the complete new one.

Every file that is rewritten in place (manifest.json, summary.json, flags.txt, config.json, a
converter's shard state) goes through here, so none is ever left half written.
"""

import json
import os


def write_text(path, text):
    """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, value, indent=1):
    """`write_text` of `value` as JSON (non-ASCII kept, newline at the end)."""
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
