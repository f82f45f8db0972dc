"""The training flags (DESIGN.md's core flags), their validation, and the run's flagfile.

Other commands define their own flags in their own module.
"""

import os

from absl import app, flags

from kerasbn import models, norms, records, schedules

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

flags.DEFINE_string("data_dir", None, "Directory holding manifest.json and the TFRecord shards.")
flags.DEFINE_enum("model", "bn", models.MODELS, "Network: the study's baseline, its BN network, "
                  "bn_all (BN after every convolution), or Caffe's CIFAR-10 examples "
                  "cifar10_quick and cifar10_full_sigmoid_bn.")
flags.DEFINE_enum("norm", "keras", norms.NORMS, "BN implementation for networks with BN: "
                  "keras, the study's Caffe semantics bvlc, windows, nvidia (cuDNN engine, "
                  "what the study ran) and nvidia_caffe (CPU engine), renorm, sync "
                  "(statistics across replicas), none.")
flags.DEFINE_integer("num_classes", None, "Classes; default (and must equal): the manifest's.")
flags.DEFINE_integer("image_size", None, "Input height and width; default (and must equal): "
                     "the manifest's.")
flags.DEFINE_list("widths", None, "Convolution widths in order (default: the study's).")
flags.DEFINE_float("dropout", None, "Dropout before the classifier (default: the network's, "
                   "0.4 for baseline, 0 for bn).")
flags.DEFINE_float("bn_momentum", None, "BN moving-average momentum, Keras convention: the "
                   "weight of the old statistic (= Caffe moving_average_fraction = "
                   "caffe-windows decay; PyTorch momentum = 1 - this). Default: the --norm's "
                   "own (keras 0.99, bvlc/nvidia 0.999, windows 0.95).")
flags.DEFINE_float("bn_epsilon", None, "BN epsilon added to the variance. Default: the "
                   "--norm's own (keras 1e-3, Caffe 1e-5, windows 1e-10).")
flags.DEFINE_integer("batch_size", 128, "Images per iteration (global, over all replicas).")
flags.DEFINE_float("base_lr", 0.01, "Caffe base_lr.")
flags.DEFINE_enum("lr_policy", "multistep", schedules.POLICIES,
                  "Caffe lr_policy (fixed, step, exp, inv, multistep, poly, sigmoid), "
                  "stepwise_then_jump, or a study preset: long_step, short_step, "
                  "multistep_no_dropout (iterations scaled to --max_iter).")
flags.DEFINE_float("gamma", 0.1, "Caffe gamma of step, exp, inv, multistep and sigmoid.")
flags.DEFINE_float("power", 1.0, "Caffe power of inv and poly.")
flags.DEFINE_integer("stepsize", 10000, "Caffe stepsize of step and sigmoid.")
flags.DEFINE_multi_integer("stepvalue", [], "multistep: iterations at which lr *= gamma.")
flags.DEFINE_enum("smooth_policy", "step", schedules.SMOOTH_POLICIES,
                  "stepwise_then_jump: the smooth phase's Caffe policy (with --gamma, --power, "
                  "--stepsize).")
flags.DEFINE_integer("smooth_until", 150000, "stepwise_then_jump: the rate is held from here.")
flags.DEFINE_float("jump_gamma", 0.1, "stepwise_then_jump: the factor at each --jump_at.")
flags.DEFINE_multi_integer("jump_at", [], "stepwise_then_jump: iterations (after "
                           "--smooth_until) at which lr *= jump_gamma.")
flags.DEFINE_integer("warmup_iter", 0, "Linear warm-up over the first N iterations.")
flags.DEFINE_enum("solver_type", "SGD", ["SGD", "Nesterov", "Adam", "AdamW"],
                  "Caffe solver type. SGD, Nesterov and Adam use Caffe's coupled weight "
                  "decay (an L2 term in the gradient); AdamW decouples it, as its paper "
                  "defines: w -= lr * weight_decay * w, apart from the gradient step.")
flags.DEFINE_float("momentum", 0.9, "SGD/Nesterov momentum; Adam's beta_1 (BN's is "
                   "--bn_momentum).")
flags.DEFINE_float("momentum2", 0.999, "Adam/AdamW beta_2 (Caffe momentum2).")
flags.DEFINE_float("delta", 1e-8, "Adam/AdamW epsilon (Caffe delta).")
flags.DEFINE_float("weight_decay", 5e-4, "Caffe weight_decay on kernels (= Keras L2 of wd/2).")
flags.DEFINE_bool("decay_biases", False, "Also decay biases (Caffe decays every blob with "
                  "decay_mult 1; most prototxts set 0 for biases).")
flags.DEFINE_integer("iter_size", 1, "Batches accumulated per weight update (Caffe iter_size): "
                     "the effective batch is batch_size * iter_size. BN statistics still come "
                     "from each batch of --batch_size.")
flags.DEFINE_integer("max_iter", 420000, "Iterations (weight updates) to train.")
flags.DEFINE_integer("test_interval", 5000, "Test every this many iterations.")
flags.DEFINE_integer("test_iter", 0, "Test batches per test; 0 = the whole test split.")
flags.DEFINE_bool("test_initialization", True, "Also test at iteration 0, as Caffe does.")
flags.DEFINE_integer("display", 100, "Print and log loss, lr and images/s every N iterations.")
flags.DEFINE_integer("snapshot", 5000, "Checkpoint every N iterations (0: only at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Newest checkpoints kept.")
flags.DEFINE_string("run_dir", None, "Directory for everything about the run; rerunning on it "
                    "resumes.")
flags.DEFINE_bool("overwrite", False, "Start over in a --run_dir that holds another run.")
flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy.")
flags.DEFINE_integer("seed", 0, "Seed for weights and data order.")
flags.DEFINE_multi_float("target_accuracy", [0.8], "Test top-1 targets (repeatable): the "
                         "first tested iteration and wall time reaching each are reported.")
flags.DEFINE_bool("stop_at_target", False, "End the run once every --target_accuracy is "
                  "reached (for hyper-parameter search).")
flags.DEFINE_string("weights", None, "Initialise from another run: its run dir, a checkpoint, "
                    "or its exported SavedModel (as Caffe's --weights).")
flags.DEFINE_integer("precise_bn", 0, "Before each test, recompute BN running statistics as "
                     "the average over N training batches (0: off), so the test curve does not "
                     "jump with stale moving averages.")
flags.DEFINE_integer("crop_pad", 0, "Training augmentation: pad by N pixels, random crop back.")
flags.DEFINE_bool("mirror", False, "Training augmentation: random horizontal mirror.")

FLAGS = flags.FLAGS
# Flags that may differ between a run and its resumption (targets are measured afresh from
# the whole metrics.jsonl, so a resumed run may track more of them).
_NOT_RUN_DEFINING = ("run_dir", "overwrite", "display", "keep_checkpoints", "weights",
                     "target_accuracy")


class FlagError(ValueError):
    """A flag value that cannot be used; the message names the flag and the fix."""


def resolve(manifest, data_dir):
    """Checks the flags against each other and the manifest; returns the run's config dict."""
    f = FLAGS
    config = {name: FLAGS[name].value for name in flag_names()}
    classes = len(manifest["class_names"])
    height, width = manifest["image_size"]
    if f.num_classes is not None and f.num_classes != classes:
        raise FlagError(f"--num_classes={f.num_classes} but {records.manifest_path(data_dir)} "
                        f"has {classes} classes; drop --num_classes or use the right dataset")
    if f.image_size is not None and [f.image_size] * 2 != [height, width]:
        raise FlagError(f"--image_size={f.image_size} but {records.manifest_path(data_dir)} "
                        f"holds {height}x{width} images; drop --image_size or rebuild the data")
    for name in ("max_iter", "test_interval", "batch_size", "display"):
        if config[name] < 1:
            raise FlagError(f"--{name} must be at least 1, got {config[name]}")
    for name in ("test_iter", "snapshot", "keep_checkpoints", "precise_bn"):
        if config[name] < 0:
            raise FlagError(f"--{name} must not be negative, got {config[name]}")
    if f.test_interval > f.max_iter:
        raise FlagError(f"--test_interval={f.test_interval} is larger than "
                        f"--max_iter={f.max_iter}; lower it so the run is tested")
    config.update(schedule_config())
    if f.dropout is not None and not 0 <= f.dropout < 1:
        raise FlagError(f"--dropout must lie in [0, 1), got {f.dropout}")
    if not f.target_accuracy or not all(0 < t <= 1 for t in f.target_accuracy):
        raise FlagError(f"--target_accuracy must lie in (0, 1], got {f.target_accuracy}")
    try:
        widths = [int(w) for w in f.widths] if f.widths else None
    except ValueError:
        raise FlagError(f"--widths must be integers, got {f.widths}") from None
    if widths is not None and len(widths) != len(models.default_widths(f.model)):
        raise FlagError(f"--widths for --model={f.model} takes "
                        f"{len(models.default_widths(f.model))} values, got {len(widths)}")
    config.update(num_classes=classes, image_size=[height, width], widths=widths,
                  channels=manifest["channels"])
    return config


_SCHEDULE_FLAGS = ("lr_policy", "base_lr", "gamma", "power", "stepsize", "stepvalue",
                   "smooth_policy", "smooth_until", "jump_gamma", "jump_at", "warmup_iter",
                   "max_iter", "iter_size")


def schedule_config():
    """The learning-rate flags, checked: the part of the config a schedule is made from."""
    c = {name: FLAGS[name].value for name in _SCHEDULE_FLAGS}
    policy = c["lr_policy"]
    if c["base_lr"] <= 0:
        raise FlagError(f"--base_lr must be positive, got {c['base_lr']}")
    if c["gamma"] <= 0 or c["jump_gamma"] <= 0:
        raise FlagError("--gamma and --jump_gamma must be positive (a negative factor makes "
                        "negative rates)")
    if c["max_iter"] < 1 or c["iter_size"] < 1 or c["warmup_iter"] < 0:
        raise FlagError("--max_iter and --iter_size must be at least 1, --warmup_iter at "
                        "least 0")
    if not _increasing(c["stepvalue"]):
        raise FlagError(f"--stepvalue must be positive and strictly increasing, got "
                        f"{c['stepvalue']}")
    uses_stepsize = policy in ("step", "sigmoid") or (
        policy == "stepwise_then_jump" and c["smooth_policy"] == "step")
    if uses_stepsize and c["stepsize"] < 1:
        raise FlagError(f"--stepsize must be at least 1 for --lr_policy={policy}")
    if policy == "stepwise_then_jump":
        if c["smooth_until"] < 1 or not _increasing(c["jump_at"]):
            raise FlagError("stepwise_then_jump needs --smooth_until >= 1 and --jump_at "
                            "iterations in increasing order")
        if c["jump_at"] and c["jump_at"][0] <= c["smooth_until"]:
            raise FlagError(f"--jump_at={c['jump_at'][0]} comes before --smooth_until="
                            f"{c['smooth_until']}; jumps follow the smooth phase")
    return c


def _increasing(values):
    return list(values) == sorted(set(values)) and all(v > 0 for v in values)


def parse_argv(argv):
    """Parses argv as absl does, except that a repeatable flag given on the command line
    replaces the flagfiles' values (app.run's flags_parser for commands taking training flags).

    absl alone appends: a flagfile's --stepvalue=600 plus --stepvalue=400 on the command line
    would give the schedule both steps, where a user overriding a flagfile means only 400.
    """
    repeatable = {flag.name for flag in FLAGS.get_flags_for_module(__name__)
                  if isinstance(flag, flags.MultiFlag)}
    args = list(argv[1:])
    for i, arg in enumerate(args[:-1]):
        if arg in ("--flagfile", "-flagfile"):
            args[i:i + 2] = [f"--flagfile={args[i + 1]}", None]
    given = {_flag_name(arg) for arg in args if arg} & repeatable
    expanded = [argv[0]]
    for arg in filter(None, args):
        if _flag_name(arg) == "flagfile":
            expanded += [line for line in FLAGS.read_flags_from_files([arg], force_gnu=False)
                         if _flag_name(line) not in given]
        else:
            expanded.append(arg)
    return app.parse_flags_with_usage(expanded)


def _flag_name(arg):
    return arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") and arg != "--" else None


def flag_names():
    """Names of the training flags, in definition order."""
    return [flag.name for flag in FLAGS.get_flags_for_module(__name__)]


def flagfile_text():
    """The training flags as a flagfile (`--name=value` lines), as given on the command line."""
    lines = []
    for flag in FLAGS.get_flags_for_module(__name__):
        if flag.value is not None and flag.name != "overwrite":
            lines.append(flag.serialize())
    return "\n".join(line for line in lines if line) + "\n"


def parse_flagfile(text):
    """{name: its `--name=value` lines} of a flagfile's text, as `flagfile_text` writes it."""
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            entries.setdefault(name[2:] if name.startswith("no") and name[2:] in FLAGS
                               and FLAGS[name[2:]].boolean else name, []).append(line)
    return entries


def differences(path):
    """(name, there, now) for each run-defining flag whose value differs from flagfile `path`."""
    with open(path, encoding="utf-8") as f:
        old = parse_flagfile(f.read())
    new = parse_flagfile(flagfile_text())
    names = sorted((set(old) | set(new)) - set(_NOT_RUN_DEFINING))
    # A flag newer than the run's flags.txt, left at its default, does not change the run.
    newer_at_default = lambda name: (name not in old and name in FLAGS
                                     and FLAGS[name].value == FLAGS[name].default)
    return [(name, old.get(name), new.get(name)) for name in names
            if old.get(name) != new.get(name) and not newer_at_default(name)]


def model_kwargs(config):
    """Keyword arguments of `models.build` from a run config."""
    return {"name": config["model"], "num_classes": config["num_classes"],
            "image_size": tuple(config["image_size"]), "channels": config["channels"],
            "widths": config["widths"], "dropout": config["dropout"], "norm": config["norm"],
            "bn_momentum": config["bn_momentum"], "bn_epsilon": config["bn_epsilon"],
            # AdamW decays in the optimizer, decoupled from the gradient.
            "weight_decay": 0.0 if config["solver_type"] == "AdamW" else config["weight_decay"],
            "decay_biases": config["decay_biases"]}


def flags_path(run_dir):
    return os.path.join(run_dir, "flags.txt")
