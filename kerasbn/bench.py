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
        alternating rounds, and what BN costs each: the BN network's step time per image over
        the baseline's.
    python -m kerasbn.bench --bench=peer --networks=iresnet50,mobilefacenet --batch_size=64
        the same for the field's networks at 112x112 RGB, with each one's FLOPs per image and
        the fraction of this CPU's peak its step reaches.
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
    python -m kerasbn.bench --bench=shard [--replicas=1 --replicas=2 --class_counts=100000]
        the same step with a 512-d embedding on R logical devices (--batch_size per replica,
        the first --sample_fractions), the centres replicated against sharded
        (--shard_classes), and what does not fit (kerasbn.benchmarks.margin_heads).
    python -m kerasbn.bench --bench=scale --data_dir=data/synth_30k --data_dir=data/synth_2940k
        the input pipeline's peak memory, shuffle quality and time to the first training
        step on each dataset, against the first (kerasbn.benchmarks.scaling).
    python -m kerasbn.bench --bench=photos --export=runs/bn/export --faces_dir=att_faces
        align's photos/s at two photo sizes, and serve_photo's latency with one and six
        faces against serve_bytes on the same faces aligned (kerasbn.benchmarks.photo_pipeline).
    python -m kerasbn.bench --bench=gallery --export=runs/r50/export --faces_dir=att_faces
        serve_photo naming faces among 1k, 10k and 100k enrolled templates against serve_photo
        without a gallery, and IJB embedding's images/s against serving aligned crops
        (kerasbn.benchmarks.photo_pipeline).
    python -m kerasbn.bench --bench=caffe [--prototxt=P --caffemodel=M] [--batch_size=64]
        an imported Caffe network's conversion time and images/s against OpenCV's dnn on the
        same files, and their largest difference (kerasbn.benchmarks.caffe_speed; without
        --prototxt, the study's BN network written as Caffe files).
"""

import importlib.util
import sys
import tempfile

import tensorflow as tf
from absl import flags

from kerasbn.benchmarks import (caffe_speed, input_pipeline, margin_heads, peer_comparison,
                                photo_pipeline, scaling, separability, timing, whole_run)
from kerasbn.data import records
from kerasbn.flags import cli
from kerasbn.nn import models, norms, registry
from kerasbn.utils import hardware

COMPILE = {"plain": False, "xla": True}


def _variant_name(variant):
    precision, norm, xla, per_call = variant
    return (f"{precision}" + (f", --norm={norm}" if norm != "keras" else "")
            + (", XLA" if xla else "") + (f", {per_call} steps per call" if per_call > 1 else ""))


def _setting(values):
    return f"{values.model} x{values.num_classes} classes, batch {values.batch_size}"


def train_bench(values):
    """Training images/s of each precision x --compile on one cached batch (and on the real
    pipeline with --data_dir), as ratios to the first."""
    variants = [(p, "keras", COMPILE[c], values.steps_per_execution)
                for p in values.precisions for c in values.compile]
    data_dir = values.data_dir[0] if values.data_dir else None
    if data_dir:
        classes = len(records.read_manifest(data_dir).class_names)
        if values.num_classes < classes:
            sys.exit(f"error: --num_classes={values.num_classes} is fewer than the "
                     f"{classes} classes of {data_dir}; give at least {classes}")
    rates = timing.bench_train(values.model, values.num_classes, variants, values.batch_size,
                               values.batches, values.repeats, data_dir)
    reference = rates[variants[0]]["cached"]
    for variant, rate in rates.items():
        line = (f"{_setting(values)}, {_variant_name(variant)}: one cached batch "
                f"{rate['cached']:.0f} images/s ({rate['cached'] / reference:.2f}x "
                f"{_variant_name(variants[0])})")
        if "pipeline" in rate:
            share = rate["pipeline"] / rate["cached"]
            verdict = "input-bound" if share < 0.9 else "not input-bound"
            line += (f", real pipeline of {data_dir} {rate['pipeline']:.0f} images/s "
                     f"({share:.2f}x the cached batch: {verdict})")
        print(line, flush=True)


def peer_bench(values):
    """kerasbn against PyTorch at each precision this machine runs natively."""
    precisions = [p for p in values.precisions if p in peer_comparison.PEER_PRECISIONS]
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if "mixed_bfloat16" in precisions and not gpu and not hardware.native_bfloat16():
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
    unknown = set(values.networks) - set(peer_comparison.NETWORKS)
    if unknown:
        sys.exit(f"error: --networks takes {', '.join(peer_comparison.NETWORKS)}, not "
                 f"{', '.join(sorted(unknown))}")
    print(f"{values.num_classes} classes, batch {values.batch_size}, one cached batch, "
          f"images/s over {values.repeats} alternating rounds:", flush=True)
    field = [n for n in values.networks if n in models.FIELD_MODELS]
    if len(field) < len(values.networks):
        norm_names = values.norms or ["keras", "nvidia"]
        measured = peer_comparison.bench_peer(values.num_classes, precisions, norm_names,
                                              values.batch_size, values.batches,
                                              values.repeats, peer)
        peer_comparison.print_peer(measured, precisions, norm_names)
    if field:
        measured = peer_comparison.bench_field(field, values.num_classes, precisions,
                                               values.batch_size, values.batches,
                                               values.repeats, peer)
        peer_comparison.print_field(measured, field, values.num_classes, precisions)


def profile_bench(values):
    """Busy time per op type of a training step, for each norm."""
    for norm in values.norms or ["keras"]:
        with tempfile.TemporaryDirectory(prefix="kerasbn_profile_") as log_dir:
            busy = timing.op_profile(values.model, values.num_classes, values.precisions[0],
                                     norm, values.batch_size, values.batches, log_dir)
        total = sum(busy.values())
        print(f"{_setting(values)}, {values.precisions[0]}, --norm={norm}: busy op time "
              f"{total:.3f} s per step (threads' self times added)")
        for kind, seconds in list(busy.items())[:12]:
            print(f"  {kind:28s} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")


def norms_bench(values):
    """Training images/s of each --norms at each precision, step times as ratios."""
    names = values.norms or list(norms.NORMS)
    variants = [(p, n, False, 1) for p in values.precisions for n in names]
    rates = timing.bench_train(values.model, values.num_classes, variants, values.batch_size,
                               values.batches, values.repeats)
    for (precision, norm, _, _), rate in rates.items():
        reference = rates[precision, names[0], False, 1]["cached"]
        print(f"{_setting(values)}, {precision}, --norm={norm}: {rate['cached']:.0f} "
              f"images/s, step time {reference / rate['cached']:.2f}x {names[0]}")


def run_bench(values):
    whole_run.run(values.run_flags, values.data_dir[0] if values.data_dir else None,
                  values.batches, values.repeats)


def heads_bench(values):
    margin_heads.run(values.class_counts, values.sample_fractions, values.head,
                     values.batch_size, values.batches, values.repeats, values.precisions[0])


def shard_bench(values):
    margin_heads.run_sharded(values.class_counts, values.sample_fractions[0], values.head,
                             values.batch_size, values.batches, values.repeats,
                             values.precisions[0], values.replicas)


def scale_bench(values):
    scaling.run(_data_dirs(values), values.batch_size, values.batches)


def input_bench(values):
    for data_dir in _data_dirs(values):
        r = input_pipeline.bench_input(data_dir, values.batch_size, values.batches,
                                       values.repeats)
        print(f"{data_dir} [{r['encoding']}]: bare TFRecord reading {r['bare']:.0f} "
              f"records/s, input pipeline {r['pipeline']:.0f} images/s, "
              f"ratio {r['ratio']:.3f}")


def separability_bench(values):
    for data_dir in _data_dirs(values):
        r = separability.separability(data_dir, values.epochs)
        print(f"{data_dir}: test top-1 linear {r['linear']:.3f}, "
              f"small CNN {r['small_cnn']:.3f}")


def photos_bench(values):
    if not values.export or not values.faces_dir:
        sys.exit("error: --bench=photos needs --export (a SavedModel written by kerasbn.export) "
                 "and --faces_dir (a folder of face images, e.g. the AT&T set)")
    photo_pipeline.run(values.export, values.faces_dir, values.repeats)


def gallery_bench(values):
    if not values.export or not values.faces_dir:
        sys.exit("error: --bench=gallery needs --export (a SavedModel written by "
                 "kerasbn.export) and --faces_dir (a folder of face images, e.g. the AT&T set)")
    photo_pipeline.run_gallery(values.export, values.faces_dir, values.repeats)


def caffe_bench(values):
    if bool(values.prototxt) != bool(values.caffemodel):
        sys.exit("error: --prototxt and --caffemodel go together (or neither, for the study's "
                 "BN network)")
    with tempfile.TemporaryDirectory(prefix="kerasbn_caffe_") as directory:
        files = (values.prototxt, values.caffemodel) if values.prototxt else \
            caffe_speed.write_study_bn(directory)
        caffe_speed.run(*files, values.batch_size, values.batches, values.repeats)


def _data_dirs(values):
    if not values.data_dir:
        sys.exit("error: --data_dir is required (a directory holding manifest.json)")
    return values.data_dir


BENCHES = {"input": input_bench, "separability": separability_bench, "train": train_bench,
           "norms": norms_bench, "peer": peer_bench, "profile": profile_bench,
           "run": run_bench, "scale": scale_bench, "heads": heads_bench, "shard": shard_bench,
           "photos": photos_bench, "gallery": gallery_bench, "caffe": caffe_bench}


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    if set(values.compile) - set(COMPILE):
        sys.exit(f"error: --compile takes plain and/or xla, got {','.join(values.compile)}")
    BENCHES[values.bench](values)


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_enum("bench", "input", list(BENCHES), "What to measure.", **on)
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
    flags.DEFINE_enum("head", "arcface", registry.margin_heads(), "heads bench: the margin head.",
                      **on)
    flags.DEFINE_multi_integer("class_counts", [14700, 1_000_000], "heads bench: identities "
                               "(repeatable).", lower_bound=2, **on)
    flags.DEFINE_multi_float("sample_fractions", [1.0, 0.1], "heads bench: --sample_classes "
                             "values, ratios to the first (repeatable).", lower_bound=0,
                             upper_bound=1, **on)
    flags.DEFINE_multi_integer("replicas", [1, 2, 4], "shard bench: logical CPU devices to "
                               "time the replicated and the sharded centres on (repeatable; "
                               "on a GPU machine, its GPU count: every GPU is used).",
                               lower_bound=1, upper_bound=64, **on)
    flags.DEFINE_string("export", None, "photos, gallery benches: the SavedModel whose "
                        "serve_photo is timed.", **on)
    flags.DEFINE_string("faces_dir", None, "photos, gallery benches: face images pasted into "
                        "the timed photos (the AT&T set).", **on)
    flags.DEFINE_string("prototxt", None, "caffe bench: a deploy prototxt.", **on)
    flags.DEFINE_string("caffemodel", None, "caffe bench: its caffemodel.", **on)
    flags.DEFINE_list("networks", ["baseline", "bn"], "peer bench: the study's baseline,bn "
                      "(timed as a pair, for BN's cost) and/or the field's "
                      f"{','.join(models.FIELD_MODELS)} at 112x112 RGB.", **on)
    flags.DEFINE_list("norms", None, "BN implementations: norms bench (default every one; "
                      "step times are ratios to the first at the same precision), peer bench "
                      "(default keras,nvidia: the quickstart's and the study sets').", **on)


if __name__ == "__main__":
    main(sys.argv)
