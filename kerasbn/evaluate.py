"""Evaluates trained networks: closed-set top-1/top-5/loss with per-identity accuracy (the
worst identities named), and face verification with a ROC curve, on the dataset's holdout
pairs or on a pairs.txt over a folder of face photos (LFW's layout).

    python -m kerasbn.evaluate --run_dir=runs/quickstart/bn \
        [--run_dir=runs/quickstart/baseline] [--split=test] [--checkpoint=latest|best]
    python -m kerasbn.evaluate --model=runs/quickstart/bn/export --data_dir=data/quickstart
    python -m kerasbn.evaluate --run_dir=runs/bn --pairs=lfw/pairs.txt --image_root=lfw
    python -m kerasbn.evaluate --model=runs/bn/export --bin=faces_emore/lfw.bin --bin=cfp_fp.bin
    python -m kerasbn.evaluate --model=runs/r50/export --ijb=IJB_release/IJBC

A run is rebuilt from its config.json and its newest checkpoint (or its best test's); a
`--model` is a SavedModel written by kerasbn.export, evaluated on `--data_dir`'s split.
Photos are converted and resized as the training dataset's manifest says (`resize_mode`),
so they must be face crops like the training images. Writes OUT/evaluate.json and, when
there are pairs, OUT/roc.png with every network on one plot (log-scale false accept rate),
so BN and baseline embeddings compare as the study compared accuracy.

`--ijb=DIR` runs IJB-B or IJB-C as insightface does (kerasbn.evaluation.ijb says how, and
which reading each TAR is): 1:1 TAR at FAR 1e-6 to 1e-1 and AUC over the template pairs,
and, where DIR holds the 1:N files, rank-1/5/10 and TPIR at FPIR 1e-2 and 1e-1. Each image's
embeddings are cached under OUT/ijb_cache, so an interrupted run resumes; the pairs' scores go
to OUT/ijb_scores_N.npy (in the pair file's order), the ROC to OUT/ijb_roc.png and the CMC to
OUT/ijb_cmc.png.
"""

import os
import sys

import numpy as np
from absl import flags

from kerasbn import config
from kerasbn.analysis import charts
from kerasbn.data import records
from kerasbn.evaluation import evaluator, ijb, ijb_features
from kerasbn.flags import cli
from kerasbn.serving import signatures
from kerasbn.utils import atomic, errors


def request(values):
    """The `evaluator.Request` of the command's flags."""
    flip = values.verify_flip
    if flip is None and values.flip_sum:
        flip = True
    if flip:
        flip = values.flip_sum or "unit"
    return evaluator.Request(
        values.data_dir, values.split, values.batch_size, values.pairs, values.image_root,
        tuple(values.bin), flip, values.align, values.ijb,
        ijb_features.Settings(values.ijb_flip, values.ijb_normalize, values.ijb_faceness),
        os.path.join(values.out, "ijb_cache"))


def evaluate_run(run_dir, values):
    """`evaluator.evaluate_network` of a run's newest checkpoint (its best test's with
    --checkpoint=best)."""
    return evaluator.evaluate_network(signatures.from_run(run_dir, values.checkpoint == "best"),
                                      request(values))


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


def plot_ijb(results, out):
    """The IJB networks' ROC (log FAR) and, where searched, CMC charts; their paths."""
    ijbs = [(label(r), r["ijb"]) for r in results if "ijb" in r]
    roc = [(f"{name} (AUC {f['auc']:.4f})", np.asarray(f["roc"]["far"])[1:],
            np.asarray(f["roc"]["tar"])[1:]) for name, f in ijbs]
    paths = [os.path.join(out, "ijb_roc.png")]
    charts.save_lines(roc, paths[0], "false accept rate", "true accept rate", xscale="log")
    cmc = [(name, np.arange(1, len(f["cmc"]) + 1), f["cmc"]) for name, f in ijbs if "cmc" in f]
    if cmc:
        paths.append(os.path.join(out, "ijb_cmc.png"))
        charts.save_lines(cmc, paths[1], "rank", "identification rate", marker=".")
    return paths


def ijb_table(results):
    """The IJB figures, one row per network and TAR reading."""
    fars = [f"{far:.0e}" for far in ijb.FARS]
    lines = ["| network | set | TAR read at | " + " | ".join(f"FAR={f}" for f in fars)
             + " | AUC | rank-1 | rank-5 | TPIR@FPIR=1e-2 | TPIR@FPIR=1e-1 |",
             "|---" * (len(fars) + 8) + "|"]
    show = lambda v: f"{v:.4f}" if v is not None else "-"
    for r in results:
        if "ijb" not in r:
            continue
        f = r["ijb"]
        for reading, key in (("nearest FPR (insightface)", "tar@far"),
                             ("FAR <= F (kerasbn)", "tar@far_at_most")):
            searched = [f.get("rank", {}).get(k) for k in ("1", "5")] + [
                f.get("tpir@fpir", {}).get(k) for k in ("1e-02", "1e-01")]
            lines.append(f"| {label(r)} | {f['set']} | {reading} | "
                         + " | ".join(show(f[key][far]) for far in fars)
                         + f" | {show(f['auc'])} | " + " | ".join(map(show, searched)) + " |")
    return "\n".join(lines) + "\n"


def table(results):
    columns = [("top-1", "top1"), ("top-5", "top5"), ("loss", "loss"),
               ("verify acc", "verify_acc"), ("AUC", "verify_auc"), ("EER", "verify_eer"),
               ("TAR@FAR=1e-2 pooled", "verify_tar@far=0.01"),
               ("VAL@FAR=1e-3 10-fold", "verify_val@far=0.001")]
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
    flags.DEFINE_enum("split", "test", records.SPLITS, "The split evaluated for top-1 (test or "
                      "train; the holdout split's people are verified, not classified).", **on)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "A run's newest checkpoint, "
                      "or the weights of its best test (verification accuracy when the run "
                      "verified, else top-1).", **on)
    flags.DEFINE_string("pairs", None, "A pairs.txt in LFW's layout naming photos under "
                        "--image_root, verified instead of the dataset's holdout pairs.", **on)
    flags.DEFINE_string("image_root", None, "The folder of --pairs' photos, one sub-folder "
                        "per identity (LFW: name/name_0001.jpg); face crops like the "
                        "training images.", **on)
    flags.DEFINE_bool("align", False, "--pairs over whole photos: align each photo's largest "
                      "face (MTCNN's five landmarks onto the ArcFace template) instead of "
                      "resizing the photo.", **on)
    flags.DEFINE_multi_string("bin", [], "An insightface verification set (lfw.bin, "
                              "cfp_fp.bin, agedb_30.bin, ...; repeatable), each verified on "
                              "its own: its pairs in their order, insightface's ten folds.",
                              **on)
    flags.DEFINE_bool("verify_flip", None, "Sum each embedding with its mirror image's "
                      "(default: as the run verified while training; off for --model).", **on)
    flags.DEFINE_enum("flip_sum", None, list(config.FLIP_SUMS), "How --verify_flip sums the "
                      "two views: unit (their L2-normalised embeddings, the default) or raw "
                      "(the raw embeddings, as insightface's verification.py).", **on)
    flags.DEFINE_string("ijb", None, "An IJB-B or IJB-C release in insightface's layout "
                        "(loose_crop/, meta/ijbc_* or ijbb_*): its 1:1 and 1:N protocols.",
                        **on)
    flags.DEFINE_bool("ijb_flip", True, "IJB: sum each image's raw embedding with its "
                      "mirror's (insightface's default).", **on)
    flags.DEFINE_bool("ijb_normalize", False, "IJB: L2-normalise each image's feature before "
                      "pooling (insightface's default: not, so its length weighs it).", **on)
    flags.DEFINE_bool("ijb_faceness", True, "IJB: weigh each image's feature by its faceness "
                      "score (insightface's default).", **on)
    flags.DEFINE_integer("batch_size", 256, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_string("out", "evaluation", "Directory for evaluate.json and roc.png.", **on)


def check(values):
    """One line naming what is wrong with a flag combination, or None."""
    if not values.run_dir and not values.model:
        return "give one or more --run_dir=RUN or --model=SAVED_MODEL"
    if values.align and not values.pairs:
        return "--align aligns the photos of --pairs and --image_root; give them"
    if bool(values.pairs) != bool(values.image_root):
        return "--pairs and --image_root go together: a pairs.txt and the photos it names"
    if values.model and not (values.data_dir or values.pairs or values.bin or values.ijb):
        return ("--model needs --data_dir (a dataset with the classes it was trained on), "
                "--pairs with --image_root, --bin or --ijb")
    if values.split == "holdout":
        return ("--split=holdout: the holdout people were never trained on, so a top-1 over the "
                "network's classes means nothing there; their pairs are verified anyway (the "
                "verify figures). Give --split=test or train")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        return f"--out={values.out} is a file; give a directory"
    return None


def evaluate_all(values):
    """The results of every --run_dir and --model; UserError for a network whose outputs are
    not finite, as for any other mistake."""
    try:
        results = [r for run_dir in values.run_dir for r in evaluate_run(run_dir, values)]
        return results + [r for path in values.model
                          for r in evaluator.evaluate_network(
                              signatures.from_saved_model(path), request(values))]
    except FloatingPointError as e:
        raise errors.UserError(str(e)) from None


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    problem = "no positional arguments are taken" if rest else check(values)
    if problem:
        sys.exit(f"error: {problem}")
    cli.check_writable(values.out)
    results = cli.run(lambda: evaluate_all(values), "nothing was written")
    os.makedirs(values.out, exist_ok=True)
    for number, result in enumerate(r for r in results if "ijb" in r):
        name = f"ijb_scores_{number}.npy"
        atomic.write_with(os.path.join(values.out, name),
                          lambda f, scores=result.pop("ijb_scores"): np.save(f, scores))
        result["ijb"]["scores"] = name
    atomic.write_json(os.path.join(values.out, "evaluate.json"), results)
    verified = [r for r in results if "ijb" not in r]
    if verified:
        print(table(verified))
    if len(verified) < len(results):
        print(ijb_table(results))
        print("IJB charts: " + ", ".join(plot_ijb(results, values.out)))
    print(f"results: {os.path.join(values.out, 'evaluate.json')}")
    if verified and all("roc" in r for r in verified):
        plot_roc(verified, os.path.join(values.out, "roc.png"))
        print(f"ROC: {os.path.join(values.out, 'roc.png')}")


if __name__ == "__main__":
    main(sys.argv)
