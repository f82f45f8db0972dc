"""What every command shares: its flags on a FlagValues of its own, parsed from argv.

Parsing is absl's, with three differences a user of flagfiles expects: a `--flagfile=` inside
a flagfile resolves relative to the including file first, then the working directory; a
repeatable flag given on the command line replaces the flagfiles' values instead of adding to
them; and a bad flag or a missing flagfile ends the command with one line. `--help` prints
the command's own flags; `-v N` (absl's verbosity) also lets TensorFlow log (see `console`).
"""

import atexit
import errno
import os
import re
import signal
import sys

from absl import flags, logging

from kerasbn.utils import errors, stop_signals, writable

COMMENT = ("#", "//")


def parse(argv, define, doc=""):
    """(FlagValues holding `define`'s flags parsed from argv, positional arguments).

    Exits with one line on a bad flag or flagfile, and after printing help for --help.
    """
    _settle_console()
    values = flags.FlagValues()
    define(values)
    flags.DEFINE_integer("verbosity", -1, "Logging verbosity (absl's): 0 and up show "
                         "TensorFlow's logs too.", short_name="v", flag_values=values)
    if any(arg in ("-h", "--help", "-help", "--helpfull", "-?") for arg in argv[1:]):
        print(f"{doc.strip()}\n\nflags:\n{values.get_help(include_special_flags=False)}")
        sys.exit(0)
    try:
        rest = values(expand(argv, values))
    except (flags.Error, OSError) as e:
        sys.exit(f"error: {_one_line(e)} (see --help)")
    for name in values:
        flag = values[name]
        empty = flag.value in ("", [], [""])
        if flag.present and empty and not isinstance(flag, flags.BooleanFlag):
            sys.exit(f"error: --{flag.name} is empty; give it a value or leave it out "
                     "(see --help)")
    logging.set_verbosity(max(values.verbosity, logging.WARNING))
    return values, rest[1:]


def run(work, interrupted):
    """`work()`'s result; a UserError ends the command with its `error:` line, and Ctrl-C or
    SIGTERM with `interrupted: ...` (what was kept, how to continue) and exit 130."""
    try:
        with stop_signals.as_interrupt():
            return work()
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)


class _ImageSize(flags.ArgumentParser):
    """An image size given as N (square) or H,W, parsed to [height, width]."""

    syntax = "N or H,W in pixels, e.g. 50 or 112,96"

    def parse(self, argument):
        parts = list(argument) if isinstance(argument, (list, tuple)) \
            else str(argument).split(",")
        try:
            sizes = [int(str(part).strip()) for part in parts]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            raise ValueError(f"takes {self.syntax}, got {argument!r}")
        return sizes * 2 if len(sizes) == 1 else sizes

    def flag_type(self):
        return "image size"


def define_image_size(values, default, help_text):
    """Defines --image_size on `values`: N or H,W (a 112x96 face crop is 112,96)."""
    flags.DEFINE(_ImageSize(), "image_size", default, f"{help_text} ({_ImageSize.syntax}).",
                 flag_values=values, serializer=flags.ListSerializer(","))


def check_writable(path, flag="out", by_tensorflow=False):
    """Ends the command in one line, before its work, when nothing can be written at `path`
    (`--flag`'s value); with `by_tensorflow` (TensorFlow writes there), also when the path
    is not UTF-8, which TensorFlow cannot take."""
    def check():
        if by_tensorflow:
            writable.check_utf8(path, flag)
        writable.check(path, flag)
    run(check, "nothing was written")


def _settle_console():
    """A file name that is not UTF-8 prints with its odd bytes escaped instead of raising,
    and output cut short by its reader (`| head`) ends the command quietly, as it ends any
    Unix tool (exit 141), instead of with a BrokenPipeError traceback."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if getattr(sys.excepthook, "quiet_on_broken_pipe", False):
        return
    earlier = sys.excepthook

    def hook(kind, error, traceback):
        if issubclass(kind, BrokenPipeError):
            _end_on_broken_pipe()
        full = disk_full_line(error)
        if full:
            print(full, file=sys.stderr, flush=True)
            os._exit(1)
        earlier(kind, error, traceback)

    hook.quiet_on_broken_pipe = True
    sys.excepthook = hook
    # Piped output is buffered, so the write that finds the pipe closed is often the last
    # flush, after the command's own code and its excepthook.
    atexit.register(_flush_stdout)


def disk_full_line(error):
    """The one line a command ends with when `error` is a full disk or quota (Python's
    OSError or TensorFlow's ResourceExhaustedError while writing), else None. Every writer
    of kerasbn writes whole files through temporary names, so what is on disk stays
    consistent and a rerun after freeing space continues."""
    text = str(error)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        words in text for words in ("No space left on device", "Disk quota exceeded"))
    if not full:
        return None
    # TensorFlow's message wraps the path in its function's name and op.
    where = getattr(error, "filename", None) or re.sub(
        r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", text.strip().splitlines()[-1])
    return (f"error: the disk is full ({where}); free space and rerun the same command: "
            "what was written whole is kept, nothing half-written is taken as complete")


def _flush_stdout():
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _end_on_broken_pipe()


def _end_on_broken_pipe():
    # The interpreter flushes stdout once more at exit; that flush must go nowhere.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    os._exit(128 + signal.SIGPIPE)


def _one_line(error):
    return " ".join(str(error).split())


def expand(argv, values):
    """argv with every --flagfile replaced by its lines (nested ones too); a repeatable flag
    given outside flagfiles drops the flagfiles' values of that flag."""
    args = list(argv[1:])
    for i, arg in enumerate(args[:-1]):
        if arg in ("--flagfile", "-flagfile"):
            args[i:i + 2] = [f"--flagfile={args[i + 1]}", None]
    args = [arg for arg in args if arg is not None]
    repeatable = {name for name in values if isinstance(values[name], flags.MultiFlag)}
    given = {flag_name(arg) for arg in args} & repeatable
    expanded = [argv[0]]
    for arg in args:
        if flag_name(arg) == "flagfile":
            expanded += [line for line in read_flagfile(arg.split("=", 1)[1])
                         if flag_name(line) not in given]
        else:
            expanded.append(arg)
    return expanded


def read_flagfile(path, including=None, seen=()):
    """The flag lines of flagfile `path`, its nested flagfiles expanded in place."""
    path = resolve_flagfile(path, including)
    if path in seen:
        raise flags.Error(f"--flagfile={path} includes itself")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    out = []
    for line in lines:
        if not line or line.startswith(COMMENT):
            continue
        if flag_name(line) == "flagfile":
            out += read_flagfile(line.split("=", 1)[1], path, seen + (path,))
        else:
            out.append(line)
    return out


def resolve_flagfile(path, including=None):
    """`path` relative to the including flagfile's directory if it is there, else as given."""
    if including and not os.path.isabs(path):
        beside = os.path.join(os.path.dirname(including), path)
        if os.path.isfile(beside):
            return beside
    if not os.path.isfile(path):
        where = f" (included by {including})" if including else ""
        raise flags.Error(f"--flagfile={path}{where} not found")
    return path


def flag_name(arg):
    """The flag an argument sets (`--name=value` -> name), None for a positional one."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.lstrip("-").split("=", 1)[0]
