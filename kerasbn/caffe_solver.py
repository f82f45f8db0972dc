"""Converts a Caffe solver prototxt into kerasbn.train flags.

    python -m kerasbn.caffe_solver solver.prototxt > solver.flags
    python -m kerasbn.train --flagfile=solver.flags --data_dir=...

Fields with a kerasbn equivalent become flags; every other field (net paths, solver_mode,
nested blocks, unsupported solver types ...) is listed on stderr, never dropped silently.
A field the file leaves out gets Caffe's default where kerasbn's differs (weight_decay and
momentum 0, not 5e-4 and 0.9; gamma and power 0 for the policies that read them), so the
flags train as Caffe would. test_iter is converted with a warning: Caffe counts batches of
the test net's batch_size, kerasbn batches of --batch_size.
"""

import re
import sys

from kerasbn.flags import cli
from kerasbn.optim import schedules
from kerasbn.utils import errors

_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^\s#]+)'
                   r'\s*(?:#.*)?$')
_BLOCK = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:?\s*\{")
_FLOATS = ("base_lr", "gamma", "power", "momentum", "momentum2", "delta", "weight_decay")
_INTEGERS = ("stepsize", "stepvalue", "max_iter", "test_interval", "display", "snapshot",
             "iter_size", "test_iter", "random_seed")
_SAME_NAME = _FLOATS + tuple(name for name in _INTEGERS if name not in ("test_iter",
                                                                        "random_seed"))
_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAM": "Adam", "ADAMW": "AdamW"}
# Caffe's SolverParameter defaults that kerasbn's flags do not share, and the policies that
# read each (None: every policy).
_CAFFE_DEFAULTS = (("weight_decay", "0", None), ("momentum", "0", None),
                   ("gamma", "0", ("step", "exp", "inv", "multistep", "sigmoid")),
                   ("power", "0", ("inv", "poly")))


class SolverError(errors.UserError):
    """A solver file that cannot be read; the message names the file and line."""


def parse(text, name="solver.prototxt"):
    """[(field, value, line number)] of the top-level fields; nested blocks as (field, '{...}')."""
    fields, depth = [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        braces = line.split("#", 1)[0]
        if depth:
            depth += braces.count("{") - braces.count("}")
            continue
        opened = _BLOCK.match(line)
        if opened:
            depth = braces.count("{") - braces.count("}")
            fields.append((opened.group(1), "{...}", number))
            continue
        match = _LINE.match(line)
        if not match:
            raise SolverError(f"{name}:{number}: expected `field: value`, got {raw.strip()!r}")
        fields.append((match.group(1), match.group(2).strip("\"'"), number))
    if depth:
        raise SolverError(f"{name}: a `{{` block is never closed")
    return fields


def convert(text, name="solver.prototxt"):
    """(flag lines, [(field, value, line, why)] not mapped, [(field, value, line, warning)])
    of a solver prototxt."""
    flags, unmapped, notes, seen_test_iter = [], [], [], False
    for field, value, number in parse(text, name):
        _check_number(field, value, f"{name}:{number}")
        why = None
        if field in _SAME_NAME:
            flags.append(f"--{field}={value}")
        elif field == "lr_policy":
            if value in schedules.CAFFE_POLICIES:
                flags.append(f"--lr_policy={value}")
            else:
                why = f"lr_policy {value!r} is not a Caffe policy kerasbn knows"
        elif field == "test_iter":
            if seen_test_iter:
                why = "a second test net's test_iter (kerasbn tests one split)"
            else:
                flags.append(f"--test_iter={value}")
                seen_test_iter = True
                notes.append((field, value, number, (
                    f"Caffe's test_iter counts batches of the test net's batch_size; kerasbn's "
                    f"--test_iter={value} counts batches of --batch_size (the training "
                    "batch), so adjust it to cover the same images, or use --test_iter=0 for "
                    "the whole test split")))
        elif field in ("type", "solver_type"):
            if value.upper() in _SOLVER_TYPES:
                flags.append(f"--solver_type={_SOLVER_TYPES[value.upper()]}")
            else:
                why = f"solver type {value} is not supported (SGD, Nesterov, Adam, AdamW)"
        elif field == "snapshot_prefix":
            flags.append(f"--run_dir={value}")
        elif field == "random_seed":
            flags.append(f"--seed={value}")
        elif field == "test_initialization":
            flags.append("--test_initialization" if value == "true"
                         else "--notest_initialization")
        elif field == "regularization_type" and value == "L2":
            continue
        else:
            why = "no kerasbn equivalent"
        if why:
            unmapped.append((field, value, number, why))
    given = {cli.flag_name(line) for line in flags}
    policy = next((line.split("=", 1)[1] for line in flags
                   if line.startswith("--lr_policy=")), None)
    defaults = [f"--{field}={value}" for field, value, policies in _CAFFE_DEFAULTS
                if field not in given and (policies is None or policy in policies)]
    if defaults:
        flags += ["# Caffe's defaults for fields the solver leaves out:"] + defaults
    return flags, unmapped, notes


def _check_number(field, value, where):
    """Refuses a numeric field whose value is no number of its kind, naming the line."""
    kind = int if field in _INTEGERS else float if field in _FLOATS else None
    if kind is None:
        return
    try:
        kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SolverError(f"{where}: {field} must be {what}, got {value!r}") from None


def main(argv):
    _, paths = cli.parse(argv, lambda values: None, __doc__)
    if len(paths) != 1:
        sys.exit("error: give one solver.prototxt")
    path = paths[0]
    try:
        with open(path, encoding="utf-8") as f:
            flags, unmapped, notes = convert(f.read(), path)
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        sys.exit(f"error: {path} is not a text file; give a Caffe solver.prototxt")
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    print(f"# converted from {path} by python -m kerasbn.caffe_solver")
    print("\n".join(flags))
    for field, value, number, why in unmapped:
        print(f"{path}:{number}: not converted: {field}: {value} ({why})", file=sys.stderr)
    for field, value, number, warning in notes:
        print(f"{path}:{number}: warning: {field}: {value}: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
