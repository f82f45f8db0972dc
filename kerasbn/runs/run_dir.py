"""A run directory: every path of one training run, the lock of the process training in it,
and its records (config, metrics.jsonl, summary.json).

    run/flags.txt         the user's reusable flagfile
    run/config.json       the resolved `RunConfig`, which every other command reads
    run/metrics.jsonl     one line per test, appended whole and flushed
    run/summary.json      best, final and target results, rewritten at every test
    run/tensorboard/      train/ and test/ event files
    run/checkpoints/      weights, optimizer state, iteration and wall time; best/ the weights
                          of the best test so far
    run/export/           the SavedModel
    run/export.tflite     the LiteRT / ONNX core (`export --format`), each with a .json beside
    run/export.onnx

Rewritten files go through `atomic`; the lock is an OS-level `flock`, so a process killed
even with SIGKILL never leaves the directory locked.
"""

import contextlib
import json
import os
import re

from kerasbn import config as config_lib
from kerasbn.config import RunConfig
from kerasbn.data import records
from kerasbn.runs import export_layout
from kerasbn.utils import atomic, dir_lock, errors, owned, settings

FLAGS_NAME = "flags.txt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
TENSORBOARD_NAME = "tensorboard"
CHECKPOINTS_NAME = "checkpoints"
EXPORT_NAME = "export"
BEST_NAME = "best"
LOCK_NAME = dir_lock.NAME
# What --overwrite may delete, as paths in the run dir: only what a run writes (tf.summary's
# event files, tf.train.CheckpointManager's index and checkpoints, an export's entries).
_WRITTEN = (
    *(f"{name}{tmp}" for name in (FLAGS_NAME, CONFIG_NAME, METRICS_NAME, SUMMARY_NAME)
      for tmp in ("", ".tmp[0-9]*")),
    *(f"{TENSORBOARD_NAME}/{split}/events.out.tfevents.*" for split in ("train", "test")),
    *(f"{folder}/{name}" for folder in (CHECKPOINTS_NAME, f"{CHECKPOINTS_NAME}/{BEST_NAME}")
      for name in ("checkpoint", "ckpt-*")),
    *(f"{EXPORT_NAME}/{name}" for name in export_layout.SAVED_MODEL),
    *(name for suffix in export_layout.SUFFIXES.values()
      for name in export_layout.portable_files(EXPORT_NAME + suffix)),
)
# The folders a run makes, removed by --overwrite when nothing of the user's is left in them.
_FOLDERS = (TENSORBOARD_NAME, f"{TENSORBOARD_NAME}/train", f"{TENSORBOARD_NAME}/test",
            CHECKPOINTS_NAME, f"{CHECKPOINTS_NAME}/{BEST_NAME}", EXPORT_NAME)


class RunDirError(errors.UserError):
    """A run directory that cannot be used as asked; the message names it and the fix."""


class RunDirBusy(RunDirError):
    """The run directory is locked by another process (a launcher takes it as claimed)."""


# The exit status of a run refused because another process trains in its run dir, so a
# launcher moves on to the next run (EX_TEMPFAIL).
BUSY_EXIT = 75
# The exit status of a run that ended because its loss or outputs stopped being finite, so a
# tuner ranks the configuration instead of taking it for a crash (EX_DATAERR).
DIVERGED_EXIT = 65


class RunDir:
    """The files of the run at `path` (which need not exist yet)."""

    def __init__(self, path):
        self.path = path

    def _join(self, name):
        return os.path.join(self.path, name)

    flags_txt = property(lambda self: self._join(FLAGS_NAME))
    config_json = property(lambda self: self._join(CONFIG_NAME))
    metrics_jsonl = property(lambda self: self._join(METRICS_NAME))
    summary_json = property(lambda self: self._join(SUMMARY_NAME))
    tensorboard = property(lambda self: self._join(TENSORBOARD_NAME))
    checkpoints = property(lambda self: self._join(CHECKPOINTS_NAME))
    export = property(lambda self: self._join(EXPORT_NAME))
    best = property(lambda self: os.path.join(self.checkpoints, BEST_NAME))

    def holds_run(self):
        """Whether a run was started here (by this version or one before config.json)."""
        return os.path.isfile(self.config_json) or os.path.isfile(self.flags_txt)

    def read_config(self):
        """The run's `RunConfig` from config.json; None for a run from before config.json."""
        if not os.path.isfile(self.config_json):
            return None
        try:
            with open(self.config_json, encoding="utf-8") as f:
                return RunConfig.from_dict(json.load(f))
        except (json.JSONDecodeError, TypeError) as e:
            raise RunDirError(f"{self.config_json} cannot be read ({e}); restore it, or "
                              "delete it to fall back on flags.txt") from None

    @contextlib.contextmanager
    def lock(self):
        """Holds the run's lock while the block runs; a second process is refused at once."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"--run_dir={self.path} is a file; give a directory (new or a "
                              "run's)")
        with dir_lock.held(self.path, lambda holder: RunDirBusy(
                f"--run_dir={self.path} is in use by another training process (pid {holder}); "
                "wait for it to finish or stop it, or choose another --run_dir")):
            yield self

    def busy(self):
        """Whether another process holds the run's lock now (without taking it)."""
        return dir_lock.busy(self.path)

    def check_same_run(self, config, stored):
        """Refuses `config` when it differs from `stored` (the run's) in a run-defining setting."""
        changed = config.differences(stored)
        if changed:
            name, there, now = changed[0]
            raise RunDirError(
                f"--run_dir={self.path} holds a run with different settings ({len(changed)} "
                f"differ; --{name}: {_shown(there)} there, {_shown(now)} now); rerun with its "
                f"flags (--flagfile={self.flags_txt}) to resume, pass --overwrite to start "
                "over, or choose another --run_dir")

    def clear(self):
        """Deletes what a run wrote here, and nothing else; returns the paths of the user's
        files that stay (relative to the run dir)."""
        return [path for path in owned.remove(self.path, _WRITTEN, _FOLDERS)
                if path != LOCK_NAME]

    def write_settings(self, config, flagfile_text):
        """Writes config.json and flags.txt (the flags as the user gave them)."""
        os.makedirs(self.path, exist_ok=True)
        atomic.write_json(self.config_json, config.to_dict())
        atomic.write_text(self.flags_txt, flagfile_text)

    def forget_settings(self):
        """Removes config.json and flags.txt of a start that was refused before it ran."""
        for path in (self.config_json, self.flags_txt):
            if os.path.exists(path):
                os.remove(path)

    def record_distribution(self, distribution):
        """Adds how the run is spread over devices (strategy, replicas, per-replica batch) to
        config.json; not a setting, so a resume under another strategy replaces it."""
        with open(self.config_json, encoding="utf-8") as f:
            values = json.load(f)
        atomic.write_json(self.config_json, {**values, "distribution": distribution})

    def read_metrics(self):
        """The run's test records, oldest first; a torn last line (a killed writer) is dropped."""
        if not os.path.exists(self.metrics_jsonl):
            return []
        with open(self.metrics_jsonl, "rb") as f:
            lines = [line for line in f.read().split(b"\n") if line.strip()]
        entries = []
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line.decode("utf-8"))
                if not isinstance(entry, dict):
                    raise ValueError("not a record")
                entries.append(entry)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError among them
                if number == len(lines):
                    break
                raise RunDirError(f"{self.metrics_jsonl}:{number} is not a JSON line; "
                                  "delete that line to keep the rest") from None
        return entries

    def metrics_torn(self):
        """Whether metrics.jsonl ends in a torn line (its writer killed, or still writing,
        mid-line), which `read_metrics` drops."""
        if not os.path.exists(self.metrics_jsonl):
            return False
        with open(self.metrics_jsonl, "rb") as f:
            f.seek(0, os.SEEK_END)
            if not f.tell():
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def append_metrics(self, entry):
        """Appends one record as one whole line, flushed to disk."""
        with open(self.metrics_jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_metrics_until(self, iteration):
        """Drops the records past `iteration` (a resume restarts from there); returns the rest."""
        entries = [e for e in self.read_metrics() if e["iteration"] <= iteration]
        atomic.write_text(self.metrics_jsonl, "".join(json.dumps(e) + "\n" for e in entries))
        return entries

    def write_summary(self, summary):
        atomic.write_json(self.summary_json, summary)

    def read_summary(self):
        """summary.json as last written ({} before the first test)."""
        try:
            with open(self.summary_json, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return {}

    def mark_pruned(self, record):
        """Notes in summary.json that a tuner stopped this run for falling behind (`record`:
        where and by what), so report shows it; the lock keeps training from writing
        meanwhile, and a later test of a resumed run writes the summary afresh."""
        with self.lock():
            self.write_summary({**self.read_summary(), "pruned": record})

    def checkpoint_iteration(self):
        """The iteration of the newest checkpoint (0 when there is none): how far the run
        trained, between tests too."""
        names = os.listdir(self.checkpoints) if os.path.isdir(self.checkpoints) else []
        numbers = [int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)\.index$").match, names)
                   if m]
        return max(numbers, default=0)

    def finished(self):
        """Whether training ended here: its last summary.json, written after the export, says
        so. Only the records are read, so a copy of them (config, flags, metrics, summary,
        without checkpoints or export, as results/ keeps them in git) counts as finished."""
        try:
            with open(self.summary_json, encoding="utf-8") as f:
                return json.load(f).get("finished") is True
        except (OSError, json.JSONDecodeError):
            return False


def _shown(value):
    return "unset" if value is None else value


def _flagfile_settings(path):
    """{setting: value} of a run's flags.txt, the flags' defaults for what it lacks."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise RunDirError(f"{path} cannot be read ({e.strerror}); restore it") from None
    return settings.parse_flag_lines(
        lines, config_lib.declared(),
        lambda message: config_lib.ConfigError(f"{path}: {message}; fix the flagfile"))


def stored_config(run_dir, manifest=None):
    """The `RunConfig` of an existing run: its config.json, or for a run from before
    config.json, its flags.txt resolved against its dataset's manifest."""
    run = RunDir(run_dir)
    stored = run.read_config()
    if stored is not None:
        return stored
    if not os.path.isfile(run.flags_txt):
        raise records.DataError(f"{run.config_json} not found: --run_dir must be a run "
                                "directory made by `python -m kerasbn.train`")
    values = _flagfile_settings(run.flags_txt)
    if manifest is None:
        manifest = records.read_manifest(values["data_dir"], check_files=False)
    return config_lib.resolve(values, manifest, records.manifest_path(values["data_dir"]))


def run_settings(run_dir):
    """{setting: value} of a run for reports: its config.json, else its flags.txt (a partial
    flags.txt gives the flags' defaults for what it lacks); {} when it has neither."""
    run = RunDir(run_dir)
    stored = run.read_config()
    if stored is not None:
        return config_lib.flat(stored.to_dict())
    if not os.path.isfile(run.flags_txt):
        return {}
    return _flagfile_settings(run.flags_txt)
