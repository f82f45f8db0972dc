"""A setting declared once: a dataclass field that carries its flag's help, bounds and choices.

    base_lr: float = setting(0.01, "Caffe base_lr.", lower=0, lower_open=True)

The run config's fields are declared this way; the training flags are generated from them
(`kerasbn.flags.train_flags`), each value is checked against its own bounds and choices here
(`check`), and the resume rule reads `run_defining`. Only checks that involve several settings
are written by hand, beside the dataclass.

Bounds are the setting's interval; a flag's absl bounds are its closure (absl has no open
bounds), so an open end is refused by `check` with one line naming the flag.
"""

import dataclasses
import types
import typing


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a setting declares beside its default."""

    help: str
    lower: float | None = None
    upper: float | None = None
    lower_open: bool = False
    upper_open: bool = False
    choices: tuple | None = None
    # Values the flag accepts beyond `choices`, resolved before the config is made ("auto").
    flag_choices: tuple = ()
    # False: the setting may change when a run resumes (where it lives, what it reports).
    run_defining: bool = True
    # A tuple's flag kind: list (comma-separated) or multi_integer, multi_float, multi_string
    # (repeated); other kinds follow the field's type.
    kind: str | None = None
    # A flag whose value the dataset fixes: given, it must equal the manifest's.
    from_manifest: bool = False
    # False: no flag (the manifest alone sets it).
    flag: bool = True


def setting(default=dataclasses.MISSING, help="", **spec):
    """A dataclass field with its `Spec` (no default: the field is required)."""
    return dataclasses.field(default=default, metadata={"setting": Spec(help, **spec)})


def declared(cls):
    """[(field, Spec)] of the dataclass `cls`'s declared settings, in field order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls)
            if "setting" in f.metadata]


def kind(field, spec):
    """The flag kind of a setting: integer, float, bool, string, enum, or a tuple's `Spec.kind`."""
    if spec.kind:
        return spec.kind
    if spec.from_manifest:
        return "integer"
    value_type = field.type
    if isinstance(value_type, types.UnionType):
        value_type = next(t for t in typing.get_args(value_type) if t is not type(None))
    if spec.choices:
        return "enum"
    return {int: "integer", float: "float", bool: "bool", str: "string"}[value_type]


def interval(spec):
    """The setting's interval as text: [0, 1), (0, inf), ..."""
    low = "-inf" if spec.lower is None else f"{spec.lower:g}"
    high = "inf" if spec.upper is None else f"{spec.upper:g}"
    return f"{'(' if spec.lower_open or spec.lower is None else '['}{low}, " \
           f"{high}{')' if spec.upper_open or spec.upper is None else ']'}"


def bound_error(name, value, spec):
    """The one-line complaint about `value` of setting `name`, or None when it is in bounds."""
    low, high = spec.lower, spec.upper
    below = low is not None and (value < low or (spec.lower_open and value == low))
    above = high is not None and (value > high or (spec.upper_open and value == high))
    if not (below or above):
        return None
    if high is None and not spec.lower_open and low == 0:
        return f"--{name} must not be negative, got {value:g}"
    if high is None and spec.lower_open and low == 0:
        return f"--{name} must be positive, got {value:g}"
    if high is None and not spec.lower_open:
        return f"--{name} must be at least {low:g}, got {value:g}"
    return f"--{name} must lie in {interval(spec)}, got {value:g}"


def check(instance, error):
    """Raises `error` (a UserError class) for the first of `instance`'s settings outside its
    bounds or choices; tuples are checked element by element."""
    for field, spec in declared(type(instance)):
        value = getattr(instance, field.name)
        if value is None:
            continue
        if spec.choices is not None and value not in spec.choices:
            raise error(f"--{field.name}={value} is not one of {', '.join(spec.choices)}")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                message = bound_error(field.name, item, spec)
                if message:
                    raise error(message)


_CONVERT = {"integer": int, "float": float, "multi_integer": int, "multi_float": float}


def parse_flag_lines(lines, declared_settings, error):
    """{name: value} of flagfile lines (`--name=value`, `--name`, `--noname`, a multi flag
    once per value) as the training flags parse them, defaults for the settings not given:
    a run's flags.txt read without absl. Raises `error` naming an unknown or bad line."""
    by_name = {field.name: (field, spec) for field, spec in declared_settings if spec.flag}
    values = {name: (None if field.default is dataclasses.MISSING or spec.from_manifest
                     else list(field.default) if isinstance(field.default, tuple)
                     else field.default)
              for name, (field, spec) in by_name.items()}
    given = set()
    for line in lines:
        name, has_value, text = line.strip().removeprefix("--").partition("=")
        if not has_value and name.startswith("no") and name[2:] in by_name:
            name, text = name[2:], "false"
        if name not in by_name:
            raise error(f"{line.strip()!r}: no such training flag")
        field, spec = by_name[name]
        flag_kind = kind(field, spec)
        try:
            if flag_kind == "bool":
                value = text.lower() in ("", "true", "1") if has_value or not text else False
            elif flag_kind == "list":
                value = text.split(",") if text else []
            else:
                value = _CONVERT.get(flag_kind, str)(text)
        except ValueError:
            raise error(f"{line.strip()!r}: not a valid --{name}") from None
        if flag_kind.startswith("multi_"):
            values[name] = (values[name] if name in given else []) + [value]
        else:
            values[name] = value
        given.add(name)
    return values
