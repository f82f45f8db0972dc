"""A dataset's manifest.json as one frozen value, read and checked once.

    manifest = records.read_manifest("data/synth")
    manifest.image_size, manifest.channels, manifest.num_classes, manifest.splits["train"].count

The file on disk stays the converters' JSON (`to_dict` gives it back whole, so what a
converter wrote and kerasbn does not read, e.g. its command line, is kept); everything the
library reads of it is a field here, with its default for manifests older than the field.
"""

import dataclasses

import numpy as np

from kerasbn.utils.errors import DataError

ENCODINGS = ("raw", "png", "jpeg")
_REQUIRED = ("image_size", "channels", "encoding", "class_names", "splits", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's shards: their file names (relative to the dataset), its record count, and
    each shard's (None in manifests written without them)."""

    files: tuple
    count: int
    file_counts: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a dataset is: its images, classes, splits, normalisation and holdout pairs."""

    image_size: tuple
    channels: int
    encoding: str
    class_names: tuple
    splits: dict
    mean: tuple
    std: tuple
    # Labels on disk minus this are the class indices (TFRecords labelled from 1).
    label_offset: int = 0
    compression: str | None = None
    # A dataset built before manifests stored resize_mode was cropped (both converters'
    # default then).
    resize_mode: str = "crop"
    # The holdout split's identities and its LFW-format pairs file (relative name).
    holdout_class_names: tuple = ()
    pairs_file: str | None = None
    # The file it was read from, for messages; and the whole JSON as written.
    path: str = "manifest.json"
    values: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def has_holdout_pairs(self):
        """Whether the dataset has a holdout split and a pairs file to verify on."""
        return "holdout" in self.splits and self.pairs_file is not None

    def to_dict(self):
        """The manifest's JSON as it is on disk."""
        return dict(self.values)

    @classmethod
    def from_dict(cls, values, path="manifest.json"):
        """The manifest of manifest.json's `values`, checked; DataError names `path` and the
        fix."""
        missing = [key for key in _REQUIRED if key not in values]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; rebuild the dataset")
        size, channels, names = values["image_size"], values["channels"], values["class_names"]
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and v > 0 for v in size)):
            raise DataError(f"{path}: image_size must be [height, width] in pixels, got "
                            f"{size!r}; rebuild the dataset or fix it with inspect_records "
                            "--write_manifest")
        if channels not in (1, 3):
            raise DataError(f"{path}: channels must be 1 or 3, got {channels!r}")
        if not isinstance(names, list) or not names:
            raise DataError(f"{path} lists no classes (class_names is {names!r}); rebuild the "
                            "dataset from a source with identities")
        for key in ("mean", "std"):
            if len(np.ravel(values[key])) != channels:
                raise DataError(f"{path}: {key} has {len(np.ravel(values[key]))} values for "
                                f"{channels} channel(s); rebuild the dataset")
        if not all(float(s) > 0 for s in np.ravel(values["std"])):
            raise DataError(f"{path}: the pixel std {values['std']} has a zero; the training "
                            "images are constant, so normalising them divides by zero; "
                            "rebuild the dataset from real images")
        if values["encoding"] not in ENCODINGS:
            raise DataError(f"{path}: unknown encoding {values['encoding']!r} "
                            f"(one of {', '.join(ENCODINGS)})")
        splits = {name: Split(tuple(info["files"]), info["count"],
                              tuple(info["file_counts"]) if info.get("file_counts") else None)
                  for name, info in values["splits"].items()}
        return cls(image_size=tuple(size), channels=channels, encoding=values["encoding"],
                   class_names=tuple(names), splits=splits,
                   mean=tuple(np.ravel(values["mean"]).tolist()),
                   std=tuple(np.ravel(values["std"]).tolist()),
                   label_offset=values.get("label_offset", 0),
                   compression=values.get("compression") or None,
                   resize_mode=values.get("resize_mode") or "crop",
                   holdout_class_names=tuple(values.get("holdout_class_names") or ()),
                   pairs_file=values["pairs"]["file"] if "pairs" in values else None,
                   path=path, values=dict(values))
