"""Evaluates trained networks: closed-set top-1/top-5/loss with per-identity accuracy (the
worst identities named), and face verification with a ROC curve, on the dataset's holdout
pairs or on a pairs.txt over a folder of face photos (LFW's layout).

    python -m kerasbn.evaluate --run_dir=runs/quickstart/bn \
        [--run_dir=runs/quickstart/baseline] [--split=test] [--checkpoint=latest|best]
    python -m kerasbn.evaluate --model=runs/quickstart/bn/export --data_dir=data/quickstart
    python -m kerasbn.evaluate --run_dir=runs/bn --pairs=lfw/pairs.txt --image_root=lfw
    python -m kerasbn.evaluate --model=runs/bn/export --bin=faces_emore/lfw.bin --bin=cfp_fp.bin

A run is rebuilt from its config.json and its newest checkpoint (or its best test's); a
`--model` is a SavedModel written by kerasbn.export, evaluated on `--data_dir`'s split.
Photos are converted and resized as the training dataset's manifest says (`resize_mode`),
so they must be face crops like the training images. Writes OUT/evaluate.json and, when
there are pairs, OUT/roc.png with every network on one plot (log-scale false accept rate),
so BN and baseline embeddings compare as the study compared accuracy.
"""

import os
import sys

import numpy as np
from absl import flags

from kerasbn import config
from kerasbn.analysis import charts
from kerasbn.data import images, pipeline, records
from kerasbn.evaluation import bin_sets, holdout, pairs, verification
from kerasbn.flags import cli
from kerasbn.serving import signatures
from kerasbn.training import metrics
from kerasbn.training.run_dir import RunDirError
from kerasbn.utils import atomic
from kerasbn.utils.progress import Progress

WORST = 5


def closed_set(served, data_dir, manifest, split, batch_size):
    """{split, loss, top1, top5, count, worst identities} of `served` on a dataset's split."""
    if (served.classes, served.image_size, served.channels) != (
            manifest.num_classes, manifest.image_size, manifest.channels):
        raise records.DataError(
            f"{served.source} takes {served.image_size} x {served.channels} images into "
            f"{served.classes} classes, but {data_dir} holds {manifest.image_size} "
            f"x {manifest.channels} images of {manifest.num_classes}; give the "
            "--data_dir it was trained on")
    data = pipeline.test_dataset(data_dir, manifest, batch_size, split=split, raw=True)
    step = metrics.make_test_step(lambda x, training=False: served.serve(x)["logits"])
    progress = Progress(manifest.splits[split].count, f"{split} split")
    result = {"split": split, **metrics.evaluate(step, data, num_classes=served.classes,
                                                 progress=progress)}
    hits, counts = result.pop("class_hits"), result.pop("class_counts")
    seen = np.flatnonzero(counts)
    accuracy = hits[seen] / counts[seen]
    result["worst_identities"] = [
        {"identity": manifest.class_names[seen[i]], "accuracy": float(accuracy[i]),
         "images": int(counts[seen[i]])} for i in np.argsort(accuracy, kind="stable")[:WORST]]
    return result


def photo_size(served):
    """The square side photos are resized to for `served`; DataError when it cannot take
    photos."""
    if not served.resize_mode:
        raise records.DataError(f"{served.source}'s dataset does not record its resize_mode; "
                                "rebuild the dataset (and retrain) to evaluate on photos")
    height, width = served.image_size
    if height != width:
        raise records.DataError(f"photos are resized to squares; {served.source} takes "
                                f"{height}x{width} images")
    return height


def load_photos(files, served):
    """uint8 [N, H, W, C] of image files, made into what `served` takes."""
    size = photo_size(served)
    progress = Progress(len(files), "loading photos")
    batch = np.zeros((len(files), size, size, served.channels), np.uint8)
    for i, path in enumerate(files):
        array, reason = images.load(path, served.channels, size, served.resize_mode)
        if reason:
            raise records.DataError(f"{path}: {reason}")
        batch[i] = array
        progress.update(1)
    return batch


def photo_scores(served, pairs_file, image_root, batch_size, flip):
    """(scores, same, fold) of the pairs a pairs.txt names over a folder of photos."""
    files, first, second, same, sets = pairs.file_pairs(pairs_file, image_root)
    photos = load_photos(files, served)
    step = holdout.embed_step(lambda x: served.serve(x)["embedding"], flip)
    embeddings = holdout.embed_batches(
        step, (photos[start:start + batch_size] for start in range(0, len(photos), batch_size)),
        Progress(len(files), "embedding photos"))
    return (verification.cosine_scores(embeddings, first, second), same,
            holdout.folds(same, sets))


def bin_scores(served, path, batch_size, flip):
    """(scores, same, fold) of an insightface .bin's pairs, in their order and its folds."""
    return bin_sets.scorer(path, lambda x: served.serve(x)["embedding"], served.channels,
                           photo_size(served), served.resize_mode, batch_size, flip,
                           progress=True)()


def verified(scores, flip):
    """The verification figures and ROC of (scores, same, fold)."""
    far, tar, _ = verification.roc(scores[0], scores[1])
    return {**verification.summarize(*scores), "verify_flip": flip,
            "roc": {"far": far.tolist(), "tar": tar.tolist()}}


def evaluate_network(served, values):
    """One network's results: closed-set on `--split` when there is a dataset and
    verification on `--pairs` photos or else on the dataset's holdout pairs, when there are
    pairs; then one result per `--bin` set."""
    data_dir = served.data_dir or values.data_dir
    manifest = served.manifest
    if manifest is None and data_dir:
        manifest = records.read_manifest(data_dir, check_files=True)
    result = {"source": served.source, "checkpoint": served.checkpoint}
    if manifest is not None:
        result.update(closed_set(served, data_dir, manifest, values.split, values.batch_size))
    flip = served.verify_flip if values.verify_flip is None else values.verify_flip
    embed = lambda x: served.serve(x)["embedding"]
    if values.pairs:
        result.update(verified(photo_scores(served, values.pairs, values.image_root,
                                            values.batch_size, flip), flip),
                      pairs=values.pairs)
    elif manifest is not None and holdout.available(manifest):
        progress = Progress(manifest.splits["holdout"].count, "holdout split")
        scores = holdout.scorer(embed, data_dir, manifest, values.batch_size, flip, raw=True,
                                progress=progress)()
        result.update(verified(scores, flip),
                      pairs=os.path.join(data_dir, manifest.pairs_file))
    results = [result] if manifest is not None or values.pairs else []
    for path in values.bin:
        results.append({"source": served.source, "checkpoint": served.checkpoint,
                        "pairs": path, "set": bin_sets.name(path),
                        **verified(bin_scores(served, path, values.batch_size, flip), flip)})
    return results


def evaluate_run(run_dir, values):
    """`evaluate_network` of a run's newest checkpoint (its best test's with
    --checkpoint=best)."""
    return evaluate_network(signatures.from_run(run_dir, values.checkpoint == "best"), values)


def label(result):
    """A network's name on the plot and in the table: its run (or export) directory, and the
    .bin set it was verified on."""
    path = result["source"].rstrip("/")
    name = os.path.basename(path)
    name = f"{os.path.basename(os.path.dirname(path))} (export)" if name == "export" else name
    return f"{name} on {result['set']}" if "set" in result else name


def plot_roc(results, out):
    """The networks' ROC curves on one chart, the false accept rate on a log scale."""
    curves = []
    for result in results:
        far, tar = np.asarray(result["roc"]["far"]), np.asarray(result["roc"]["tar"])
        curves.append((f"{label(result)} (AUC {result['verify_auc']:.3f})", far[far > 0],
                       tar[far > 0]))
    charts.save_lines(curves, out, "false accept rate", "true accept rate", xscale="log")


def table(results):
    columns = [("top-1", "top1"), ("top-5", "top5"), ("loss", "loss"),
               ("verify acc", "verify_acc"), ("AUC", "verify_auc"), ("EER", "verify_eer"),
               ("TAR@FAR=1e-2", "verify_tar@far=0.01")]
    lines = ["| network | " + " | ".join(name for name, _ in columns) + " | worst identity |",
             "|---" * (len(columns) + 2) + "|"]
    for r in results:
        worst = r.get("worst_identities")
        figures = [f"{r[key]:.4f}" if r.get(key) is not None else "-" for _, key in columns]
        shown = f"{r['source']} on {r['set']}" if "set" in r else r["source"]
        lines.append(f"| {shown} | " + " | ".join(figures) + " | "
                     + (f"{worst[0]['identity']} ({worst[0]['accuracy']:.2f})" if worst
                        else "-") + " |")
    return "\n".join(lines) + "\n"


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_multi_string("run_dir", [], "A run made by kerasbn.train (repeatable).", **on)
    flags.DEFINE_multi_string("model", [], "A SavedModel written by kerasbn.export "
                              "(repeatable); evaluated on --data_dir and/or --pairs.", **on)
    flags.DEFINE_string("data_dir", None, "The dataset a --model is evaluated on (a run uses "
                        "its own).", **on)
    flags.DEFINE_enum("split", "test", records.SPLITS, "The split evaluated for top-1.", **on)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "A run's newest checkpoint, "
                      "or the weights of its best test (verification accuracy when the run "
                      "verified, else top-1).", **on)
    flags.DEFINE_string("pairs", None, "A pairs.txt in LFW's layout naming photos under "
                        "--image_root, verified instead of the dataset's holdout pairs.", **on)
    flags.DEFINE_string("image_root", None, "The folder of --pairs' photos, one sub-folder "
                        "per identity (LFW: name/name_0001.jpg); face crops like the "
                        "training images.", **on)
    flags.DEFINE_multi_string("bin", [], "An insightface verification set (lfw.bin, "
                              "cfp_fp.bin, agedb_30.bin, ...; repeatable), each verified on "
                              "its own: its pairs in their order, insightface's ten folds.",
                              **on)
    flags.DEFINE_bool("verify_flip", None, "Sum each embedding with its mirror image's "
                      "(default: as the run verified while training; off for --model).", **on)
    flags.DEFINE_integer("batch_size", 256, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_string("out", "evaluation", "Directory for evaluate.json and roc.png.", **on)


def check(values):
    """One line naming what is wrong with a flag combination, or None."""
    if not values.run_dir and not values.model:
        return "give one or more --run_dir=RUN or --model=SAVED_MODEL"
    if bool(values.pairs) != bool(values.image_root):
        return "--pairs and --image_root go together: a pairs.txt and the photos it names"
    if values.model and not values.data_dir and not values.pairs and not values.bin:
        return ("--model needs --data_dir (a dataset with the classes it was trained on), "
                "--pairs with --image_root, or --bin")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        return f"--out={values.out} is a file; give a directory"
    return None


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    problem = "no positional arguments are taken" if rest else check(values)
    if problem:
        sys.exit(f"error: {problem}")
    try:
        results = [r for run_dir in values.run_dir for r in evaluate_run(run_dir, values)]
        results += [r for path in values.model
                    for r in evaluate_network(signatures.from_saved_model(path), values)]
    except (records.DataError, RunDirError, config.ConfigError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(values.out, exist_ok=True)
    atomic.write_json(os.path.join(values.out, "evaluate.json"), results)
    print(table(results))
    print(f"results: {os.path.join(values.out, 'evaluate.json')}")
    if all("roc" in r for r in results):
        plot_roc(results, os.path.join(values.out, "roc.png"))
        print(f"ROC: {os.path.join(values.out, 'roc.png')}")


if __name__ == "__main__":
    main(sys.argv)
