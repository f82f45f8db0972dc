"""Converts a face collection to sharded TFRecords + manifest.json.

    python -m data_tools.build_records FOLDER --out DIR          # one subfolder per identity
    python -m data_tools.build_records LIST.txt --root R --out DIR   # Caffe `path label` lines
    python -m data_tools.build_records cifar-10-batches-py --out DIR
    python -m data_tools.build_records faces_webface_112x112/train.rec --out DIR   # insightface

Labels are the positions of the identities sorted by name (list files: by numeric label).
Splits are drawn per identity and deterministic by --seed: `holdout` (whole identities kept
out of training, with an LFW-format pairs file), then `test` (a fraction of each remaining
identity's images), the rest `train`. Unreadable files are skipped and listed with reasons.
Shards are written under a temporary name and renamed when complete; an interrupted run,
rerun with the same arguments, keeps its complete shards.
"""

import os
import sys

from absl import flags

from data_tools import convert
from kerasbn.data import images
from kerasbn.flags import cli


def main(argv):
    values, args = cli.parse(argv, define_flags, __doc__)
    if len(args) != 1:
        sys.exit("error: give one SOURCE: a folder tree, a list file or "
                 "cifar-10-batches-py")
    if not values.out:
        sys.exit("error: --out is required")
    cli.check_writable(values.out, by_tensorflow=True)
    cli.run(lambda: convert.build(
        args[0], values.out, values.root, values.image_size,
        int(values.channels) if values.channels else None, values.resize_mode, values.boxes,
        values.test_fraction, values.holdout_identities, values.pairs,
        values.min_images_per_identity, values.seed, values.shard_size, values.encoding,
        "GZIP" if values.gzip else "", values.workers, values.overwrite,
        command="python -m data_tools.build_records " + " ".join(sys.argv[1:]),
        allow_outside_root=values.allow_outside_root, extensions=tuple(values.extensions),
        align=values.align, landmarks=values.landmarks),
        f"the finished shards in {values.out} are kept; rerun the same command to convert "
        "the rest")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("out", None, "Directory to write the shards and manifest.json into.", **on)
    flags.DEFINE_string("root", None, "List files: the directory their paths are relative to "
                        "(default: the list file's directory).", **on)
    cli.define_image_size(values, None, "Output height and width (default 50; CIFAR-10 32)")
    flags.DEFINE_enum("channels", None, ["1", "3"], "1 grayscale or 3 RGB (default 1; CIFAR-10 3).",
                      **on)
    flags.DEFINE_enum("resize_mode", "crop", images.RESIZE_MODES, "crop: keep the aspect, crop "
                      "the centre; pad: keep the aspect, pad black; stretch: ignore the aspect.",
                      **on)
    flags.DEFINE_string("boxes", None, "CSV of `file,x,y,w,h` face boxes cropped before resizing.",
                        **on)
    flags.DEFINE_float("test_fraction", 0.2, "Fraction of each training identity's images in test.",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_integer("holdout_identities", 0, "Identities kept out of training (split holdout).",
                         lower_bound=0, **on)
    flags.DEFINE_integer("pairs", 0, "Matched and mismatched holdout pairs for pairs.txt (LFW format).",
                         lower_bound=0, **on)
    flags.DEFINE_integer("min_images_per_identity", 1, "Drop identities with fewer files.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("seed", 0, "Seed of the splits and the record order.", lower_bound=0, **on)
    flags.DEFINE_integer("shard_size", 4096, "Records per shard.", lower_bound=1, **on)
    flags.DEFINE_enum("encoding", "raw", ["raw", "png"], "raw (fastest to read) or png (smaller).",
                      **on)
    flags.DEFINE_bool("gzip", False, "GZIP-compress the shards.", **on)
    flags.DEFINE_integer("workers", max(1, os.cpu_count() or 1), "Decoding processes.",
                         lower_bound=1, **on)
    flags.DEFINE_bool("overwrite", False, "Replace a dataset already in --out.", **on)
    flags.DEFINE_list("extensions", list(images.IMAGE_EXTENSIONS), "Folder sources: the "
                      "file name endings taken as images (any case); other files are left "
                      "out and listed, e.g. a dataset's *.bad rejects.", **on)
    flags.DEFINE_bool("align", False, "Folder and list sources: find each photo's largest "
                      "face (MTCNN) and align it by its five landmarks to the ArcFace "
                      "template at --image_size (photos without a face are skipped and "
                      "counted); one process, as detection runs TensorFlow.", **on)
    flags.DEFINE_string("landmarks", None, "Align with the five points this file gives each "
                        "photo (`path x1 y1 ... x5 y5` lines, or insightface .lst lines) "
                        "instead of detecting them.", **on)
    flags.DEFINE_bool("allow_outside_root", False, "List files: accept paths that lie outside "
                      "--root (refused by default, as a list file's mistake).", **on)


if __name__ == "__main__":
    main(sys.argv)
