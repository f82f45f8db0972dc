"""A search space: a YAML file beside the flagfiles, naming the base flagfile and, per
training setting, a fixed value, a list of choices or a range.

    base: ../quickstart/bn.flags          # relative to this file
    search:
      model: [baseline, bn]                # choices
      norm: {choices: [nvidia, caffe], when: {model: bn}}
      base_lr: {low: 0.005, high: 0.05, log: true, grid: [0.005, 0.01, 0.02, 0.05]}
      stepvalue: {choices: ["400", "600"], when: {lr_policy: multistep}}
      dropout: 0                           # fixed

YAML rather than Python: a space is data a team shares and a study records, so it must not
run code, and Optuna already depends on PyYAML; JSON has no comments. Entries are sampled in
file order (Optuna's define-by-run), so `when` names settings listed above it; an entry whose
`when` does not hold is left to the base flagfile. `grid` lists the values a grid would try
for a range (a choice list is its own grid), so a study can say what a grid would spend.
Every value a space can give is checked at load by the setting's own declared bounds and
choices, as a flag is.
"""

import dataclasses
import hashlib
import os

import yaml

from kerasbn import config
from kerasbn.utils import errors, settings

_RANGE_KEYS = {"low", "high", "log", "step", "grid", "when"}
_CHOICE_KEYS = {"choices", "when"}
# Settings the same for every trial: where it runs and on what data, the seed (a comparison
# changes one thing at a time), the target, and the run length the objective counts
# iterations against (docs/tuning.md).
TUNER_SETTINGS = ("run_dir", "data_dir", "seed", "target", "max_iter")


class SpaceError(errors.UserError):
    """A search space that cannot be searched; the message names the file, the entry and
    the fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One searched setting: `choices` (a tuple) or a range (`low`, `high`, `log`, `step`),
    sampled only when every `when` setting holds one of its listed values."""

    name: str
    kind: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    grid: tuple | None = None
    when: tuple = ()

    def applies(self, values):
        return all(values.get(name) in allowed for name, allowed in self.when)


@dataclasses.dataclass(frozen=True)
class Space:
    """A loaded space: where it came from, its base flagfile, fixed values and entries."""

    path: str
    base: str
    fixed: dict
    entries: tuple
    digest: str

    def sample(self, trial):
        """{setting: value} Optuna's `trial` draws from the entries that apply."""
        values = {}
        for entry in self.entries:
            if not entry.applies(values):
                continue
            if entry.choices is not None:
                values[entry.name] = trial.suggest_categorical(entry.name, entry.choices)
            elif entry.kind == "integer":
                values[entry.name] = trial.suggest_int(entry.name, int(entry.low),
                                                       int(entry.high), step=int(entry.step or 1),
                                                       log=entry.log)
            else:
                values[entry.name] = trial.suggest_float(entry.name, entry.low, entry.high,
                                                         step=entry.step, log=entry.log)
        return values

    def flags(self, values):
        """The training flags of a trial that drew `values`: the fixed ones, then the drawn."""
        return [f"--{name}={flag_text(value)}" for name, value in {**self.fixed,
                                                                   **values}.items()]

    def grid(self):
        """Every point ({setting: value}) a grid over the entries' choices would run; a
        SpaceError naming the first range without `grid` values."""
        points = [{}]
        for entry in self.entries:
            values = entry.choices if entry.choices is not None else entry.grid
            if values is None:
                raise SpaceError(f"{self.path}: {entry.name} is a range without grid values; "
                                 "give it grid: [...] to compare with a grid")
            points = [{**point, entry.name: value} if entry.applies(point) else point
                      for point in points
                      for value in (values if entry.applies(point) else [None])]
        return [{k: v for k, v in point.items() if v is not None} for point in points]


def flag_text(value):
    """A space value as a flag's text (a list as its comma-separated form)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(flag_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _declared():
    return {field.name: (field, spec) for field, spec in config.declared() if spec.flag}


def _check_value(path, name, value):
    """Refuses `value` of setting `name` in one line, by the setting's declared bounds."""
    field, spec = _declared()[name]
    line = f"--{name}={flag_text(value)}"
    parsed = settings.parse_flag_lines([line], config.declared(), SpaceError)[name]
    allowed = None if spec.choices is None else spec.choices + spec.flag_choices
    if allowed is not None and parsed not in allowed:
        raise SpaceError(f"{path}: {line} is not one of {', '.join(allowed)}")
    for item in parsed if isinstance(parsed, list) else [parsed]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            message = settings.bound_error(name, item, spec)
            if message:
                raise SpaceError(f"{path}: {message}")


def _entry(path, name, raw, earlier):
    """The Entry of `name: raw` (raw a list or a mapping)."""
    field, spec = _declared()[name]
    kind = settings.kind(field, spec)
    if isinstance(raw, list):
        raw = {"choices": raw}
    keys = set(raw)
    if "choices" in keys and not keys <= _CHOICE_KEYS or "choices" not in keys and not (
            {"low", "high"} <= keys <= _RANGE_KEYS):
        raise SpaceError(f"{path}: {name} must be a value, a list of choices, {{choices: [...], "
                         "when: ...}} or {low:, high:, log:, step:, grid:, when:}")
    when = []
    for other, allowed in (raw.get("when") or {}).items():
        if other not in earlier:
            raise SpaceError(f"{path}: {name}'s when names {other}, which is not searched "
                             "above it; list the setting it depends on first")
        when.append((other, tuple(allowed if isinstance(allowed, list) else [allowed])))
    if "choices" in raw:
        choices = [flag_text(c) if isinstance(c, list) else c for c in raw["choices"]]
        if not choices or len(set(map(str, choices))) < len(choices):
            raise SpaceError(f"{path}: {name}'s choices must be a list without repeats")
        for choice in choices:
            _check_value(path, name, choice)
        return Entry(name, kind, choices=tuple(choices), when=tuple(when))
    if kind not in ("integer", "float"):
        raise SpaceError(f"{path}: {name} is a {kind} setting; give it a list of choices, "
                         "not a range")
    low, high = raw["low"], raw["high"]
    if not low < high:
        raise SpaceError(f"{path}: {name}'s range needs low < high, got {low} and {high}")
    grid = tuple(raw["grid"]) if "grid" in raw else None
    for value in (low, high, *(grid or ())):
        _check_value(path, name, value)
    if grid and not all(low <= value <= high for value in grid):
        raise SpaceError(f"{path}: {name}'s grid values must lie in [{low}, {high}]")
    if raw.get("log") and raw.get("step"):
        raise SpaceError(f"{path}: {name} takes log or step, not both (Optuna samples one)")
    return Entry(name, kind, low=low, high=high, log=bool(raw.get("log")), step=raw.get("step"),
                 grid=grid, when=tuple(when))


def load(path):
    """The Space of YAML file `path`; a SpaceError naming what is wrong."""
    try:
        with open(path, "rb") as f:
            text = f.read()
        raw = yaml.safe_load(text)
    except OSError as e:
        raise SpaceError(f"--space={path} cannot be read ({e.strerror}); give a space file "
                         "such as launch/tune/study_quick.yaml") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"--space={path} is not YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict) or set(raw) - {"base", "search"} or "base" not in raw:
        raise SpaceError(f"{path}: a space holds base: (its flagfile) and search: (the "
                         "settings); see launch/tune/study_quick.yaml")
    base = os.path.join(os.path.dirname(path), str(raw["base"]))
    if not os.path.isfile(base):
        raise SpaceError(f"{path}: its base flagfile {base} does not exist")
    fixed, entries, known = {}, [], _declared()
    for name, value in (raw.get("search") or {}).items():
        if name not in known:
            raise SpaceError(f"{path}: {name} is no training setting (see python -m "
                             "kerasbn.train --help)")
        if name in TUNER_SETTINGS:
            raise SpaceError(f"{path}: {name} is the same for every trial (tune sets it, or "
                             f"the objective counts against it); give --{name} to tune")
        if isinstance(value, (list, dict)):
            entries.append(_entry(path, name, value, [e.name for e in entries]))
        else:
            _check_value(path, name, value)
            fixed[name] = value
    if not entries:
        raise SpaceError(f"{path}: search: lists no setting with choices or a range")
    return Space(path, base, fixed, tuple(entries), hashlib.sha256(text).hexdigest()[:16])
