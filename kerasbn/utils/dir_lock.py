"""One process at a time in a directory: an OS-level `flock` on DIR/.lock with the holder's
pid in it, released when the process ends however it ends (a killed process leaves no stale
lock). Training holds it on a run dir, build_records on its --out."""

import contextlib
import fcntl
import os

NAME = ".lock"


@contextlib.contextmanager
def held(folder, refusal):
    """Holds `folder`'s lock while the block runs (making the folder); a second process is
    refused at once with `refusal(holder's pid)`, an exception to raise."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise refusal(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def busy(folder):
    """Whether another process holds `folder`'s lock now (without taking it)."""
    try:
        fd = os.open(os.path.join(folder, NAME), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
