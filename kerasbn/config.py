"""The settings of one training run as a value: typed, checked once, saved as config.json.

A command's `main` makes a `RunConfig` from its flags and the dataset's manifest (`resolve`)
and passes it on; nothing below the command layer reads flags. Each field is a setting
declared once (`kerasbn.utils.settings.setting`): its default, help, bounds, choices and
whether it defines the run, from which the training flags are generated
(`kerasbn.flags.train_flags`) and each value is checked; field names are the flags' names, so
an error names the flag to change. `schedule` holds the learning-rate part, declared and
checked by `schedules.ScheduleConfig` itself.
"""

import dataclasses

from kerasbn.evaluation import target_metrics
from kerasbn.nn import models, norms, partial_fc, registry
from kerasbn.nn.networks import imported, study
from kerasbn.optim import schedules
from kerasbn.utils import errors, hardware, settings
from kerasbn.utils.settings import setting

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SOLVER_TYPES = ("SGD", "Nesterov", "Adam", "AdamW")
VERIFY_SPLITS = ("auto", "holdout", "none")
# How --verify_flip combines an image's embedding with its mirror image's.
FLIP_SUMS = ("unit", "raw")
EXPORTS = ("latest", "best")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
_DEFAULTS = {name: head.defaults for name, head in registry.HEADS.items()}


class ConfigError(errors.UserError):
    """Settings that cannot be used together; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every setting of a training run, each declared once with its flag's help, bounds and
    choices (docs/training.md explains them)."""

    data_dir: str = setting(help="Directory holding manifest.json and the TFRecord shards.")
    model: str = setting(
        "bn",
        "Network: the study's baseline, its BN network, bn_all (BN after every convolution), "
        "insightface's iresnet18/34/50/100 and mobilefacenet (images whose sides are "
        "multiples of 16, e.g. 112x112 RGB; --widths: kerasbn/nn/networks/iresnet.py and "
        "mobilefacenet.py say which), arcface_torch's ViTs vit_t/s/b (112x112 RGB), or "
        "Caffe's CIFAR-10 examples cifar10_quick and "
        "cifar10_full_sigmoid_bn.",
        choices=models.MODELS)
    norm: str = setting(
        "keras",
        "BN implementation for networks with BN: keras, the study's Caffe semantics bvlc, "
        "windows, nvidia (cuDNN engine, what the study ran) and nvidia_caffe (CPU engine), "
        "torch (PyTorch's BatchNorm2d, as arcface_torch's networks use it), renorm, sync "
        "(statistics across replicas), none.", choices=norms.NORMS)
    num_classes: int = setting(
        None, "Classes; default (and must equal): the manifest's.", lower=2, from_manifest=True)
    image_size: tuple = setting(
        None, "Input height and width; default (and must equal): the manifest's.", lower=1,
        from_manifest=True)
    channels: int = setting(help="Image channels: the manifest's.", lower=1, flag=False)
    widths: tuple | None = setting(
        None, "Convolution widths in order (default: the study's).", kind="list")
    dropout: float | None = setting(
        None, "Dropout before the classifier (default: the network's, 0.4 for baseline, 0 for "
        "bn).",
        lower=0, upper=1, upper_open=True)
    bn_momentum: float | None = setting(
        None,
        "BN moving-average momentum, Keras convention: the weight of the old statistic (= Caffe "
        "moving_average_fraction = caffe-windows decay; PyTorch momentum = 1 - this). Default: "
        "the --norm's own (keras 0.99, bvlc/nvidia 0.999, windows 0.95).", lower=0, upper=1,
        upper_open=True)
    bn_epsilon: float | None = setting(
        None,
        "BN epsilon added to the variance. Default: the --norm's own (keras 1e-3, Caffe 1e-5, "
        "windows 1e-10).", lower=0)
    head: str = setting(
        "softmax",
        "Classifier and loss: softmax (the study's), cosface (additive cosine margin) or arcface "
        "(additive angular margin), the margin heads on L2-normalised features and centres.",
        choices=models.HEADS)
    scale: float | None = setting(
        None, "Margin heads: the scale s of the cosine logits (default: cosface "
        f"{_DEFAULTS['cosface'][0]:g}, arcface {_DEFAULTS['arcface'][0]:g}; the field "
        "uses 30-64, and past 1,000 the softmax saturates: every gradient 0 or 1).",
        lower=0, upper=1000, lower_open=True)
    margin: float | None = setting(
        None, "Margin heads: the margin m, cosine for cosface, radians for arcface (default: "
        f"cosface {_DEFAULTS['cosface'][1]:g}, arcface {_DEFAULTS['arcface'][1]:g}).",
        lower=0, upper=1.5707)
    easy_margin: bool = setting(
        False, "arcface: the margin only where cos > 0 (the original's easy_margin; default: its "
        "threshold fallback).")
    margins: tuple = setting(
        tuple(map(str, registry.DEFAULT_MARGINS)),
        "--head=combined: insightface's margin_list m1,m2,m3 (1,0.5,0 "
        "ArcFace, 1,0,0.4 CosFace), as today's CombinedMarginLoss applies them.", kind="list")
    interclass_filtering_threshold: float = setting(
        0.0, "--head=combined: a class other than the true one whose cosine exceeds this "
        "counts 0 in the softmax (insightface's *_filter04 configs; 0: none).", lower=0,
        upper=1, upper_open=True)
    sample_classes: float = setting(
        1.0, "Margin heads: the fraction F of class centres each training step takes logits over "
        "(Partial FC): the batch's classes plus random others; what moves the centres not drawn "
        "is --sample_update. 1: all, exact.", lower=0, upper=1, lower_open=True)
    sample_update: str = setting(
        "drawn", "Partial FC: drawn (insightface's first Partial FC; a step costs the drawn rows "
        "only) updates only the centres drawn, their momentum and weight decay with them; all "
        "(insightface's PartialFC_V2) lets momentum and weight decay act on every centre each "
        "step, the undrawn ones with a zero gradient.", choices=("drawn", "all"))
    shard_classes: bool = setting(
        False, "Margin heads: shard the class centres across the replicas, as arcface_torch's "
        "PartialFC_V2 does (replica r holds classes [r*C/R, (r+1)*C/R) and their momentum; a "
        "softmax across replicas; --sample_classes draws within each shard). Resumes on any "
        "replica count.")
    embedding: str = setting(
        "pool",
        "The feature the classifier takes: pool (the pooled 320-d layer, the study's) or bn_fc "
        "(insightface's neck on it: BN, dropout, a fully connected layer to --embedding_dim, BN).",
        choices=study.EMBEDDINGS)
    embedding_dim: int = setting(128, "--embedding=bn_fc: the embedding's width.", lower=1)
    batch_size: int = setting(128, "Images per iteration (global, over all replicas).", lower=1)
    schedule: schedules.ScheduleConfig = schedules.ScheduleConfig()
    solver_type: str = setting(
        "SGD",
        "Caffe solver type. SGD, Nesterov and Adam use Caffe's coupled weight decay (an L2 term "
        "in the gradient); AdamW decouples it, as its paper defines: w -= lr * weight_decay * w, "
        "apart from the gradient step.", choices=SOLVER_TYPES)
    sgd: str = setting(
        "caffe", "Where SGD/Nesterov keep the rate: caffe (inside the momentum buffer, v = m v + "
        "lr g; w -= v) or torch (outside it, buf = m buf + g; w -= lr buf, as torch.optim.SGD "
        "and arcface_torch); equal while the rate is constant.", choices=("caffe", "torch"))
    clip_grad_norm: float = setting(
        0.0, "Clip the global L2 norm of the backbone's gradients (every one but the "
        "classifier's) to this, as arcface_torch clips them to 5 (0: no clipping).", lower=0)
    momentum: float = setting(
        0.9, "SGD/Nesterov momentum; Adam's beta_1 (BN's is --bn_momentum).", lower=0, upper=1,
        upper_open=True)
    momentum2: float = setting(
        0.999, "Adam/AdamW beta_2 (Caffe momentum2).", lower=0, upper=1, upper_open=True)
    delta: float = setting(1e-08, "Adam/AdamW epsilon (Caffe delta).", lower=0, lower_open=True)
    weight_decay: float = setting(
        0.0005, "Caffe weight_decay on kernels (= Keras L2 of wd/2).", lower=0)
    bias_decay_mult: float = setting(
        0.0,
        "Caffe decay_mult of the biases: their weight decay is --weight_decay times this (Caffe's"
        " default 1; kerasbn's 0, biases undecayed).", lower=0)
    bn_decay_mult: float = setting(
        0.0,
        "Caffe decay_mult of BN's scale and shift (a Caffe Scale layer's default 1; kerasbn's 0).",
        lower=0)
    prelu_decay_mult: float = setting(
        0.0, "Decay multiplier of PReLU's slopes (arcface_torch's SGD decays every parameter: "
        "1; kerasbn's default 0, undecayed).", lower=0)
    bias_lr_mult: float = setting(
        1.0, "Caffe lr_mult of the biases (prototxts commonly 2); SGD and Nesterov only.", lower=0)
    weight_filler: str = setting(
        "network", "Caffe weight filler of every kernel: xavier (uniform +-sqrt(3/fan_in)), msra "
        "(untruncated Gaussian, std sqrt(2/fan_in)), gaussian (std --filler_std), keras "
        "(glorot_uniform), network (each network's own: insightface's for the field networks, "
        "the prototxt's per-layer Gaussians for CIFAR-10's).", choices=models.FILLERS)
    zero_init_residual: bool = setting(
        False, "IResNet: each block's bn2 scale starts at 0 (insightface's zero_init_residual).")
    drop_path: float | None = setting(
        None, "ViTs: stochastic depth, the last block's drop probability (the first's 0, "
        "linear between; default: the network's, 0.1).", lower=0, upper=1, upper_open=True)
    mask_ratio: float | None = setting(
        None, "ViTs: the fraction of patch tokens dropped in training, a learned mask token "
        "in their place after the blocks (default: the network's, 0.1).", lower=0, upper=1,
        upper_open=True)
    filler_std: float = setting(
        0.01, "--weight_filler=gaussian: its std.", lower=0, lower_open=True)
    num_epoch: int = setting(
        0, "Epochs to train: --max_iter becomes (training images // --batch_size) * N, as "
        "arcface_torch's train_v2.py derives total_step (0: --max_iter as given).", lower=0)
    warmup_epoch: int = setting(
        0, "With --num_epoch: --warmup_iter becomes (training images // --batch_size) * N, as "
        "train_v2.py derives warmup_step.", lower=0)
    test_interval: int = setting(5000, "Test every this many iterations.", lower=1)
    test_iter: int = setting(0, "Test batches per test; 0 = the whole test split.", lower=0)
    test_initialization: bool = setting(True, "Also test at iteration 0, as Caffe does.")
    display: int = setting(
        100, "Print and log loss, lr and images/s every N iterations.", lower=1,
        run_defining=False)
    snapshot: int = setting(5000, "Checkpoint every N iterations (0: only at the end).", lower=0)
    keep_checkpoints: int = setting(3, "Newest checkpoints kept.", lower=1, run_defining=False)
    run_dir: str = setting(
        help="Directory for everything about the run; rerunning on it resumes.",
        run_defining=False)
    precision: str = setting(
        "float32",
        "Keras dtype policy; auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native "
        "bfloat16 (AVX512-BF16 or AMX), else float32.", choices=PRECISIONS, flag_choices=("auto",))
    seed: int = setting(0, "Seed for weights and data order.", lower=0)
    target_accuracy: tuple = setting(
        (0.8,),
        "Test top-1 targets (repeatable): the first tested iteration and wall time reaching each "
        "are reported.", lower=0, upper=1, lower_open=True, kind="multi_float", run_defining=False)
    target: tuple = setting(
        (), "A target on any recorded metric, METRIC:VALUE (repeatable; e.g. test_top1:0.8, "
        "verify_acc:0.9): the first tested iteration and wall time reaching it are reported, as "
        "for --target_accuracy (the top-1 shorthand).", kind="multi_string", run_defining=False)
    stop_at_target: bool = setting(
        False, "End the run once every --target_accuracy is reached (for hyper-parameter search).")
    weights: str | None = setting(
        None,
        "Initialise from another run: its run dir, a checkpoint, or its exported SavedModel (as "
        "Caffe's --weights).", run_defining=False)
    backbone: str | None = setting(
        None,
        "Train an imported network (an export written by python -m kerasbn.caffe_import): its "
        "layers up to its embedding become the backbone under --head, its BN layers keeping "
        "their Caffe semantics and statistics; --model, --widths and --norm do not apply.")
    input_norm: tuple = setting(
        (), "With --backbone: the dataset's (mean, std), undone before the imported network, "
        "which preprocesses pixels itself.", flag=False)
    precise_bn: int = setting(
        0,
        "Before each test, recompute BN running statistics as the average over N training batches"
        " (0: off), so the test curve does not jump with stale moving averages.", lower=0)
    crop_pad: int = setting(
        0, "Training augmentation: pad by N pixels, random crop back.", lower=0)
    mirror: bool = setting(False, "Training augmentation: random horizontal mirror.")
    deterministic: bool = setting(
        False,
        "TensorFlow's deterministic ops: the same seed gives bit-identical weights, also across a"
        " resume (slower).", run_defining=False)
    verify_split: str = setting(
        "auto",
        "Face verification on identities never trained on: embed the holdout split and score its "
        "pairs (10-fold accuracy, AUC, EER, TAR@FAR). auto: when the dataset has holdout pairs.",
        choices=VERIFY_SPLITS, run_defining=False)
    verify_interval: int = setting(
        0, "Verify every N iterations (a multiple of --test_interval; 0: at every test).", lower=0,
        run_defining=False)
    verify_bin: tuple = setting(
        (),
        "An insightface verification set (lfw.bin, cfp_fp.bin, ...; repeatable) verified with the"
        " holdout pairs, its figures recorded as NAME_acc, NAME_auc, ... (lfw_acc).",
        kind="multi_string", run_defining=False)
    verify_flip: bool = setting(
        False, "Sum each holdout embedding with its mirror image's, as insightface does.",
        run_defining=False)
    flip_sum: str = setting(
        "unit", "--verify_flip: unit sums the two views' L2-normalised embeddings (each view "
        "counts the same); raw sums the raw embeddings, normalised after, as insightface's "
        "verification.py does.", choices=FLIP_SUMS, run_defining=False)
    freeze_backbone_iter: int = setting(
        0, "Fine-tuning: train only the classifier for the first N iterations (every other layer "
        "frozen, BN on its moving statistics), then every layer.", lower=0)
    strategy: str = setting(
        "auto",
        "tf.distribute strategy: auto (mirrored over every GPU when there are several, else one "
        "device), one_device, mirrored (every GPU, else every logical CPU device), multi_worker "
        "(the cluster in TF_CONFIG). --batch_size stays the global batch; a run resumes under "
        "another strategy.", choices=STRATEGIES, run_defining=False)
    cpu_devices: int = setting(
        1,
        "Split the CPU into N logical devices, so --strategy=mirrored can be tried on a machine "
        "without GPUs.", lower=1, upper=64, run_defining=False)
    export: str = setting(
        "latest", "The SavedModel written at the end: the last weights, or the best test's "
        "(checkpoints/best).", choices=EXPORTS, run_defining=False)
    steps_per_execution: int = setting(
        1,
        "Iterations run per call into TensorFlow (Keras's steps_per_execution): fewer host round "
        "trips per step. Every event interval (--test_interval, --display, --snapshot, ...) and "
        "--max_iter must be a multiple of it. Under --strategy=multi_worker (kerasbn's own loop) "
        "calls stay single.", lower=1, upper=100000, run_defining=False)
    jit_compile: bool = setting(False, "Compile the training step with XLA.", run_defining=False)
    initial_loss_scale: float = setting(
        2.0 ** 15,
        "--precision=mixed_float16: the dynamic loss scale to start from (Keras's 32768); it "
        "halves at each overflow, which skips that update, and doubles after 2,000 finite steps.",
        lower=1e-08)
    skip_corrupt_records: bool = setting(
        False,
        "Train and test on what is readable of corrupt or truncated shards (each is named, with "
        "what it lost) instead of stopping.", run_defining=False)

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)
        fix("image_size", tuple(int(v) for v in self.image_size))
        fix("target_accuracy", tuple(float(t) for t in self.target_accuracy))
        fix("target", tuple(self.target))
        fix("verify_bin", tuple(self.verify_bin))
        fix("input_norm", tuple(tuple(float(v) for v in part) for part in self.input_norm))
        if isinstance(self.schedule, dict):
            fix("schedule", schedules.ScheduleConfig(**self.schedule))
        if self.widths is not None:
            try:
                fix("widths", tuple(int(w) for w in self.widths))
            except ValueError:
                raise ConfigError(f"--widths must be integers, got {list(self.widths)}") from None
        try:
            fix("margins", tuple(float(m) for m in self.margins))
        except ValueError:
            raise ConfigError(f"--margins must be three numbers m1,m2,m3, got "
                              f"{','.join(map(str, self.margins))}") from None
        self._check()

    def _check(self):
        if self.num_classes < 2:
            raise ConfigError(f"the dataset in --data_dir={self.data_dir} has "
                              f"{self.num_classes} class(es); a classifier needs at least 2")
        settings.check(self, ConfigError)
        if self.verify_interval % self.test_interval:
            raise ConfigError(f"--verify_interval={self.verify_interval} is no multiple of "
                              f"--test_interval={self.test_interval}; verification runs at "
                              "tests")
        if self.test_interval > self.max_iter:
            raise ConfigError(f"--test_interval={self.test_interval} is larger than "
                              f"--max_iter={self.max_iter}; lower it so the run is tested")
        if self.bias_lr_mult != 1 and self.solver_type not in ("SGD", "Nesterov"):
            raise ConfigError(f"--bias_lr_mult={self.bias_lr_mult:g} needs --solver_type=SGD or "
                              f"Nesterov: {self.solver_type} scales each step by the "
                              "gradient's own size, so a rate multiplier is no Caffe lr_mult "
                              "there")
        if not self.target_accuracy:
            raise ConfigError("--target_accuracy needs at least one value in (0, 1]")
        for text in self.target:
            try:
                target_metrics.parse_target(text)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.jit_compile and self.deterministic:
            raise ConfigError("--jit_compile and --deterministic exclude each other: Keras "
                              "turns XLA off under TensorFlow's op determinism; drop one")
        if self.strategy == "multi_worker" and (self.jit_compile or self.steps_per_execution > 1):
            raise ConfigError("--jit_compile and --steps_per_execution apply to Keras's fit (one "
                              "device or --strategy=mirrored); --strategy=multi_worker runs "
                              "each iteration as its own replicated step: drop them")
        self._check_executions()
        problem = models.problem(self.network()) or registry.head_problem(self)
        if problem:
            raise ConfigError(problem)
        self._check_sampling()
        self._check_sharding()

    def _check_executions(self):
        """Iteration events land between executions of `steps_per_execution` iterations, so
        each must fall on a multiple of it: a test is then at its own iteration, not later."""
        every = self.steps_per_execution
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

    def _check_sharding(self):
        """--shard_classes's rules: a margin head's centres, moved by the SGD rule the shards
        apply themselves, one update a step."""
        if not self.shard_classes:
            return
        problems = [text for bad, text in [
            (not registry.HEADS[self.head].samples, _sampling_heads()),
            (self.solver_type not in ("SGD", "Nesterov"), "--solver_type=SGD or Nesterov"),
            (self.iter_size > 1, "--iter_size=1"),
            (self.freeze_backbone_iter > 0, "no --freeze_backbone_iter (the step moves the "
             "shards beside the backbone's optimizer, which a frozen backbone leaves idle)"),
            (self.jit_compile, "no --jit_compile (XLA does not compile the step's "
             "collectives here)")] if bad]
        if problems:
            raise ConfigError("--shard_classes shards a margin head's centres and moves them "
                              "by SGD each step; it needs " + ", ".join(problems))

    def _check_sampling(self):
        """Partial FC's rules: it samples a margin head's centres, under a solver that
        touches only the rows drawn, and draws at least a batch's identities."""
        if self.sample_classes == 1:
            if self.sample_update != "drawn":
                raise ConfigError(f"--sample_update={self.sample_update} sets how Partial FC "
                                  "moves the centres it did not draw; add --sample_classes")
            return
        if not registry.HEADS[self.head].samples:
            raise ConfigError("--sample_classes samples a margin head's centres (Partial FC); "
                              "add " + _sampling_heads())
        if self.sample_update == "drawn" and (self.solver_type not in ("SGD", "Nesterov")
                                              or self.iter_size > 1):
            raise ConfigError(f"--sample_classes={self.sample_classes:g} updates only the "
                              "centres it draws, which needs --solver_type=SGD or Nesterov and "
                              "--iter_size=1 (Adam's moments and accumulated gradients would "
                              "touch every centre); or add --sample_update=all, which moves "
                              "every centre each step as PartialFC_V2 does")
        count = partial_fc.sample_count(self.num_classes, self.sample_classes)
        if count < self.batch_size:
            raise ConfigError(f"--sample_classes={self.sample_classes:g} draws {count} of "
                              f"{self.num_classes} centres, fewer than the {self.batch_size} "
                              "identities a batch may hold; raise it to at least "
                              f"{partial_fc.least_fraction(self.batch_size, self.num_classes):g}")

    def flip(self):
        """How verification embeds a face: False (one view), or how the two views are
        summed (FLIP_SUMS), as `holdout.embed_step` takes it."""
        return self.flip_sum if self.verify_flip else False

    def targets(self):
        """Every target of the run as (metric, value): --target_accuracy's on test top-1,
        then --target's."""
        return ([("test_top1", t) for t in self.target_accuracy]
                + [target_metrics.parse_target(text) for text in self.target])

    @property
    def max_iter(self):
        return self.schedule.max_iter

    @property
    def iter_size(self):
        return self.schedule.iter_size

    def network(self):
        """The `models.NetworkSettings` of this run, taken by name from its settings."""
        names = {field.name for field in dataclasses.fields(models.NetworkSettings)}
        return models.NetworkSettings(**{
            **{name: getattr(self, name) for name in names if hasattr(self, name)},
            "name": self.model,
            # AdamW decays in the optimizer, decoupled from the gradient.
            "weight_decay": 0.0 if self.solver_type == "AdamW" else self.weight_decay,
            # Partial FC decays the centres it draws in the optimizer (CaffeSGD).
            "decay_centres": self.sample_classes == 1})

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


def _sampling_heads():
    """The heads whose centres Partial FC and --shard_classes take, as the flags to add."""
    return "--head=" + " or --head=".join(
        name for name, head in registry.HEADS.items() if head.samples)


def declared():
    """[(field, Spec)] of every training setting in flag order: the run's, with the
    schedule's in the place of `schedule`."""
    out = []
    for field in dataclasses.fields(RunConfig):
        if field.name == "schedule":
            out += settings.declared(schedules.ScheduleConfig)
        elif "setting" in field.metadata:
            out.append((field, field.metadata["setting"]))
    return out


# Settings that may change between a run and its resumption: where it lives and what it
# reports (targets are measured afresh from the whole metrics history).
NOT_RUN_DEFINING = tuple(field.name for field, spec in declared() if not spec.run_defining)
_SCHEDULE = tuple(field.name for field in dataclasses.fields(schedules.ScheduleConfig))


def resolve(values, manifest, manifest_path="manifest.json"):
    """The `RunConfig` of the training settings `values` ({flag name: value}, as the flags
    give them) on the dataset of `manifest`.

    The class count, image size and channels come from the manifest; --num_classes and
    --image_size, when given, must agree with it. --precision=auto becomes this machine's.
    """
    classes = manifest.num_classes
    height, width = manifest.image_size
    if values.get("num_classes") is not None and values["num_classes"] != classes:
        raise ConfigError(f"--num_classes={values['num_classes']} but {manifest_path} has "
                          f"{classes} classes; drop --num_classes or use the right dataset")
    if values.get("image_size") is not None and [values["image_size"]] * 2 != [height, width]:
        raise ConfigError(f"--image_size={values['image_size']} but {manifest_path} holds "
                          f"{height}x{width} images; drop --image_size or rebuild the data")
    values = {**values, **epochs(values, manifest)}
    run = {field.name: values[field.name] for field, spec in declared()
           if field.name in values and field.name not in _SCHEDULE and not spec.from_manifest}
    if run.get("precision") == "auto":
        run["precision"] = hardware.auto_precision()
    if run.get("backbone"):
        problem = imported.check(run["backbone"], (height, width), manifest.channels)
        if problem:
            raise ConfigError(problem)
        run["input_norm"] = (manifest.mean, manifest.std)
    config = RunConfig(num_classes=classes, image_size=(height, width),
                       channels=manifest.channels, schedule=schedule_of(values), **run)
    _check_verification(config, manifest, manifest_path)
    return config


def epochs(values, manifest):
    """{max_iter, warmup_iter} of `--num_epoch` and `--warmup_epoch` as arcface_torch's
    train_v2.py derives them (steps per epoch: the training images // the global batch, so
    a last partial batch is not a step), or {} without --num_epoch."""
    num_epoch, warmup_epoch = values.get("num_epoch") or 0, values.get("warmup_epoch") or 0
    if not num_epoch:
        if warmup_epoch:
            raise ConfigError(f"--warmup_epoch={warmup_epoch} counts epochs of --num_epoch; "
                              "give --num_epoch, or --warmup_iter instead")
        return {}
    batch = values.get("batch_size") or RunConfig.batch_size
    per_epoch = manifest.splits["train"].count // batch
    if per_epoch < 1:
        raise ConfigError(f"--num_epoch={num_epoch}: the {manifest.splits['train'].count} "
                          f"training images make no batch of --batch_size={batch}")
    if warmup_epoch >= num_epoch:
        raise ConfigError(f"--warmup_epoch={warmup_epoch} must be fewer than --num_epoch="
                          f"{num_epoch}")
    return {"max_iter": per_epoch * num_epoch, "warmup_iter": per_epoch * warmup_epoch}


def _check_verification(config, manifest, manifest_path):
    """Refuses verification the dataset cannot give, and targets on figures the run will
    never record (they would be reported as never reached)."""
    if config.verify_split == "holdout" and not manifest.has_holdout_pairs:
        raise ConfigError(f"--verify_split=holdout but {manifest_path} has no holdout pairs; "
                          "rebuild the dataset with --holdout_identities and --pairs, or drop "
                          "the flag")
    if config.verify_split != "none" and manifest.has_holdout_pairs:
        return
    why = ("--verify_split=none" if config.verify_split == "none"
           else f"{manifest_path} has no holdout pairs")
    for text in config.target:
        if target_metrics.parse_target(text)[0].startswith("verify_"):
            raise ConfigError(f"--target={text} is a verification figure, but this run never "
                              f"verifies ({why}); drop the target, or verify on a dataset "
                              "with holdout pairs")


def network_name(model, backbone=None):
    """How a run's network is named to a person: --model, or, for a --backbone run (whose
    --model does not apply), the imported network it trains."""
    return f"imported {backbone}" if backbone else model


def schedule_of(values):
    """The `ScheduleConfig` of the training settings `values` (raises ScheduleError)."""
    return schedules.ScheduleConfig(**{name: values[name] for name in _SCHEDULE
                                       if name in values})


def flat(values):
    """The config's values with the schedule's fields at the top, as the flags name them."""
    flat = {k: v for k, v in values.items() if k != "schedule"}
    flat.update(values["schedule"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}
