"""A network built by name: the registered network's features (`nn/networks/`), then the
registered head's classifier `logits` (`nn/heads/`), float32 under mixed precision.

`NetworkSettings` are the settings a network is built from, declared once: a run's config
gives them by the same names (`RunConfig.network()`), and `build` takes them as keyword
arguments.

Weight fillers (`weight_filler`) follow Caffe's definitions: `xavier` uniform on
±sqrt(3 / fan_in), `msra` an untruncated Gaussian of std sqrt(2 / fan_in) (Keras's he_normal
truncates), `gaussian` N(0, filler_std); `keras` Keras's glorot_uniform; `network` (the
default) each network's own. Biases start at 0, as Caffe's constant filler. Caffe's
weight_decay is an L2 penalty of weight_decay / 2 on every kernel, times `bias_decay_mult` on
biases, `bn_decay_mult` on BN's scale and shift (Caffe's decay_mult) and `prelu_decay_mult`
on PReLU's slopes (arcface_torch decays every parameter).
"""

import dataclasses

import keras

from kerasbn.nn import norms, prelu, registry
from kerasbn.nn.networks import imported

CLASSIFIER = registry.CLASSIFIER
MODELS, HEADS = registry.load()
FIELD_MODELS = tuple(n for n, net in registry.NETWORKS.items() if net.family == "field")
CIFAR_MODELS = tuple(n for n, net in registry.NETWORKS.items() if net.family == "cifar")
FILLERS = ("network", "keras", "xavier", "msra", "gaussian")
# Settings only some networks take (`registry.Network.options`); None: the network's own.
OPTIONS = ("drop_path", "mask_ratio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """What a network is built from. `dropout=None` takes the network's default;
    `head`: softmax or a margin head (of `scale`, default the head's); `decay_centres=False`
    leaves a margin head's centres without the L2 term (Partial FC decays the rows it draws
    in the optimizer instead); `backbone`: an imported network's export (networks/imported),
    fed images normalised by `input_norm`, instead of network `name`."""
    name: str
    num_classes: int
    image_size: tuple = (50, 50)
    channels: int = 1
    widths: tuple | None = None
    dropout: float | None = None
    norm: str = "keras"
    bn_momentum: float | None = None
    bn_epsilon: float | None = None
    weight_decay: float = 0.0
    bias_decay_mult: float = 0.0
    bn_decay_mult: float = 0.0
    prelu_decay_mult: float = 0.0
    weight_filler: str = "network"
    filler_std: float = 0.01
    zero_init_residual: bool = False
    drop_path: float | None = None
    mask_ratio: float | None = None
    head: str = "softmax"
    scale: float | None = None
    embedding: str = "pool"
    embedding_dim: int = 128
    decay_centres: bool = True
    backbone: str | None = None
    input_norm: tuple = ()


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a network's layers are made with, from its settings."""
    settings: NetworkSettings

    def l2(self, mult=1.0):
        """Caffe's weight decay times `mult` as a Keras regularizer (None when it is 0)."""
        decay = self.settings.weight_decay * mult
        return keras.regularizers.L2(decay / 2) if decay else None

    def norm(self, name, fixed_scale=False, epsilon=None):
        """A new norm layer `name` of the settings' BN implementation (`fixed_scale`: its
        scale kept at 1; `epsilon`: the network's own, where --bn_epsilon is not given)."""
        s = self.settings
        epsilon = epsilon if s.bn_epsilon is None else s.bn_epsilon
        return norms.make_norm(s.norm, s.bn_momentum, epsilon, name_prefix=name,
                               regularizer=self.l2(s.bn_decay_mult), fixed_scale=fixed_scale)

    def prelu(self, name):
        """A new PReLU layer `name`: a slope per channel from 0.25 (PyTorch's default),
        decayed by the weight decay times `prelu_decay_mult`."""
        return prelu.PReLU(keras.initializers.Constant(0.25), shared_axes=[1, 2],
                           alpha_regularizer=self.l2(self.settings.prelu_decay_mult), name=name)

    def filler(self, own="glorot_uniform"):
        """The kernel initializer of the settings' filler (`own`: the network's own)."""
        return initializer(self.settings.weight_filler, self.settings.filler_std, own)

    def bias_l2(self):
        """The biases' L2: the weight decay times --bias_decay_mult."""
        return self.l2(self.settings.bias_decay_mult)


def initializer(filler, filler_std=0.01, own="glorot_uniform"):
    """The Keras initializer of Caffe weight filler `filler` (`own`: the network's own)."""
    if filler == "network":
        return own
    if filler == "keras":
        return "glorot_uniform"
    if filler == "xavier":
        return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")
    if filler == "msra":
        return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")
    if filler == "gaussian":
        return keras.initializers.RandomNormal(stddev=filler_std)
    raise ValueError(f"unknown --weight_filler {filler!r}; choose one of {', '.join(FILLERS)}")


def made_for(name):
    """`build`'s keyword arguments for the input (and embedding) network `name` is made for."""
    return dict(registry.NETWORKS[name].made_for)


def default_widths(name):
    """The convolution widths of network `name`, in order ([] for one without --widths)."""
    return list(registry.NETWORKS[name].widths)


def default_dropout(name):
    """The dropout network `name` takes when --dropout is not given."""
    return registry.NETWORKS[name].dropout


def problem(settings):
    """Why `settings` (a `NetworkSettings`) cannot build its network, or None: the widths it
    takes and the network's own rules (an imported backbone has none)."""
    if settings.backbone:
        return None
    network = registry.NETWORKS[settings.name]
    given = [name for name in OPTIONS if getattr(settings, name) is not None]
    foreign = [name for name in given if name not in network.options]
    if foreign:
        takers = [n for n, net in registry.NETWORKS.items() if foreign[0] in net.options]
        return (f"--{foreign[0]} is a setting of --model={' or --model='.join(takers)}, not "
                f"of --model={network.name}; drop it")
    own = network.check(settings) if network.check else None
    expected = len(network.widths)
    if own is None and settings.widths is not None and len(settings.widths) != expected:
        return (f"--widths for --model={network.name} takes {expected} values, got "
                f"{len(settings.widths)}")
    return own


def build(name, num_classes, **settings):
    """Builds network `name` taking normalised float images [N, H, W, channels] to logits;
    `settings` are `NetworkSettings`' other fields."""
    return build_from(NetworkSettings(name=name, num_classes=num_classes, **settings))


def build_from(settings, classifier=None):
    """The network of `settings` (`NetworkSettings`); `classifier`, called as a head's
    registered one is, replaces the head's classifier layer (`--shard_classes`)."""
    if settings.name not in registry.NETWORKS:
        raise ValueError(f"unknown --model {settings.name!r}; choose one of "
                         f"{', '.join(registry.NETWORKS)}")
    if settings.head not in registry.HEADS:
        raise ValueError(f"unknown --head {settings.head!r}; choose one of "
                         f"{', '.join(registry.HEADS)}")
    why = problem(settings)
    if why:
        raise ValueError(why)
    if settings.backbone:
        inputs, x = imported.backbone(settings.backbone, settings.image_size, settings.channels,
                                      settings.input_norm)
        return _with_classifier(inputs, x, "imported", Parts(settings), "glorot_uniform",
                                classifier)
    network = registry.NETWORKS[settings.name]
    settings = dataclasses.replace(
        settings, widths=tuple(settings.widths or network.widths),
        dropout=network.dropout if settings.dropout is None else settings.dropout)
    parts = Parts(settings)
    inputs = keras.Input((*settings.image_size, settings.channels), name="image")
    x = network.features(inputs, settings, parts)
    own = "glorot_uniform" if network.classifier_std is None else \
        keras.initializers.RandomNormal(stddev=network.classifier_std)
    return _with_classifier(inputs, x, settings.name, parts, own, classifier)


def _with_classifier(inputs, x, name, parts, own, classifier=None):
    """The network from `inputs` to the logits of the settings' head (or of `classifier`) on
    the embedding `x`."""
    settings = parts.settings
    kernel = {"kernel_initializer": parts.filler(own), "kernel_regularizer": parts.l2(),
              "dtype": "float32", "name": CLASSIFIER}
    classifier = classifier or registry.HEADS[settings.head].classifier
    layer = classifier(settings.num_classes, settings, kernel, parts.bias_l2())
    return keras.Model(inputs, layer(x), name=name)
