"""Checkpoints of a run (weights, optimizer state, iteration, wall time, data position) and
--weights loading.

tf.train.CheckpointManager writes the data files (through a `_temp` directory) before it
updates its index, so an interrupted save leaves the previous checkpoint as the newest
complete one; `remove_partial` clears what such a save left behind.
"""

import glob
import os
import shutil

import tensorflow as tf

from kerasbn.data import records
from kerasbn.nn.models import CLASSIFIER
from kerasbn.training.run_dir import RunDir
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
    """Restores the newest checkpoint of `manager` into its objects; returns its prefix.

    A checkpoint from before the data position was saved restores all but it (the caller
    then derives the position from the iteration).
    """
    prefix = manager.latest_checkpoint
    saved = {name.split("/")[0] for name, _ in tf.train.list_variables(prefix)}
    checkpoint = manager.checkpoint
    if "position" not in saved:
        checkpoint = tf.train.Checkpoint(model=checkpoint.model, optimizer=checkpoint.optimizer,
                                         wall_time=checkpoint.wall_time)
    checkpoint.restore(prefix).assert_existing_objects_matched()
    return prefix


def remove_partial(run):
    """Deletes the temporary directories a killed checkpoint write left in RunDir `run`."""
    for path in glob.glob(os.path.join(glob.escape(run.checkpoints), "*_temp")):
        shutil.rmtree(path, ignore_errors=True)


def restore_latest(run, model, best=False):
    """Restores the model's weights from RunDir `run`'s newest checkpoint (its best test's,
    with `best`); returns its prefix."""
    latest = tf.train.latest_checkpoint(run.best if best else run.checkpoints)
    if latest:
        tf.train.Checkpoint(model=model).read(latest).expect_partial()
    return latest


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


def _class_axis(model):
    """The axis of the classifier's kernel that runs over classes ([features, K] for the
    softmax's Dense, [K, features] for a margin head's centres)."""
    return getattr(model.get_layer(CLASSIFIER), "class_axis", 1)


def _source_classes(prefix, model):
    """The class count of the network saved at checkpoint `prefix`: the class axis of its one
    variable shaped like the classifier's kernel, or None when that is unclear."""
    axis = _class_axis(model)
    width = model.get_layer(CLASSIFIER).kernel.shape[1 - axis]
    found = {shape[axis] for _, shape in tf.train.list_variables(prefix)
             if len(shape) == 2 and shape[1 - axis] == width}
    return found.pop() if len(found) == 1 else None


def _copy_all_but_the_classifier(source, model):
    """Assigns `source`'s variables (a list in `model.variables`' order, from a network with
    another class count) to `model`'s, except the classifier's; False when they differ in
    more than the classifier."""
    classifier = {id(v) for v in model.get_layer(CLASSIFIER).variables}
    keep = [i for i, v in enumerate(model.variables) if id(v) not in classifier]
    if len(source) != len(model.variables) or any(
            tuple(source[i].shape) != tuple(model.variables[i].shape) for i in keep):
        return False
    for i in keep:
        model.variables[i].assign(source[i])
    return True


def load_weights(model, path, build=None):
    """Initialises `model` from another run's checkpoint or exported SavedModel (--weights);
    returns what it did, in words.

    Only weights are taken, not the optimizer state or iteration: a new run starts from them.
    A network trained on other identities (another class count) gives every layer but the
    classifier, which starts fresh; `build(num_classes)` makes the donor network then.
    """
    if not os.path.exists(path) and not tf.io.gfile.exists(path + ".index"):
        raise records.DataError(f"--weights={path} does not exist; give a run dir, a "
                                "checkpoint or an exported SavedModel")
    here = model.get_layer(CLASSIFIER).kernel.shape[_class_axis(model)] \
        if build is not None else None
    prefix = _checkpoint_in(path)
    if prefix:
        there = _source_classes(prefix, model) if build is not None else None
        if there not in (None, here):
            donor = build(there)
            tf.train.Checkpoint(model=donor).read(prefix).expect_partial()
            if _copy_all_but_the_classifier(donor.variables, model):
                return (f"{prefix}: every layer but the classifier ({there} classes there, "
                        f"{here} here; the classifier starts fresh)")
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
        return prefix
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        source = list(getattr(tf.saved_model.load(path), "variables", []))
        shapes = lambda vs: [tuple(v.shape) for v in vs]
        if shapes(source) == shapes(model.variables):
            for v, w in zip(model.variables, source):
                v.assign(w)
            return path
        if build is not None and _copy_all_but_the_classifier(source, model):
            return (f"{path}: every layer but the classifier (another class count there, "
                    f"{here} here; the classifier starts fresh)")
        raise records.DataError(f"--weights={path}: the SavedModel's variables "
                                "do not fit --model and its flags; use an export of the "
                                "same network")
    raise records.DataError(f"--weights={path} holds nothing loadable: no checkpoint and no "
                            "saved_model.pb; give a run dir, a checkpoint or an exported "
                            "SavedModel")
