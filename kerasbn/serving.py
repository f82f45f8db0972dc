"""A trained network as a function of uint8 faces, from a run's checkpoint or from its
exported SavedModel, so evaluation (and serving) treats both the same.

The function takes a uint8 batch [N, H, W, C], normalises it with the training split's
mean/std inside the graph, and returns float32 `logits`, `probabilities` (softmax) and
`embedding` (the pooled feature, L2-normalised, for verification by cosine).
"""

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from kerasbn import checkpoints, optimizers, records, train_flags
from kerasbn.run_dir import RunDir

# Written into every export: what a photo must be made into before the network sees it, and
# the mark that lets a later export replace this one and nothing else.
MARKER = "kerasbn_export.json"


@dataclasses.dataclass(frozen=True)
class Served:
    """A network ready to run on uint8 faces, with what its input must be.

    `serve(images)` returns {logits, probabilities, embedding}. `data_dir` and `manifest`
    are the training dataset's (None for a SavedModel); `checkpoint` the prefix restored;
    `verify_flip` whether the run verified with mirrored embeddings."""
    source: str
    serve: object
    image_size: tuple
    channels: int
    resize_mode: str
    classes: int
    data_dir: str = None
    manifest: dict = None
    checkpoint: str = None
    verify_flip: bool = False


def serving_model(model, manifest):
    """A Keras model: uint8 images -> {logits, probabilities, embedding}."""
    height, width = manifest["image_size"]
    mean = np.asarray(manifest["mean"], np.float32)
    std = np.asarray(manifest["std"], np.float32)
    images = keras.Input((height, width, manifest["channels"]), dtype="uint8", name="images")
    x = (keras.ops.cast(images, "float32") - mean) / std
    features = keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])
    embedding, logits = features(x)
    embedding = keras.ops.cast(embedding, "float32")
    logits = keras.ops.cast(logits, "float32")
    return keras.Model(images, {
        "logits": logits,
        "probabilities": keras.ops.softmax(logits),
        "embedding": embedding / keras.ops.maximum(
            keras.ops.norm(embedding, axis=-1, keepdims=True), 1e-12)})


def input_spec(manifest):
    """What the exported network expects, as MARKER records it (resize_mode None for a
    dataset built before manifests stored it)."""
    return {"classes": len(manifest["class_names"]), "image_size": list(manifest["image_size"]),
            "channels": manifest["channels"], "resize_mode": manifest.get("resize_mode")}


def restore_run(run_dir, best=False, check_files=False):
    """(config, manifest, model, checkpoint prefix) of a training run: its network rebuilt
    from its config and restored from its newest checkpoint (its best test's, with `best`).
    `check_files` also checks that the dataset's shards are there (to read them)."""
    run = RunDir(run_dir)
    config = train_flags.stored_config(run_dir)
    manifest = records.read_manifest(config.data_dir, check_files=check_files)
    keras.mixed_precision.set_global_policy(config.precision)
    model = optimizers.build_and_compile(config)
    prefix = checkpoints.restore_latest(run, model, best)
    if not prefix:
        raise records.DataError(f"{run.best if best else run.checkpoints} holds no "
                                "checkpoint; train the run first")
    return config, manifest, model, prefix


def from_run(run_dir, best=False):
    """The run's newest (or best) checkpoint as a `Served`."""
    config, manifest, model, prefix = restore_run(run_dir, best, check_files=True)
    spec = input_spec(manifest)
    serve = tf.function(serving_model(model, manifest), reduce_retracing=True)
    return Served(run_dir, lambda images: serve(images, training=False),
                  tuple(spec["image_size"]), spec["channels"], spec["resize_mode"],
                  spec["classes"], config.data_dir, manifest, prefix, config.verify_flip)


def from_saved_model(path):
    """A SavedModel written by kerasbn.export as a `Served`."""
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        raise records.DataError(f"{path} is not a SavedModel written by kerasbn.export (no "
                                f"{MARKER}); export a run with python -m kerasbn.export")
    with open(marker, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        loaded = tf.saved_model.load(path)
        outputs = loaded.signatures["serving_default"].structured_outputs
    except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
        raise records.DataError(f"{path}: cannot load the SavedModel "
                                f"({str(e).strip().splitlines()[0]}); export it again") from None
    if "logits" not in outputs:
        raise records.DataError(f"{path} was exported by an older kerasbn; export the run "
                                "again with python -m kerasbn.export")
    # The function must hold `loaded`: its variables die with it.
    return Served(path, lambda images: loaded.signatures["serving_default"](images=images),
                  tuple(spec["image_size"]), spec["channels"], spec.get("resize_mode"),
                  spec["classes"])
