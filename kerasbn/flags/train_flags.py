"""The training flags, generated from the settings `config.RunConfig` declares (one flag per
setting, with its help, bounds and choices), shared by the commands that train, and their
conversion to a `RunConfig`.

    values, _ = cli.parse(argv, train_flags.define)
    config = train_flags.to_config(values, records.read_manifest(values.data_dir))

`flags.txt` in a run dir holds them as the user gave them (a reusable flagfile, read back by
`parse_flagfile` here and, without absl, by `run_dir.stored_config`).
"""

import dataclasses

from absl import flags

from kerasbn import config
from kerasbn.data import records
from kerasbn.flags import cli
from kerasbn.utils import settings

# How each kind of setting becomes an absl flag (kerasbn.utils.settings.kind).
_DEFINERS = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
             "float": flags.DEFINE_float, "bool": flags.DEFINE_bool,
             "enum": flags.DEFINE_enum, "list": flags.DEFINE_list,
             "multi_integer": flags.DEFINE_multi_integer, "multi_float": flags.DEFINE_multi_float,
             "multi_string": flags.DEFINE_multi_string}
_NUMERIC = ("integer", "float", "multi_integer", "multi_float")


def define(values):
    """Defines the training flags on FlagValues `values`: one per declared setting of
    `config.RunConfig` (and its schedule), with its help, bounds and choices, and --overwrite."""
    for field, spec in config.declared():
        if not spec.flag:
            continue
        kind = settings.kind(field, spec)
        default = None if spec.from_manifest or field.default is dataclasses.MISSING \
            else field.default
        if isinstance(default, tuple):
            default = list(default)
        extra = {}
        if kind == "enum":
            extra["enum_values"] = spec.choices + spec.flag_choices
        if kind in _NUMERIC:
            extra.update(lower_bound=spec.lower, upper_bound=spec.upper)
        _DEFINERS[kind](field.name, default, help=spec.help, flag_values=values, **extra)
        if field.name == "run_dir":
            flags.DEFINE_bool("overwrite", False, "Start over in a --run_dir that holds another "
                              "run (deletes only the files a run writes).", flag_values=values)


def names():
    """The training flags' names, in definition order."""
    scratch = flags.FlagValues()
    define(scratch)
    return list(scratch)


def settings_of(values):
    """{setting: value} of parsed training flags."""
    return {name: values[name].value for name in names() if name != "overwrite"}


def schedule_config(values):
    """The `ScheduleConfig` of parsed training flags (raises ScheduleError when invalid)."""
    return config.schedule_of(settings_of(values))


def to_config(values, manifest):
    """The `RunConfig` of parsed training flags on the dataset of `manifest` (config.resolve)."""
    return config.resolve(settings_of(values), manifest, records.manifest_path(values.data_dir))


def flagfile_text(values):
    """The training flags as a flagfile (`--name=value` lines) for the run's flags.txt."""
    lines = [values[name].serialize() for name in names()
             if values[name].value is not None and name != "overwrite"]
    return "\n".join(line for line in lines if line) + "\n"


def parse_flagfile(path):
    """FlagValues of the training flags read from flagfile `path` (a run's flags.txt)."""
    values = flags.FlagValues()
    define(values)
    try:
        values(["flags.txt"] + cli.read_flagfile(path))
    except (flags.Error, OSError) as e:
        raise config.ConfigError(f"{path}: {' '.join(str(e).split())}; fix the flagfile") \
            from None
    return values
