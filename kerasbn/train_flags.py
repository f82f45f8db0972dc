"""The training flags (DESIGN.md's core flags), shared by the commands that train, and their
conversion to a `RunConfig`.

    values, _ = cli.parse(argv, train_flags.define)
    config = train_flags.to_config(values, records.read_manifest(values.data_dir))

`flags.txt` in a run dir holds them as the user gave them (a reusable flagfile); a run from
before config.json is read back through here.
"""

import os

import tensorflow as tf
from absl import flags

from kerasbn import cli, config, heads, models, norms, records, schedules
from kerasbn.run_dir import RunDir

_SCHEDULE = [field for field in schedules.ScheduleConfig.__dataclass_fields__]


def define(values):
    """Defines the training flags on FlagValues `values`."""
    on = {"flag_values": values}
    flags.DEFINE_string("data_dir", None, "Directory holding manifest.json and the TFRecord "
                        "shards.", **on)
    flags.DEFINE_enum("model", "bn", models.MODELS, "Network: the study's baseline, its BN "
                      "network, bn_all (BN after every convolution), or Caffe's CIFAR-10 "
                      "examples cifar10_quick and cifar10_full_sigmoid_bn.", **on)
    flags.DEFINE_enum("norm", "keras", norms.NORMS, "BN implementation for networks with BN: "
                      "keras, the study's Caffe semantics bvlc, windows, nvidia (cuDNN engine, "
                      "what the study ran) and nvidia_caffe (CPU engine), renorm, sync "
                      "(statistics across replicas), none.", **on)
    flags.DEFINE_integer("num_classes", None, "Classes; default (and must equal): the "
                         "manifest's.", lower_bound=2, **on)
    flags.DEFINE_integer("image_size", None, "Input height and width; default (and must "
                         "equal): the manifest's.", lower_bound=1, **on)
    flags.DEFINE_list("widths", None, "Convolution widths in order (default: the study's).",
                      **on)
    flags.DEFINE_float("dropout", None, "Dropout before the classifier (default: the "
                       "network's, 0.4 for baseline, 0 for bn).",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_float("bn_momentum", None, "BN moving-average momentum, Keras convention: "
                       "the weight of the old statistic (= Caffe moving_average_fraction = "
                       "caffe-windows decay; PyTorch momentum = 1 - this). Default: the "
                       "--norm's own (keras 0.99, bvlc/nvidia 0.999, windows 0.95).",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_float("bn_epsilon", None, "BN epsilon added to the variance. Default: the "
                       "--norm's own (keras 1e-3, Caffe 1e-5, windows 1e-10).", lower_bound=0, **on)
    flags.DEFINE_enum("head", "softmax", heads.HEADS, "Classifier and loss: softmax (the "
                      "study's), cosface (additive cosine margin) or arcface (additive angular "
                      "margin), the margin heads on L2-normalised features and centres.", **on)
    flags.DEFINE_float("scale", None, "Margin heads: the scale s of the cosine logits "
                       f"(default: cosface {heads.DEFAULTS['cosface'][0]:g}, arcface "
                       f"{heads.DEFAULTS['arcface'][0]:g}).", lower_bound=0, **on)
    flags.DEFINE_float("margin", None, "Margin heads: the margin m, cosine for cosface, "
                       f"radians for arcface (default: cosface {heads.DEFAULTS['cosface'][1]:g}"
                       f", arcface {heads.DEFAULTS['arcface'][1]:g}).", lower_bound=0,
                       upper_bound=1.5707, **on)
    flags.DEFINE_bool("easy_margin", False, "arcface: the margin only where cos > 0 (the "
                      "original's easy_margin; default: its threshold fallback).", **on)
    flags.DEFINE_float("sample_classes", 1.0, "Margin heads: the fraction F of class centres "
                       "each training step takes logits over (Partial FC): the batch's "
                       "classes plus random others; centres not drawn are not updated. 1: "
                       "all, exact.", lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_enum("embedding", "pool", heads.EMBEDDINGS, "The feature the classifier "
                      "takes: pool (the pooled 320-d layer, the study's) or bn_fc "
                      "(insightface's neck on it: BN, dropout, a fully connected layer to "
                      "--embedding_dim, BN).", **on)
    flags.DEFINE_integer("embedding_dim", 128, "--embedding=bn_fc: the embedding's width.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("batch_size", 128, "Images per iteration (global, over all "
                         "replicas).", lower_bound=1, **on)
    flags.DEFINE_float("base_lr", 0.01, "Caffe base_lr.", lower_bound=0, **on)
    flags.DEFINE_enum("lr_policy", "multistep", schedules.POLICIES,
                      "Caffe lr_policy (fixed, step, exp, inv, multistep, poly, sigmoid), "
                      "stepwise_then_jump, or a study preset: long_step, short_step, "
                      "multistep_no_dropout (iterations scaled to --max_iter).", **on)
    flags.DEFINE_float("gamma", 0.1, "Caffe gamma of step, exp, inv, multistep and sigmoid "
                       "(negative only for sigmoid, whose rate then decays).", **on)
    flags.DEFINE_float("power", 1.0, "Caffe power of inv and poly.", **on)
    flags.DEFINE_integer("stepsize", 10000, "Caffe stepsize of step and sigmoid.",
                         lower_bound=1, **on)
    flags.DEFINE_multi_integer("stepvalue", [], "multistep: iterations at which lr *= gamma.",
                               lower_bound=1, **on)
    flags.DEFINE_enum("smooth_policy", "step", schedules.SMOOTH_POLICIES,
                      "stepwise_then_jump: the smooth phase's Caffe policy (with --gamma, "
                      "--power, --stepsize).", **on)
    flags.DEFINE_integer("smooth_until", 150000, "stepwise_then_jump: the rate is held from "
                         "here.", lower_bound=1, **on)
    flags.DEFINE_float("jump_gamma", 0.1, "stepwise_then_jump: the factor at each --jump_at.",
                       lower_bound=0, **on)
    flags.DEFINE_multi_integer("jump_at", [], "stepwise_then_jump: iterations (after "
                               "--smooth_until) at which lr *= jump_gamma.", lower_bound=1, **on)
    flags.DEFINE_integer("schedule_iters", 0, "The run length that --stepsize, --stepvalue, "
                         "--smooth_until and --jump_at are written for; they scale to "
                         "--max_iter as the study's policies do (0: as written).",
                         lower_bound=0, **on)
    flags.DEFINE_integer("warmup_iter", 0, "Linear warm-up over the first N iterations.",
                         lower_bound=0, **on)
    flags.DEFINE_enum("solver_type", "SGD", config.SOLVER_TYPES,
                      "Caffe solver type. SGD, Nesterov and Adam use Caffe's coupled weight "
                      "decay (an L2 term in the gradient); AdamW decouples it, as its paper "
                      "defines: w -= lr * weight_decay * w, apart from the gradient step.", **on)
    flags.DEFINE_float("momentum", 0.9, "SGD/Nesterov momentum; Adam's beta_1 (BN's is "
                       "--bn_momentum).", lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_float("momentum2", 0.999, "Adam/AdamW beta_2 (Caffe momentum2).",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_float("delta", 1e-8, "Adam/AdamW epsilon (Caffe delta).", lower_bound=0, **on)
    flags.DEFINE_float("weight_decay", 5e-4, "Caffe weight_decay on kernels (= Keras L2 of "
                       "wd/2).", lower_bound=0, **on)
    flags.DEFINE_float("bias_decay_mult", 0.0, "Caffe decay_mult of the biases: their "
                       "weight decay is --weight_decay times this (Caffe's default 1; kerasbn's "
                       "0, biases undecayed).", lower_bound=0, **on)
    flags.DEFINE_float("bn_decay_mult", 0.0, "Caffe decay_mult of BN's scale and shift (a Caffe "
                       "Scale layer's default 1; kerasbn's 0).", lower_bound=0, **on)
    flags.DEFINE_float("bias_lr_mult", 1.0, "Caffe lr_mult of the biases (prototxts commonly "
                       "2); SGD and Nesterov only.", lower_bound=0, **on)
    flags.DEFINE_enum("weight_filler", "network", models.FILLERS, "Caffe weight filler of "
                      "every kernel: xavier (uniform +-sqrt(3/fan_in)), msra (untruncated "
                      "Gaussian, std sqrt(2/fan_in)), gaussian (std --filler_std), keras "
                      "(glorot_uniform), network (each network's own: he_normal for the face "
                      "networks, the prototxt's per-layer Gaussians for CIFAR-10's).", **on)
    flags.DEFINE_float("filler_std", 0.01, "--weight_filler=gaussian: its std.",
                       lower_bound=0, **on)
    flags.DEFINE_integer("iter_size", 1, "Batches accumulated per weight update (Caffe "
                         "iter_size): the effective batch is batch_size * iter_size. BN "
                         "statistics still come from each batch of --batch_size.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("max_iter", 420000, "Iterations (weight updates) to train.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("test_interval", 5000, "Test every this many iterations.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("test_iter", 0, "Test batches per test; 0 = the whole test split.",
                         lower_bound=0, **on)
    flags.DEFINE_bool("test_initialization", True, "Also test at iteration 0, as Caffe does.",
                      **on)
    flags.DEFINE_integer("display", 100, "Print and log loss, lr and images/s every N "
                         "iterations.", lower_bound=1, **on)
    flags.DEFINE_integer("snapshot", 5000, "Checkpoint every N iterations (0: only at the "
                         "end).", lower_bound=0, **on)
    flags.DEFINE_integer("keep_checkpoints", 3, "Newest checkpoints kept.", lower_bound=1, **on)
    flags.DEFINE_string("run_dir", None, "Directory for everything about the run; rerunning "
                        "on it resumes.", **on)
    flags.DEFINE_bool("overwrite", False, "Start over in a --run_dir that holds another run "
                      "(deletes only the files a run writes).", **on)
    flags.DEFINE_enum("precision", "float32", config.PRECISIONS + ("auto",), "Keras dtype "
                      "policy; auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with "
                      "native bfloat16 (AVX512-BF16 or AMX), else float32.", **on)
    flags.DEFINE_integer("seed", 0, "Seed for weights and data order.", lower_bound=0, **on)
    flags.DEFINE_multi_float("target_accuracy", [0.8], "Test top-1 targets (repeatable): the "
                             "first tested iteration and wall time reaching each are "
                             "reported.", lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_multi_string("target", [], "A target on any recorded metric, METRIC:VALUE "
                              "(repeatable; e.g. test_top1:0.8, verify_acc:0.9): the first "
                              "tested iteration and wall time reaching it are reported, as for "
                              "--target_accuracy (the top-1 shorthand).", **on)
    flags.DEFINE_bool("stop_at_target", False, "End the run once every --target_accuracy is "
                      "reached (for hyper-parameter search).", **on)
    flags.DEFINE_string("weights", None, "Initialise from another run: its run dir, a "
                        "checkpoint, or its exported SavedModel (as Caffe's --weights).", **on)
    flags.DEFINE_integer("precise_bn", 0, "Before each test, recompute BN running statistics "
                         "as the average over N training batches (0: off), so the test curve "
                         "does not jump with stale moving averages.", lower_bound=0, **on)
    flags.DEFINE_integer("crop_pad", 0, "Training augmentation: pad by N pixels, random crop "
                         "back.", lower_bound=0, **on)
    flags.DEFINE_bool("mirror", False, "Training augmentation: random horizontal mirror.", **on)
    flags.DEFINE_bool("deterministic", False, "TensorFlow's deterministic ops: the same "
                      "seed gives bit-identical weights, also across a resume (slower).", **on)
    flags.DEFINE_enum("verify_split", "auto", config.VERIFY_SPLITS, "Face verification on "
                      "identities never trained on: embed the holdout split and score its "
                      "pairs (10-fold accuracy, AUC, EER, TAR@FAR). auto: when the dataset "
                      "has holdout pairs.", **on)
    flags.DEFINE_integer("verify_interval", 0, "Verify every N iterations (a multiple of "
                         "--test_interval; 0: at every test).", lower_bound=0, **on)
    flags.DEFINE_multi_string("verify_bin", [], "An insightface verification set (lfw.bin, "
                              "cfp_fp.bin, ...; repeatable) verified with the holdout pairs, "
                              "its figures recorded as NAME_acc, NAME_auc, ... (lfw_acc).", **on)
    flags.DEFINE_bool("verify_flip", False, "Sum each holdout embedding with its mirror "
                      "image's, as insightface does.", **on)
    flags.DEFINE_integer("freeze_backbone_iter", 0, "Fine-tuning: train only the classifier "
                         "for the first N iterations (every other layer frozen, BN on its "
                         "moving statistics), then every layer.", lower_bound=0, **on)
    flags.DEFINE_enum("strategy", "auto", config.STRATEGIES, "tf.distribute strategy: auto "
                      "(mirrored over every GPU when there are several, else one device), "
                      "one_device, mirrored (every GPU, else every logical CPU device), "
                      "multi_worker (the cluster in TF_CONFIG). --batch_size stays the global "
                      "batch; a run resumes under another strategy.", **on)
    flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into N logical devices, so "
                         "--strategy=mirrored can be tried on a machine without GPUs.",
                         lower_bound=1, upper_bound=64, **on)
    flags.DEFINE_enum("export", "latest", config.EXPORTS, "The SavedModel written at the end: "
                      "the last weights, or the best test's (checkpoints/best).", **on)
    flags.DEFINE_integer("steps_per_execution", 1, "Iterations run per call into TensorFlow "
                         "(Keras's steps_per_execution): fewer host round trips per step. "
                         "Every event interval (--test_interval, --display, --snapshot, ...) "
                         "and --max_iter must be a multiple of it. Under "
                         "--strategy=multi_worker (kerasbn's own loop) calls stay single.",
                         lower_bound=1, upper_bound=100000, **on)
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.", **on)
    flags.DEFINE_float("initial_loss_scale", 2.0 ** 15, "--precision=mixed_float16: the "
                       "dynamic loss scale to start from (Keras's 32768); it halves at each "
                       "overflow, which skips that update, and doubles after 2,000 finite "
                       "steps.", lower_bound=1e-8, **on)
    flags.DEFINE_bool("skip_corrupt_records", False, "Train and test on what is readable of "
                      "corrupt or truncated shards (each is named, with what it lost) instead "
                      "of stopping.", **on)


def names():
    """The training flags' names, in definition order."""
    scratch = flags.FlagValues()
    define(scratch)
    return list(scratch)


def schedule_config(values):
    """The `ScheduleConfig` of parsed training flags (raises ScheduleError when invalid)."""
    return schedules.ScheduleConfig(**{name: values[name].value for name in _SCHEDULE})


def native_bfloat16():
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them
    bfloat16 is emulated, slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return bool({"avx512_bf16", "amx_bf16"} & set(f.read().split()))
    except OSError:
        return False


def auto_precision():
    """The fastest precision this machine trains in natively: mixed_float16 on a GPU,
    mixed_bfloat16 on a CPU with bfloat16 instructions, else float32."""
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if native_bfloat16() else "float32"


def to_config(values, manifest):
    """The `RunConfig` of parsed training flags on the dataset of `manifest`.

    The class count and image size come from the manifest; --num_classes and --image_size,
    when given, must agree with it.
    """
    path = records.manifest_path(values.data_dir)
    classes = len(manifest["class_names"])
    height, width = manifest["image_size"]
    if values.num_classes is not None and values.num_classes != classes:
        raise config.ConfigError(f"--num_classes={values.num_classes} but {path} has "
                                 f"{classes} classes; drop --num_classes or use the right "
                                 "dataset")
    if values.image_size is not None and [values.image_size] * 2 != [height, width]:
        raise config.ConfigError(f"--image_size={values.image_size} but {path} holds "
                                 f"{height}x{width} images; drop --image_size or rebuild the "
                                 "data")
    taken = set(_SCHEDULE) | {"num_classes", "image_size", "overwrite"}
    settings = {name: values[name].value for name in names() if name not in taken}
    if settings["precision"] == "auto":
        settings["precision"] = auto_precision()
    return config.RunConfig(num_classes=classes, image_size=(height, width),
                            channels=manifest["channels"], schedule=schedule_config(values),
                            **settings)


def flagfile_text(values):
    """The training flags as a flagfile (`--name=value` lines) for the run's flags.txt."""
    lines = [values[name].serialize() for name in names()
             if values[name].value is not None and name != "overwrite"]
    return "\n".join(line for line in lines if line) + "\n"


def parse_flagfile(path):
    """FlagValues of the training flags read from flagfile `path` (a run's flags.txt)."""
    values = flags.FlagValues()
    define(values)
    try:
        values(["flags.txt"] + cli.read_flagfile(path))
    except (flags.Error, OSError) as e:
        raise config.ConfigError(f"{path}: {' '.join(str(e).split())}; fix the flagfile") \
            from None
    return values


def stored_config(run_dir, manifest=None):
    """The `RunConfig` of an existing run: its config.json, or for a run from before
    config.json, its flags.txt resolved against its dataset's manifest."""
    run = RunDir(run_dir)
    stored = run.read_config()
    if stored is not None:
        return stored
    if not os.path.isfile(run.flags_txt):
        raise records.DataError(f"{run.config_json} not found: --run_dir must be a run "
                                "directory made by `python -m kerasbn.train`")
    values = parse_flagfile(run.flags_txt)
    if manifest is None:
        manifest = records.read_manifest(values.data_dir, check_files=False)
    return to_config(values, manifest)


def run_settings(run_dir):
    """{setting: value} of a run for reports: its config.json, else its flags.txt (a partial
    flags.txt gives the flags' defaults for what it lacks); {} when it has neither."""
    run = RunDir(run_dir)
    stored = run.read_config()
    if stored is not None:
        return config.flat(stored.to_dict())
    if not os.path.isfile(run.flags_txt):
        return {}
    values = parse_flagfile(run.flags_txt)
    return {name: values[name].value for name in names()}
