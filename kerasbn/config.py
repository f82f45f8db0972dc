"""The settings of one training run as a value: typed, checked once, saved as config.json.

A command's `main` makes a `RunConfig` from its flags and the dataset's manifest and passes it
on; nothing below the command layer reads flags. Field names are the training flags' names,
so an error names the flag to change. `schedule` holds the learning-rate part, checked by
`schedules.ScheduleConfig` itself.
"""

import dataclasses
import math

from kerasbn import heads, metrics, models, norms, schedules

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SOLVER_TYPES = ("SGD", "Nesterov", "Adam", "AdamW")
VERIFY_SPLITS = ("auto", "holdout", "none")
EXPORTS = ("latest", "best")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# Settings that may change between a run and its resumption: where it lives and what it
# reports (targets are measured afresh from the whole metrics history).
NOT_RUN_DEFINING = ("run_dir", "display", "keep_checkpoints", "weights", "target_accuracy",
                    "target", "skip_corrupt_records", "deterministic", "verify_split",
                    "verify_interval", "verify_flip", "verify_bin", "export", "strategy",
                    "cpu_devices", "steps_per_execution", "jit_compile")


class ConfigError(ValueError):
    """Settings that cannot be used together; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run (README's Train section explains each)."""

    data_dir: str
    run_dir: str
    num_classes: int
    image_size: tuple
    channels: int
    model: str = "bn"
    norm: str = "keras"
    widths: tuple | None = None
    dropout: float | None = None
    bn_momentum: float | None = None
    bn_epsilon: float | None = None
    batch_size: int = 128
    schedule: schedules.ScheduleConfig = schedules.ScheduleConfig()
    solver_type: str = "SGD"
    momentum: float = 0.9
    momentum2: float = 0.999
    delta: float = 1e-8
    weight_decay: float = 5e-4
    bias_decay_mult: float = 0.0
    bn_decay_mult: float = 0.0
    bias_lr_mult: float = 1.0
    weight_filler: str = "network"
    filler_std: float = 0.01
    test_interval: int = 5000
    test_iter: int = 0
    test_initialization: bool = True
    display: int = 100
    snapshot: int = 5000
    keep_checkpoints: int = 3
    precision: str = "float32"
    seed: int = 0
    target_accuracy: tuple = (0.8,)
    target: tuple = ()
    stop_at_target: bool = False
    weights: str | None = None
    precise_bn: int = 0
    crop_pad: int = 0
    mirror: bool = False
    skip_corrupt_records: bool = False
    deterministic: bool = False
    verify_split: str = "auto"
    verify_interval: int = 0
    verify_flip: bool = False
    verify_bin: tuple = ()
    strategy: str = "auto"
    cpu_devices: int = 1
    export: str = "latest"
    freeze_backbone_iter: int = 0
    steps_per_execution: int = 1
    jit_compile: bool = False
    initial_loss_scale: float = 2.0 ** 15
    head: str = "softmax"
    scale: float | None = None
    margin: float | None = None
    easy_margin: bool = False
    sample_classes: float = 1.0
    embedding: str = "pool"
    embedding_dim: int = 128

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)
        fix("image_size", tuple(int(v) for v in self.image_size))
        fix("target_accuracy", tuple(float(t) for t in self.target_accuracy))
        fix("target", tuple(self.target))
        fix("verify_bin", tuple(self.verify_bin))
        if isinstance(self.schedule, dict):
            fix("schedule", schedules.ScheduleConfig(**self.schedule))
        if self.widths is not None:
            try:
                fix("widths", tuple(int(w) for w in self.widths))
            except ValueError:
                raise ConfigError(f"--widths must be integers, got {list(self.widths)}") from None
        self._check()

    def _check(self):
        for name, allowed in (("model", models.MODELS), ("norm", norms.NORMS),
                              ("precision", PRECISIONS), ("solver_type", SOLVER_TYPES),
                              ("verify_split", VERIFY_SPLITS), ("export", EXPORTS),
                              ("weight_filler", models.FILLERS), ("strategy", STRATEGIES),
                              ("head", heads.HEADS), ("embedding", heads.EMBEDDINGS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name}={getattr(self, name)} is not one of "
                                  f"{', '.join(allowed)}")
        for name in ("test_interval", "batch_size", "display", "channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ConfigError(f"the dataset in --data_dir={self.data_dir} has "
                              f"{self.num_classes} class(es); a classifier needs at least 2")
        for name in ("test_iter", "snapshot", "keep_checkpoints", "precise_bn", "crop_pad"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.verify_interval % self.test_interval:
            raise ConfigError(f"--verify_interval={self.verify_interval} is no multiple of "
                              f"--test_interval={self.test_interval}; verification runs at "
                              "tests")
        if self.test_interval > self.max_iter:
            raise ConfigError(f"--test_interval={self.test_interval} is larger than "
                              f"--max_iter={self.max_iter}; lower it so the run is tested")
        for name in ("momentum", "momentum2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight_decay must not be negative, got {self.weight_decay}")
        for name in ("bias_decay_mult", "bn_decay_mult", "bias_lr_mult"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.filler_std <= 0:
            raise ConfigError(f"--filler_std must be positive, got {self.filler_std}")
        if self.bias_lr_mult != 1 and self.solver_type not in ("SGD", "Nesterov"):
            raise ConfigError(f"--bias_lr_mult={self.bias_lr_mult:g} needs --solver_type=SGD or "
                              f"Nesterov: {self.solver_type} scales each step by the "
                              "gradient's own size, so a rate multiplier is no Caffe lr_mult "
                              "there")
        if self.delta <= 0:
            raise ConfigError(f"--delta must be positive, got {self.delta}")
        if self.bn_epsilon is not None and self.bn_epsilon < 0:
            raise ConfigError(f"--bn_epsilon must not be negative, got {self.bn_epsilon}")
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"--bn_momentum must lie in [0, 1), got {self.bn_momentum}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not self.target_accuracy or not all(0 < t <= 1 for t in self.target_accuracy):
            raise ConfigError(f"--target_accuracy must lie in (0, 1], got "
                              f"{list(self.target_accuracy)}")
        for text in self.target:
            try:
                metrics.parse_target(text)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.initial_loss_scale <= 0:
            raise ConfigError(f"--initial_loss_scale must be positive, got "
                              f"{self.initial_loss_scale:g}")
        if self.jit_compile and self.deterministic:
            raise ConfigError("--jit_compile and --deterministic exclude each other: Keras "
                              "turns XLA off under TensorFlow's op determinism; drop one")
        if self.strategy == "multi_worker" and (self.jit_compile or self.steps_per_execution > 1):
            raise ConfigError("--jit_compile and --steps_per_execution apply to Keras's fit (one "
                              "device or --strategy=mirrored); --strategy=multi_worker runs "
                              "each iteration as its own replicated step: drop them")
        self._check_executions()
        self._check_head()
        expected = len(models.default_widths(self.model))
        if self.widths is not None and len(self.widths) != expected:
            raise ConfigError(f"--widths for --model={self.model} takes {expected} values, "
                              f"got {len(self.widths)}")

    def _check_executions(self):
        """Iteration events land between executions of `steps_per_execution` iterations, so
        each must fall on a multiple of it: a test is then at its own iteration, not later."""
        every = self.steps_per_execution
        if every < 1:
            raise ConfigError(f"--steps_per_execution must be at least 1, got {every}")
        events = [("max_iter", self.max_iter), ("test_interval", self.test_interval),
                  ("display", self.display), ("snapshot", self.snapshot),
                  ("verify_interval", self.verify_interval),
                  ("freeze_backbone_iter", self.freeze_backbone_iter)]
        off = [f"--{name}={value}" for name, value in events if value % every]
        if off:
            raise ConfigError(f"--steps_per_execution={every} runs {every} iterations per call, "
                              f"so every iteration event must fall on a multiple of it: "
                              f"{', '.join(off)} {'is' if len(off) == 1 else 'are'} not; "
                              "change them or --steps_per_execution")

    def _check_head(self):
        margin_head = self.head != "softmax"
        if self.model in models.CIFAR_MODELS and (margin_head or self.embedding != "pool"):
            raise ConfigError(f"--head and --embedding apply to the face networks, not "
                              f"--model={self.model}; drop them")
        if not margin_head and (self.scale is not None or self.margin is not None):
            raise ConfigError("--scale and --margin set a margin head's loss, but "
                              "--head=softmax; add --head=cosface or --head=arcface")
        if self.easy_margin and self.head != "arcface":
            raise ConfigError("--easy_margin is ArcFace's; add --head=arcface or drop it")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"--scale must be positive, got {self.scale:g}")
        limit = 1.0 if self.head == "cosface" else math.pi / 2
        if self.margin is not None and not 0 <= self.margin < limit:
            raise ConfigError(f"--margin of --head={self.head} must lie in [0, {limit:.4g}), "
                              f"got {self.margin:g}")
        if self.embedding_dim < 1:
            raise ConfigError(f"--embedding_dim must be at least 1, got {self.embedding_dim}")
        if not 0 < self.sample_classes <= 1:
            raise ConfigError(f"--sample_classes must lie in (0, 1], got {self.sample_classes:g}")
        if self.sample_classes == 1:
            return
        if not margin_head:
            raise ConfigError("--sample_classes samples a margin head's centres (Partial FC); "
                              "add --head=cosface or --head=arcface")
        if self.solver_type not in ("SGD", "Nesterov") or self.iter_size > 1:
            raise ConfigError(f"--sample_classes={self.sample_classes:g} updates only the "
                              "centres it draws, which needs --solver_type=SGD or Nesterov and "
                              "--iter_size=1 (Adam's moments and accumulated gradients would "
                              "touch every centre)")
        count = heads.sample_count(self.num_classes, self.sample_classes)
        if count < self.batch_size:
            raise ConfigError(f"--sample_classes={self.sample_classes:g} draws {count} of "
                              f"{self.num_classes} centres, fewer than the {self.batch_size} "
                              "identities a batch may hold; raise it to at least "
                              f"{math.ceil(self.batch_size / self.num_classes * 1000) / 1000:g}")

    def targets(self):
        """Every target of the run as (metric, value): --target_accuracy's on test top-1,
        then --target's."""
        return ([("test_top1", t) for t in self.target_accuracy]
                + [metrics.parse_target(text) for text in self.target])

    @property
    def max_iter(self):
        return self.schedule.max_iter

    @property
    def iter_size(self):
        return self.schedule.iter_size

    def model_kwargs(self):
        """Keyword arguments of `models.build`."""
        return {"name": self.model, "num_classes": self.num_classes,
                "image_size": self.image_size, "channels": self.channels,
                "widths": self.widths, "dropout": self.dropout, "norm": self.norm,
                "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
                # AdamW decays in the optimizer, decoupled from the gradient.
                "weight_decay": 0.0 if self.solver_type == "AdamW" else self.weight_decay,
                "bias_decay_mult": self.bias_decay_mult, "bn_decay_mult": self.bn_decay_mult,
                "weight_filler": self.weight_filler, "filler_std": self.filler_std,
                "head": self.head, "scale": self.scale, "embedding": self.embedding,
                "embedding_dim": self.embedding_dim,
                # Partial FC decays the centres it draws in the optimizer (CaffeSGD).
                "decay_centres": self.sample_classes == 1}

    def to_dict(self):
        """Plain JSON-ready values (config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The config of `to_dict`'s values; fields newer than them take their defaults
        (a run from before --bias_decay_mult decayed its biases fully with decay_biases)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if values.get("decay_biases"):
            values = {**values, "bias_decay_mult": 1.0}
        return cls(**{k: v for k, v in values.items() if k in known})

    def differences(self, other):
        """(name, other's value, this value) of each run-defining setting that differs."""
        mine, theirs = flat(self.to_dict()), flat(other.to_dict())
        return [(name, theirs.get(name), mine.get(name)) for name in sorted(mine)
                if name not in NOT_RUN_DEFINING and mine.get(name) != theirs.get(name)]


def flat(values):
    """The config's values with the schedule's fields at the top, as the flags name them."""
    flat = {k: v for k, v in values.items() if k != "schedule"}
    flat.update(values["schedule"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}
