"""A trained network as functions of face photos, from a run's checkpoint or from its
exported SavedModel, so evaluation, prediction and serving treat both the same.

`serving_functions` are the export's signatures: `serving_default` takes a uint8 batch of
any height and width with 1 or 3 channels and applies the dataset's preprocessing inside
(Pillow's gray, the manifest's resize_mode, the training split's mean/std), returning float32
`logits`, `probabilities`, the top-k `labels` and `names` and the L2-normalised `embedding`;
`embed` returns only the embedding; `serve_bytes` takes encoded JPEG/PNG/GIF/BMP strings;
`metadata` returns the class names and the verification threshold chosen on the holdout
pairs (NaN when the dataset had none); an imported network of several outputs also has
`serving_raw`, each of them by name (its Caffe blob's, made a Keras name).
"""

import dataclasses
import json
import os

import keras
import tensorflow as tf

from kerasbn.data import preprocess, records
from kerasbn.faces import aligner, detector_defaults
from kerasbn.nn import caffe_layers
from kerasbn.runs import checkpoints, export_layout, network
from kerasbn.runs.run_dir import RunDir, stored_config


@dataclasses.dataclass(frozen=True)
class Served:
    """A network ready to run on uint8 faces, with what its input must be.

    `serve(images)` returns the `serving_default` outputs. `data_dir` and `manifest`
    are the training dataset's (None for a SavedModel); `checkpoint` the prefix restored;
    `verify_flip` how the run verified: False, or how it summed mirrored embeddings."""
    source: str
    serve: object
    image_size: tuple
    channels: int
    resize_mode: str
    classes: int
    data_dir: str = None
    manifest: dict = None
    checkpoint: str = None
    verify_flip: bool | str = False


TOP_K = 5


def serving_functions(model, manifest, threshold=None, detector=None):
    """{signature name: (tf.function, input signature)} of the training `model`; with
    `detector` (`faces.detector.graph()`'s function), also `serve_photo`: every face of one
    encoded photo found, aligned by `aligner.align` (its `crops`) and served."""
    height, width = manifest.image_size
    channels = manifest.channels
    names = tf.constant(manifest.class_names)
    k = min(TOP_K, manifest.num_classes)
    # Two outputs always: a network without a classifier gives its embedding twice.
    features = keras.Model(model.inputs, [model.get_layer("embedding").output,
                                          model.outputs[0]])

    def prepare(images):
        return prepared(images, manifest)

    def outputs(x):
        embedding, logits = features(x, training=False)
        embedding, logits = tf.cast(embedding, tf.float32), tf.cast(logits, tf.float32)
        unit = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-24)
        # The raw embedding's length: the field's template protocols (IJB) pool raw
        # embeddings, whose norm weighs each image, and unit * norm gives them back.
        embedded = {"embedding": unit, "embedding_norm": tf.norm(embedding, axis=-1)}
        if not manifest.num_classes:  # an imported embedding network, no classifier
            return embedded
        probabilities = tf.nn.softmax(logits)
        labels = tf.math.top_k(probabilities, k).indices
        return {"logits": logits, "probabilities": probabilities, "labels": labels,
                "names": tf.gather(names, labels), **embedded}

    def served(x, run=outputs):
        """`run`'s outputs of prepared images; for an empty batch, empty outputs of the right
        shapes (the network cannot take no image, so it runs on one blank one, dropped)."""
        count = tf.shape(x)[0]
        x = tf.cond(count > 0, lambda: x,
                    lambda: tf.zeros([1, height, width, channels], tf.float32))
        return {key: value[:count] for key, value in run(x).items()}

    def prepare_any(images):
        return tf.cond(tf.shape(images)[0] > 0, lambda: prepare(images),
                       lambda: tf.zeros([0, height, width, channels], tf.float32))

    images = [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")]
    serve = tf.function(lambda images: served(prepare_any(images)))
    raw = raw_outputs(model)
    embed = tf.function(lambda images: {"embedding": served(prepare_any(images))["embedding"]})

    @tf.function
    def serve_bytes(encoded):
        decoded = tf.map_fn(lambda one: prepare(preprocess.decode(one, channels))[0], encoded,
                            fn_output_signature=tf.TensorSpec([height, width, channels]))
        return served(decoded)

    @tf.function
    def serve_photo(encoded):
        photo = preprocess.decode(encoded, 3)[0]
        photo = tf.cond(tf.shape(photo)[-1] == 1, lambda: tf.tile(photo, [1, 1, 3]),
                        lambda: photo)
        boxes, confidence, landmarks = detector(photo, detector_defaults.MIN_FACE_SIZE,
                                                detector_defaults.MIN_CONFIDENCE)

        crops = tf.cond(tf.shape(boxes)[0] > 0,
                        lambda: aligner.align(photo, landmarks, height, width, channels),
                        lambda: tf.zeros([0, height, width, channels], tf.uint8))
        return {"boxes": boxes, "confidence": confidence, "landmarks": landmarks,
                "crops": crops, **served(prepare_any(crops))}

    stored = float("nan") if threshold is None else float(threshold)
    metadata = tf.function(lambda: {"class_names": names,
                                    "threshold": tf.constant(stored, tf.float32)})
    return {"serving_default": (serve, images), "embed": (embed, images),
            "serve_bytes": (serve_bytes, [tf.TensorSpec([None], tf.string, name="encoded")]),
            "metadata": (metadata, []),
            **({"serving_raw": (tf.function(lambda images: served(prepare_any(images), raw)),
                                images)} if raw else {}),
            **({"serve_photo": (serve_photo, [tf.TensorSpec([], tf.string, name="photo")])}
               if detector is not None else {})}


def prepared(images, manifest):
    """A uint8 batch [N, H, W, 1 or 3] made what the network of `manifest` takes: its
    channels, its size (by the dataset's resize mode) and the training split's mean/std."""
    height, width = manifest.image_size
    # A batch of 2 or 4 channels would otherwise reach the kernels, which abort.
    check = tf.debugging.Assert(
        tf.reduce_any(tf.equal(tf.shape(images)[-1], [1, 3])),
        ["images must be a uint8 batch [N, H, W, 1 or 3]; got shape", tf.shape(images)])
    with tf.control_dependencies([check]):
        gray = preprocess.to_channels(images, manifest.channels)
    # A non-square network (112x96 Caffe nets) takes photos stretched to its shape.
    mode = input_spec(manifest)["resize_mode"] if height == width else "stretch"
    sized = preprocess.resize(gray, height, mode, width)
    sized = tf.ensure_shape(sized, [None, height, width, manifest.channels])
    return (sized - tf.constant(manifest.mean, tf.float32)) / tf.constant(manifest.std,
                                                                         tf.float32)


def raw_outputs(model):
    """The function of prepared images giving every output of an import of several (its
    CaffeOutput layers, after the face output) by name, or None for any other network."""
    marked = [layer for layer in model.layers if isinstance(layer, caffe_layers.CaffeOutput)]
    if not marked:
        return None
    every = keras.Model(model.inputs, [layer.output for layer in marked])

    def run(x):
        return {layer.key: tf.cast(value, tf.float32)
                for layer, value in zip(marked, every(x, training=False))}
    return run


def input_spec(manifest):
    """What the exported network expects, as the export's marker records it. A dataset built
    before manifests stored resize_mode was cropped (both converters' default then)."""
    return {"classes": manifest.num_classes, "image_size": list(manifest.image_size),
            "channels": manifest.channels,
            "resize_mode": manifest.resize_mode}


def restore_run(run_dir, best=False, check_files=False):
    """(config, manifest, model, checkpoint prefix) of a training run: its network rebuilt
    from its config and restored from its newest checkpoint (its best test's, with `best`).
    `check_files` also checks that the dataset's shards are there (to read them)."""
    run = RunDir(run_dir)
    config = stored_config(run_dir)
    manifest = records.read_manifest(config.data_dir, check_files=check_files)
    keras.mixed_precision.set_global_policy(config.precision)
    model = network.build_and_compile(config)
    prefix = checkpoints.restore_latest(run, model, best)
    if not prefix:
        raise records.DataError(f"{run.best if best else run.checkpoints} holds no "
                                "checkpoint; train the run first")
    return config, manifest, network.servable(config, model), prefix


def from_run(run_dir, best=False):
    """The run's newest (or best) checkpoint as a `Served`."""
    config, manifest, model, prefix = restore_run(run_dir, best, check_files=True)
    spec = input_spec(manifest)
    serve, _ = serving_functions(model, manifest)["serving_default"]
    return Served(run_dir, serve,
                  tuple(spec["image_size"]), spec["channels"], spec["resize_mode"],
                  spec["classes"], config.data_dir, manifest, prefix, config.flip())


def load_saved_model(path):
    """(the loaded SavedModel, its marker's spec) of an export by kerasbn.export; DataError
    for anything else."""
    marker = os.path.join(path, export_layout.MARKER)
    if not os.path.isfile(marker):
        raise records.DataError(f"{path} is not a SavedModel written by kerasbn.export (no "
                                f"{export_layout.MARKER}); export a run with python -m "
                                "kerasbn.export")
    try:
        with open(marker, encoding="utf-8") as f:
            spec = json.load(f)
        _check_spec(spec)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise records.DataError(f"{marker} is malformed ({str(e).splitlines()[0]}); export the "
                                "run again with python -m kerasbn.export") from None
    try:
        loaded = tf.saved_model.load(path)
        signatures = set(loaded.signatures)
    # IndexError: TensorFlow's checkpoint reader on a truncated variables file.
    except (OSError, ValueError, KeyError, IndexError, tf.errors.OpError) as e:
        raise records.DataError(f"{path}: cannot load the SavedModel "
                                f"({str(e).strip().splitlines()[0]}); export it again") from None
    if not {"serving_default", "embed", "metadata"} <= signatures:
        raise records.DataError(f"{path} was exported by an older kerasbn; export the run "
                                "again with python -m kerasbn.export")
    return loaded, spec


def _check_spec(spec):
    """Raises ValueError unless `spec` is an input_spec as an export writes it."""
    if not isinstance(spec, dict):
        raise ValueError("not a JSON object")
    for key, kind in (("classes", int), ("image_size", list), ("channels", int),
                      ("resize_mode", str)):
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"'{key}' missing or not a {kind.__name__}")
    if len(spec["image_size"]) != 2:
        raise ValueError("'image_size' is not [height, width]")


def from_saved_model(path):
    """A SavedModel written by kerasbn.export as a `Served`."""
    loaded, spec = load_saved_model(path)
    # The function must hold `loaded`: its variables die with it.
    return Served(path, lambda images: loaded.signatures["serving_default"](images=images),
                  tuple(spec["image_size"]), spec["channels"], spec["resize_mode"],
                  spec["classes"])
