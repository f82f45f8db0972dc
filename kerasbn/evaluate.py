"""Evaluates trained runs: closed-set top-1/top-5/loss with per-identity accuracy (the worst
identities named), and face verification on the dataset's holdout pairs with a ROC curve.

    python -m kerasbn.evaluate --run_dir=runs/quickstart/bn \
        [--run_dir=runs/quickstart/baseline] [--split=test] [--checkpoint=latest|best] [--out=DIR]

Each run is rebuilt from its config.json and its newest checkpoint (or its best test's).
Writes OUT/evaluate.json and, when the dataset has holdout pairs, OUT/roc.png with every run
on one plot (log-scale false accept rate), so BN and baseline embeddings compare as the
study compared accuracy.
"""

import json
import os
import sys

import numpy as np
from absl import flags

from kerasbn import charts, cli, config, export, holdout, metrics, pipeline, records
from kerasbn import verification
from kerasbn.run_dir import RunDirError

WORST = 5


def evaluate_run(run_dir, split="test", batch_size=256, best=False):
    """{run, split, loss, top1, top5, count, worst identities, verification figures, roc}."""
    settings, manifest, model, prefix = export.restore_run(run_dir, best, check_files=True)
    data = pipeline.test_dataset(settings.data_dir, manifest, batch_size, split=split)
    result = {"run": run_dir, "checkpoint": prefix, "split": split,
              **metrics.evaluate(metrics.make_test_step(model), data,
                                 num_classes=len(manifest["class_names"]))}
    hits, counts = result.pop("class_hits"), result.pop("class_counts")
    seen = np.flatnonzero(counts)
    accuracy = hits[seen] / counts[seen]
    result["worst_identities"] = [
        {"identity": manifest["class_names"][seen[i]], "accuracy": float(accuracy[i]),
         "images": int(counts[seen[i]])} for i in np.argsort(accuracy, kind="stable")[:WORST]]
    if holdout.available(manifest):
        scores, same, fold = holdout.scorer(model, settings.data_dir, manifest, batch_size)()
        result.update(verification.summarize(scores, same, fold))
        far, tar, _ = verification.roc(scores, same)
        result["roc"] = {"far": far.tolist(), "tar": tar.tolist()}
    return result


def plot_roc(results, out):
    """The runs' ROC curves on one chart, the false accept rate on a log scale."""
    curves = []
    for result in results:
        far, tar = np.asarray(result["roc"]["far"]), np.asarray(result["roc"]["tar"])
        name = os.path.basename(result["run"].rstrip("/"))
        curves.append((f"{name} (AUC {result['verify_auc']:.3f})", far[far > 0], tar[far > 0]))
    charts.save_lines(curves, out, "false accept rate", "true accept rate", xscale="log")


def table(results):
    lines = ["| run | top-1 | top-5 | loss | verify acc | AUC | EER | worst identity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        worst = r["worst_identities"][0] if r["worst_identities"] else None
        figures = [f"{r[k]:.4f}" if r.get(k) is not None else "-"
                   for k in ("verify_acc", "verify_auc", "verify_eer")]
        lines.append(f"| {r['run']} | {r['top1']:.4f} | {r['top5']:.4f} | {r['loss']:.4f} | "
                     + " | ".join(figures) + " | "
                     + (f"{worst['identity']} ({worst['accuracy']:.2f})" if worst else "-")
                     + " |")
    return "\n".join(lines) + "\n"


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_multi_string("run_dir", None, "A run made by kerasbn.train (repeat to "
                              "compare runs).", **on)
    flags.DEFINE_enum("split", "test", records.SPLITS, "The split evaluated for top-1.", **on)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "The newest checkpoint, or "
                      "the weights of the best test (verification accuracy when the run "
                      "verified, else top-1).", **on)
    flags.DEFINE_integer("batch_size", 256, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_string("out", "evaluation", "Directory for evaluate.json and roc.png.", **on)


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    if rest or not values.run_dir:
        sys.exit("error: give one or more --run_dir=RUN (and no other arguments)")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        sys.exit(f"error: --out={values.out} is a file; give a directory")
    try:
        results = [evaluate_run(run_dir, values.split, values.batch_size,
                                values.checkpoint == "best") for run_dir in values.run_dir]
    except (records.DataError, RunDirError, config.ConfigError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(values.out, exist_ok=True)
    with open(os.path.join(values.out, "evaluate.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(table(results))
    print(f"results: {os.path.join(values.out, 'evaluate.json')}")
    if all("roc" in r for r in results):
        plot_roc(results, os.path.join(values.out, "roc.png"))
        print(f"ROC: {os.path.join(values.out, 'roc.png')}")


if __name__ == "__main__":
    main(sys.argv)
