"""Benchmarks, each reported as a ratio against a reference measured in the same run.

    python -m kerasbn.bench --bench=input --data_dir=data/synth [--data_dir=data/synth_png]
        input-pipeline images/s against bare TFRecord reading of the same shards.
    python -m kerasbn.bench --bench=separability --data_dir=data/synth
        test accuracy of a linear softmax classifier on pixels against a small CNN.
    python -m kerasbn.bench --bench=train [--model=bn --num_classes=14700] [--data_dir=D]
        training images/s of a network at each --precisions (and --compile=plain,xla) on one
        cached batch, as ratios to the first; with --data_dir also on that dataset's real
        input pipeline in the same run, so whether training is input-bound is measured.
    python -m kerasbn.bench --bench=norms
        training step time with each --norms at each --precisions, as ratios to the first.
    python -m kerasbn.bench --bench=peer [--norms=keras,nvidia]
        training images/s of the baseline and BN networks on one cached batch against the same
        networks in PyTorch (kerasbn.benchmarks.pytorch_peer; `pip install torch`),
        alternating rounds, and what BN costs each: the BN network's step time per image over the baseline's.
    python -m kerasbn.bench --bench=profile [--model=bn --norms=keras,none --batches=4]
        where a training step's time goes: busy seconds per op type from TensorFlow's
        profiler (the first --precisions), for each norm.
    python -m kerasbn.bench --bench=run [--run_flags=launch/quickstart/bn.flags]
        a training run's images/s against its step's on one cached batch
        (kerasbn.benchmarks.whole_run).
    python -m kerasbn.bench --bench=heads [--head=arcface --class_counts=14700,1000000]
        the BN network's training step and peak memory with a margin head at each class count,
        the full classifier against Partial FC's --sample_fractions
        (kerasbn.benchmarks.margin_heads).
    python -m kerasbn.bench --bench=scale --data_dir=data/synth_30k --data_dir=data/synth_2940k
        the input pipeline's peak memory, shuffle quality and time to the first training
        step on each dataset, against the first (kerasbn.benchmarks.scaling).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from kerasbn.benchmarks import margin_heads, scaling, timing, whole_run
from kerasbn.data import pipeline, records
from kerasbn.flags import cli
from kerasbn.nn import heads, models, norms
from kerasbn.training import runtime

# kerasbn's dtype policy beside the PyTorch setting it is measured against.
PEER_PRECISIONS = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                   "mixed_float16": "float16"}


def _images_per_second(dataset, batches):
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += int(tf.shape(tf.nest.flatten(next(iterator))[0])[0])
    return images / (time.perf_counter() - start)


def bare_reading(data_dir, manifest, batch_size):
    """The reference: the same shards read as bare records, batched, nothing parsed."""
    files = records.split_files(data_dir, manifest, "train")
    dataset = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        lambda f: tf.data.TFRecordDataset(f, pipeline.compression(manifest)),
        cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def bench_input(data_dir, batch_size, batches, repeats):
    """Returns {encoding, bare, pipeline, ratio}: best-of-`repeats` images/s, interleaved."""
    manifest = records.read_manifest(data_dir)
    bare, piped = [], []
    for _ in range(repeats):
        bare.append(_images_per_second(bare_reading(data_dir, manifest, batch_size), batches))
        piped.append(_images_per_second(
            pipeline.train_dataset(data_dir, manifest, batch_size, mirror=True), batches))
    return {"encoding": manifest["encoding"], "bare": max(bare), "pipeline": max(piped),
            "ratio": max(piped) / max(bare)}


def _load_split(data_dir, manifest, split):
    images, labels = [], []
    for x, y in pipeline.test_dataset(data_dir, manifest, 1024, split=split):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _small_cnn(input_shape, num_classes):
    x = inputs = keras.Input(input_shape)
    for width in (32, 64, 96):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="small_cnn")


def _linear(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    logits = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits, name="linear")


def separability(data_dir, epochs, batch_size=64, seed=0):
    """Test top-1 of a linear classifier on pixels and of a small CNN, same data and budget.

    A dataset worth training face networks on must leave the linear model clearly behind.
    """
    manifest = records.read_manifest(data_dir)
    x_train, y_train = _load_split(data_dir, manifest, "train")
    x_test, y_test = _load_split(data_dir, manifest, "test")
    num_classes = len(manifest["class_names"])
    result = {}
    for build in (_linear, _small_cnn):
        keras.utils.set_random_seed(seed)
        model = build(x_train.shape[1:], num_classes)
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
        result[model.name] = float(model.evaluate(x_test, y_test, verbose=0)[1])
    return result


def peer_rate(name, num_classes, precision, batch_size, steps):
    """PyTorch's images/s for network `name` at `precision` (kerasbn.benchmarks.pytorch_peer's),
    measured in a process of its own so neither framework's threads wait beside the other's."""
    command = [sys.executable, "-m", "kerasbn.benchmarks.pytorch_peer", f"--model={name}",
               f"--precision={precision}", f"--num_classes={num_classes}",
               f"--batch_size={batch_size}", f"--steps={steps}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        sys.exit(f"error: the PyTorch benchmark failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"]


def bench_peer(num_classes, precisions, norm_names, batch_size, steps, rounds, peer=True):
    """One dict per round {(framework, network, precision, norm): images/s}: kerasbn's
    baseline and BN network (each of `norm_names`) on one cached batch, then PyTorch's
    (norm None; `peer` False leaves it out) at the matching precision."""
    measured = []
    for _ in range(rounds):
        rates = {}
        for name in ("baseline", "bn"):
            names = norm_names if name == "bn" else ["keras"]
            variants = [(p, n, False, 1) for p in precisions for n in names]
            for (precision, norm, _, _), rate in timing.bench_train(
                    name, num_classes, variants, batch_size, steps, 1).items():
                rates["kerasbn", name, precision, norm if name == "bn" else None] = \
                    rate["cached"]
            for precision in precisions if peer else []:
                rates["pytorch", name, precision, None] = peer_rate(
                    name, num_classes, PEER_PRECISIONS[precision], batch_size, steps)
        measured.append(rates)
    return measured


def _span(values, digits=0):
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" \
        else f"{low:.{digits}f}-{high:.{digits}f}"


def print_peer(measured, precisions, norm_names):
    """The rates of `bench_peer` as ranges over its rounds, then the same-round ratios."""
    print(f"| network | {' | '.join(precisions)} |\n|---|{'---|' * len(precisions)}")
    for key in measured[0]:
        if key[2] != precisions[0]:
            continue
        framework, name, _, norm = key
        label = f"{framework} {name}" + (f" --norm={norm}" if norm else "")
        cells = [_span([r[framework, name, p, norm] for r in measured]) for p in precisions]
        print(f"| {label} | {' | '.join(cells)} |")
    peer = ("pytorch", "bn", precisions[0], None) in measured[0]

    def ratio(top, bottom):
        return _span([r[top] / r[bottom] for r in measured], 2) + "x"

    for precision in precisions:
        baseline = ("kerasbn", "baseline", precision, None)
        peer_baseline = ("pytorch", "baseline", precision, None)
        peer_bn = ("pytorch", "bn", precision, None)
        for norm in norm_names:
            bn = ("kerasbn", "bn", precision, norm)
            line = (f"{precision}, --norm={norm}: BN network step per image "
                    f"{ratio(baseline, bn)} the baseline's")
            if peer:
                line += f"; kerasbn/PyTorch: BN network {ratio(bn, peer_bn)}"
            print(line)
        if peer:
            print(f"{precision}: kerasbn/PyTorch baseline {ratio(baseline, peer_baseline)}; "
                  f"PyTorch's BN network step per image {ratio(peer_baseline, peer_bn)} its "
                  "baseline's")


def _variant_name(variant):
    precision, norm, xla, per_call = variant
    return (f"{precision}" + (f", --norm={norm}" if norm != "keras" else "")
            + (", XLA" if xla else "") + (f", {per_call} steps per call" if per_call > 1 else ""))


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    setting = f"{values.model} x{values.num_classes} classes, batch {values.batch_size}"
    xla = {"plain": False, "xla": True}
    if set(values.compile) - set(xla):
        sys.exit(f"error: --compile takes plain and/or xla, got {','.join(values.compile)}")
    if values.bench == "train":
        variants = [(p, "keras", xla[c], values.steps_per_execution)
                    for p in values.precisions for c in values.compile]
        data_dir = values.data_dir[0] if values.data_dir else None
        if data_dir:
            classes = len(records.read_manifest(data_dir)["class_names"])
            if values.num_classes < classes:
                sys.exit(f"error: --num_classes={values.num_classes} is fewer than the "
                         f"{classes} classes of {data_dir}; give at least {classes}")
        rates = timing.bench_train(values.model, values.num_classes, variants,
                                       values.batch_size, values.batches, values.repeats,
                                       data_dir)
        reference = rates[variants[0]]["cached"]
        for variant, rate in rates.items():
            line = (f"{setting}, {_variant_name(variant)}: one cached batch "
                    f"{rate['cached']:.0f} images/s ({rate['cached'] / reference:.2f}x "
                    f"{_variant_name(variants[0])})")
            if "pipeline" in rate:
                share = rate["pipeline"] / rate["cached"]
                verdict = "input-bound" if share < 0.9 else "not input-bound"
                line += (f", real pipeline of {data_dir} {rate['pipeline']:.0f} images/s "
                         f"({share:.2f}x the cached batch: {verdict})")
            print(line, flush=True)
        return
    if values.bench == "peer":
        precisions = [p for p in values.precisions if p in PEER_PRECISIONS]
        gpu = bool(tf.config.list_physical_devices("GPU"))
        if "mixed_bfloat16" in precisions and not gpu and not runtime.native_bfloat16():
            print("mixed_bfloat16 left out: this CPU has no bfloat16 instructions (both "
                  "frameworks would emulate it, PyTorch at minutes a step)", flush=True)
            precisions.remove("mixed_bfloat16")
        if "mixed_float16" in precisions and not gpu:
            print("mixed_float16 left out: no GPU (float16 is emulated on CPUs)", flush=True)
            precisions.remove("mixed_float16")
        if not precisions:
            sys.exit("error: --precisions for the peer bench takes float32, mixed_bfloat16 (on "
                     "a CPU with bfloat16 instructions) and mixed_float16 (on a GPU)")
        peer = importlib.util.find_spec("torch") is not None
        if not peer:
            print("PyTorch is not installed: kerasbn measured alone (pip install "
                  "torch==2.13.0 for the comparison)", flush=True)
        norm_names = values.norms or ["keras", "nvidia"]
        measured = bench_peer(values.num_classes, precisions, norm_names, values.batch_size,
                              values.batches, values.repeats, peer)
        print(f"{values.num_classes} classes, batch {values.batch_size}, one cached batch, "
              f"images/s over {values.repeats} alternating rounds:")
        print_peer(measured, precisions, norm_names)
        return
    if values.bench == "profile":
        for norm in values.norms or ["keras"]:
            with tempfile.TemporaryDirectory(prefix="kerasbn_profile_") as log_dir:
                busy = timing.op_profile(values.model, values.num_classes,
                                             values.precisions[0], norm, values.batch_size,
                                             values.batches, log_dir)
            total = sum(busy.values())
            print(f"{setting}, {values.precisions[0]}, --norm={norm}: busy op time "
                  f"{total:.3f} s per step (threads' self times added)")
            for kind, seconds in list(busy.items())[:12]:
                print(f"  {kind:28s} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")
        return
    if values.bench == "run":
        whole_run.run(values.run_flags, values.data_dir[0] if values.data_dir else None,
                      values.batches, values.repeats)
        return
    if values.bench == "heads":
        margin_heads.run(values.class_counts, values.sample_fractions, values.head,
                        values.batch_size, values.batches, values.repeats,
                        values.precisions[0])
        return
    if values.bench == "norms":
        names = values.norms or list(norms.NORMS)
        variants = [(p, n, False, 1) for p in values.precisions for n in names]
        rates = timing.bench_train(values.model, values.num_classes, variants,
                                       values.batch_size, values.batches, values.repeats)
        for (precision, norm, _, _), rate in rates.items():
            reference = rates[precision, names[0], False, 1]["cached"]
            print(f"{setting}, {precision}, --norm={norm}: {rate['cached']:.0f} images/s, "
                  f"step time {reference / rate['cached']:.2f}x {names[0]}")
        return
    if not values.data_dir:
        sys.exit("error: --data_dir is required (a directory holding manifest.json)")
    if values.bench == "scale":
        scaling.run(values.data_dir, values.batch_size, values.batches)
        return
    for data_dir in values.data_dir:
        if values.bench == "input":
            r = bench_input(data_dir, values.batch_size, values.batches, values.repeats)
            print(f"{data_dir} [{r['encoding']}]: bare TFRecord reading {r['bare']:.0f} "
                  f"records/s, input pipeline {r['pipeline']:.0f} images/s, "
                  f"ratio {r['ratio']:.3f}")
        else:
            r = separability(data_dir, values.epochs)
            print(f"{data_dir}: test top-1 linear {r['linear']:.3f}, "
                  f"small CNN {r['small_cnn']:.3f}")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_enum("bench", "input",
                      ["input", "separability", "train", "norms", "peer", "profile", "run",
                       "scale", "heads"],
                      "What to measure.", **on)
    flags.DEFINE_multi_string("data_dir", None, "Dataset directory (repeat to compare "
                              "several).", **on)
    flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_integer("batches", 300, "Batches timed per measurement.", lower_bound=1, **on)
    flags.DEFINE_integer("repeats", 3, "Timed repeats per pipeline; the best one counts.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("epochs", 20, "Training epochs per classifier (separability bench).",
                         lower_bound=1, **on)
    flags.DEFINE_enum("model", "bn", models.MODELS, "Network (train bench).", **on)
    flags.DEFINE_integer("num_classes", 14700, "Classes (train bench; the study's 14,700).",
                         lower_bound=2, **on)
    flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies "
                      "(train, norms benches); train: ratios to the first.", **on)
    flags.DEFINE_list("compile", ["plain"], "train bench: plain and/or xla (XLA-compiled "
                      "steps) for each precision.", **on)
    flags.DEFINE_integer("steps_per_execution", 1, "train bench: training steps per call "
                         "into TensorFlow.", lower_bound=1, upper_bound=1000, **on)
    flags.DEFINE_string("run_flags", "launch/quickstart/bn.flags", "run bench: the training "
                        "flagfile whose run is timed (--data_dir overrides its dataset).", **on)
    flags.DEFINE_enum("head", "arcface", heads.HEADS[1:], "heads bench: the margin head.",
                      **on)
    flags.DEFINE_multi_integer("class_counts", [14700, 1_000_000], "heads bench: identities "
                               "(repeatable).", lower_bound=2, **on)
    flags.DEFINE_multi_float("sample_fractions", [1.0, 0.1], "heads bench: --sample_classes "
                             "values, ratios to the first (repeatable).", lower_bound=0,
                             upper_bound=1, **on)
    flags.DEFINE_list("norms", None, "BN implementations: norms bench (default every one; "
                      "step times are ratios to the first at the same precision), peer bench "
                      "(default keras,nvidia: the quickstart's and the study sets').", **on)


if __name__ == "__main__":
    main(sys.argv)
