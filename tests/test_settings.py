"""Each training setting is declared once (kerasbn.utils.settings): the flags generated from the
declarations are today's flags, and a run's flags.txt reads back the same without absl."""

import json
import os

import pytest
from absl import flags

from kerasbn import config
from kerasbn.flags import cli, train_flags
from kerasbn.utils import settings

# The training flags as train_flags.define wrote them out by hand before they were generated
# (names, kinds, defaults, help, bounds, choices), taken from that commit's flag registry.
TODAY = os.path.join(os.path.dirname(__file__), "data", "train_flags.json")


def _registry():
    values = flags.FlagValues()
    train_flags.define(values)
    for name in values:
        flag = values[name]
        yield {"name": name, "type": flag.flag_type(),
               "default": list(flag.default) if isinstance(flag.default, tuple) else flag.default,
               "help": flag.help, "multi": isinstance(flag, flags.MultiFlag),
               "enum_values": list(getattr(flag.parser, "enum_values", None) or []) or None,
               "lower_bound": getattr(flag.parser, "lower_bound", None),
               "upper_bound": getattr(flag.parser, "upper_bound", None)}


def test_the_generated_flags_are_the_flags_written_out_before():
    with open(TODAY, encoding="utf-8") as f:
        today = {entry["name"]: entry for entry in json.load(f)}
    generated = {entry["name"]: entry for entry in _registry()}
    assert sorted(generated) == sorted(today)
    for name, entry in today.items():
        assert generated[name] == entry, name


def test_one_declaration_bounds_flag_and_config_alike():
    # The flag takes the closed interval (absl has no open bounds); the config refuses the
    # open end with a line naming the flag.
    spec = dict(settings.declared(config.RunConfig))
    dropout = next(s for f, s in spec.items() if f.name == "dropout")
    assert (dropout.lower, dropout.upper, dropout.upper_open) == (0, 1, True)
    assert settings.bound_error("dropout", 1.0, dropout) == "--dropout must lie in [0, 1), got 1"
    assert settings.bound_error("dropout", 0.5, dropout) is None
    assert "--momentum" not in config.NOT_RUN_DEFINING and "display" in config.NOT_RUN_DEFINING


@pytest.mark.parametrize("args", [
    [], ["--stepvalue=100", "--stepvalue=200", "--widths=1,2,3,4,5,6,7", "--nomirror"],
    ["--mirror", "--target=verify_acc:0.9", "--target_accuracy=0.5", "--target_accuracy=0.7",
     "--precision=mixed_bfloat16", "--weights=w", "--bn_momentum=0.9", "--num_classes=3"],
])
def test_flags_txt_reads_back_without_absl_as_absl_reads_it(args):
    values, _ = cli.parse(["train", "--data_dir=d", "--run_dir=r", *args], train_flags.define)
    lines = train_flags.flagfile_text(values).splitlines()
    read = settings.parse_flag_lines(lines, config.declared(), ValueError)
    assert read == train_flags.settings_of(values)


def test_a_bad_flags_txt_line_is_named():
    with pytest.raises(ValueError, match="'--bogus=1': no such training flag"):
        settings.parse_flag_lines(["--bogus=1"], config.declared(), ValueError)
    with pytest.raises(ValueError, match="not a valid --max_iter"):
        settings.parse_flag_lines(["--max_iter=x"], config.declared(), ValueError)
