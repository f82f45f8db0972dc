"""Checkpoints of a run (weights, optimizer state, iteration, wall time, data position) and
--weights loading.

tf.train.CheckpointManager writes the data files (through a `_temp` directory) before it
updates its index, so an interrupted save leaves the previous checkpoint as the newest
complete one; `remove_partial` clears what such a save left behind.
"""

import glob
import json
import os
import shutil
import sys

import tensorflow as tf

from kerasbn.data import records
from kerasbn.nn import models
from kerasbn.nn.models import CLASSIFIER
from kerasbn.runs import export_layout, network
from kerasbn.runs.run_dir import RunDir, stored_config
from kerasbn.utils import faults


def make_manager(run, model, wall_time, position, keep):
    """A manager over the checkpoints of RunDir `run`, numbering them by iteration."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                     wall_time=wall_time, position=position)
    return tf.train.CheckpointManager(checkpoint, run.checkpoints, max_to_keep=max(1, keep))


def make_best_manager(run, model):
    """A manager keeping the weights of the run's best test (RunDir `run`'s best/)."""
    return tf.train.CheckpointManager(tf.train.Checkpoint(model=model), run.best,
                                      max_to_keep=1)


def save(manager, iteration):
    """Saves checkpoint `iteration` (the `checkpoint` fault point lies inside the write)."""
    options = tf.train.CheckpointOptions(
        experimental_write_callbacks=[lambda path: faults.point("checkpoint", iteration)])
    manager.save(checkpoint_number=iteration, options=options)


def restore(manager):
    """Restores the newest intact checkpoint of `manager` into its objects; returns its
    prefix (and warns of each newer one that is damaged, such as a file cut short by a full
    disk or a copy).

    A checkpoint from before the data position was saved restores all but it (the caller
    then derives the position from the iteration).
    """
    def read(prefix):
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(prefix)}
        checkpoint = manager.checkpoint
        if "position" not in saved:
            checkpoint = tf.train.Checkpoint(model=checkpoint.model,
                                             optimizer=checkpoint.optimizer,
                                             wall_time=checkpoint.wall_time)
        checkpoint.restore(prefix).assert_existing_objects_matched()

    return _newest_intact(manager.checkpoints, read)


def _newest_intact(prefixes, read):
    """The newest of `prefixes` (oldest first) that `read(prefix)` restores without a
    damaged-file error; a warning line names each newer one. DataError when none is intact."""
    damaged = []
    for prefix in reversed(prefixes):
        try:
            read(prefix)
        # TensorFlow's checkpoint reader reports a cut-short data file as IndexError ("Read
        # less bytes than requested"), a missing one as an OpError, others as RuntimeError.
        except (tf.errors.OpError, IndexError, RuntimeError) as e:
            damaged.append(prefix)
            print(f"warning: checkpoint {prefix} is damaged ({_first_line(e)}); trying the one "
                  "before it", file=sys.stderr, flush=True)
            continue
        if damaged:
            print(f"warning: restored {prefix}, the newest intact checkpoint", file=sys.stderr,
                  flush=True)
        return prefix
    raise records.DataError(f"every checkpoint is damaged ({', '.join(damaged)}); restore "
                            "the run's checkpoints/ from a copy, or start over with --overwrite")


def _first_line(error):
    message = getattr(error, "message", None) or str(error)
    return message.strip().splitlines()[0]


def remove_partial(run):
    """Deletes the temporary directories a killed checkpoint write left in RunDir `run`."""
    for path in glob.glob(os.path.join(glob.escape(run.checkpoints), "*_temp")):
        shutil.rmtree(path, ignore_errors=True)


def restore_latest(run, model, best=False):
    """Restores the model's weights from RunDir `run`'s newest intact checkpoint (its best
    test's, with `best`); returns its prefix, None when there is none."""
    directory = run.best if best else run.checkpoints
    state = tf.train.get_checkpoint_state(directory)
    if not state:
        return None
    return _newest_intact(list(state.all_model_checkpoint_paths),
                          lambda prefix: tf.train.Checkpoint(model=model).read(
                              prefix).expect_partial())


def _checkpoint_in(path):
    """The newest checkpoint prefix found at `path` (a run dir, a checkpoint dir or prefix)."""
    for directory in (RunDir(path).checkpoints, path):
        if os.path.isdir(directory):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def _run_of(path):
    """The run directory --weights lies in (itself, or above its checkpoints/, best/ or a
    checkpoint prefix), or None."""
    for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path)),
                      os.path.dirname(os.path.dirname(os.path.dirname(path)))):
        if candidate and RunDir(candidate).holds_run():
            return candidate
    return None


def _weights(named):
    """{name: value} of a network's (name, variable) pairs, without random generators'
    states (Dropout's seed, which is no weight)."""
    return {name: v for name, v in named if "seed_generator" not in name}


def _saved_model_weights(path):
    """({variable path: value}, class count) of an exported SavedModel's network (its face
    detector's variables, listed in the marker, left out)."""
    try:
        with open(os.path.join(path, export_layout.MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        marker = {}
    marker = marker if isinstance(marker, dict) else {}
    detector = set(marker.get(export_layout.DETECTOR_VARIABLES, []))
    loaded = tf.saved_model.load(path)
    named = ((v.name.split(":")[0], v) for v in getattr(loaded, "variables", []))
    return _weights((name, v) for name, v in named if name not in detector), marker.get(
        "classes")


def _run_weights(run_dir, prefix):
    """({variable path: value}, class count) of the network of `run_dir` at checkpoint
    `prefix`, rebuilt from the run's own config, so variables are known by name."""
    config = stored_config(run_dir)
    # A --shard_classes run's centres are its shards', restored whole on this one device.
    donor = network.build_network(config) if config.shard_classes else \
        models.build_from(config.network())
    try:
        tf.train.Checkpoint(model=donor).read(prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise records.DataError(f"--weights={run_dir}: its checkpoint {prefix} does not fit "
                                f"the run's own config.json ({str(e).splitlines()[0]}); "
                                "restore the run's files") from None
    return _weights((v.path, v) for v in donor.variables), config.num_classes


def _load_by_name(model, donor, classes_there, where, source):
    """Assigns the donor's {path: value} (from --weights=`where`, read at `source`) to
    `model`'s variables of the same names. Every variable on either side but the
    classifier's must find its match, by name and shape (otherwise DataError naming the
    first that does not); the classifier comes along when it matches too. Returns what was
    loaded, in words."""
    mine = _weights((v.path, v) for v in model.variables)
    is_classifier = lambda name: name.split("/")[0] == CLASSIFIER
    for name, variable in mine.items():
        if is_classifier(name):
            continue
        if name not in donor:
            raise records.DataError(f"--weights={where} is another network: its variables "
                                    f"have no {name} {tuple(variable.shape)}; give a run of "
                                    "the same --model, --norm, --widths and --embedding")
        if tuple(donor[name].shape) != tuple(variable.shape):
            raise records.DataError(f"--weights={where} is another network: {name} is "
                                    f"{tuple(donor[name].shape)} there, {tuple(variable.shape)}"
                                    " here; give a run of the same --model, --widths and "
                                    "--embedding_dim")
    for name, value in donor.items():
        if not is_classifier(name) and name not in mine:
            raise records.DataError(f"--weights={where} is another network: it has {name} "
                                    f"{tuple(value.shape)}, which this one lacks; give a run "
                                    "of the same --model, --norm and --embedding")
    classifier = {n: v for n, v in mine.items() if is_classifier(n)}
    # A --shard_classes network's centres are no Keras variables: they never come along.
    whole = bool(classifier) and all(n in donor and tuple(donor[n].shape) == tuple(v.shape)
                                     for n, v in classifier.items()) and len(classifier) == sum(
        1 for n in donor if is_classifier(n))
    for name, variable in mine.items():
        if whole or not is_classifier(name):
            variable.assign(tf.cast(donor[name], variable.dtype))
    if whole:
        return f"{source}: every layer ({len(mine)} variables)"
    here = model.get_layer(CLASSIFIER).units
    there = "another class count" if classes_there is None else f"{classes_there} classes"
    return (f"{source}: every layer but the classifier ({len(mine) - len(classifier)} "
            f"variables; {there} there, {here} here; the classifier starts fresh)")


def load_weights(model, path):
    """Initialises `model` from another run, one of its checkpoints, or an exported
    SavedModel (--weights); returns what it loaded, in words.

    Only weights are taken, not the optimizer state or iteration: a new run starts from them.
    Variables are matched by name and shape, the donor rebuilt from its run's config: every
    one but the classifier's must match (a network of another --model, --norm or neck is
    refused, naming the first variable that differs). A donor trained on other identities
    gives every layer but the classifier, which starts fresh. A bare checkpoint with no run
    around it loads whole or not at all.
    """
    if not os.path.exists(path) and not tf.io.gfile.exists(path + ".index"):
        raise records.DataError(f"--weights={path} does not exist; give a run dir, a "
                                "checkpoint or an exported SavedModel")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        donor, classes = _saved_model_weights(path)
        return _load_by_name(model, donor, classes, path, path)
    prefix = _checkpoint_in(path)
    if prefix is None:
        raise records.DataError(f"--weights={path} holds nothing loadable: no checkpoint and "
                                "no saved_model.pb; give a run dir, a checkpoint or an "
                                "exported SavedModel")
    run_dir = _run_of(path)
    if run_dir is not None:
        donor, classes = _run_weights(run_dir, prefix)
        return _load_by_name(model, donor, classes, path, prefix)
    # A Keras model tracks its optimizer, so reading restores that too; put it back.
    fresh = [(v, v.numpy()) for v in getattr(model.optimizer, "variables", [])]
    mismatch = None
    try:
        status = tf.train.Checkpoint(model=model).read(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        # A variable of another shape fails while reading, before any check can.
        mismatch = str(e).splitlines()[0]
    finally:
        for v, value in fresh:
            v.assign(value)
    if mismatch:
        raise records.DataError(f"--weights={path}: the checkpoint {prefix} does not fit "
                                f"--model and its flags ({mismatch}); use a run of the "
                                "same network")
    status.expect_partial()
    return f"{prefix}: every layer"
