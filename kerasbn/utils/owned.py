"""Removing what kerasbn wrote and nothing else: a user's own file inside a run's or an
export's directory survives every overwrite and is named, so nobody wonders where it went.
"""

import fnmatch
import os
import shutil


def remove(root, patterns, folders=()):
    """Deletes the entries under directory `root` whose path relative to it matches one of the
    glob `patterns` ("checkpoint", "ckpt-*", "best/ckpt-*"; a matching directory goes whole),
    then each of `folders` (relative paths, deepest first) that is left empty. Returns the
    relative paths of the files that stay (the user's), sorted."""
    kept = []
    for folder, dirs, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        for name in list(dirs):
            if _matches(_relative(relative, name), patterns):
                shutil.rmtree(os.path.join(folder, name))
                dirs.remove(name)
        for name in files:
            path = _relative(relative, name)
            if _matches(path, patterns):
                os.remove(os.path.join(folder, name))
            else:
                kept.append(path)
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        path = os.path.join(root, folder)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    return sorted(kept)


def _relative(folder, name):
    return name if folder == "." else os.path.join(folder, name)


def _matches(path, patterns):
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
