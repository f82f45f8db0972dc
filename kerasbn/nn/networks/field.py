"""What insightface's networks (iresnet, mobilefacenet) share: the input they are made for
(112x112 RGB, a 512-d embedding), their rule (sides a multiple of the stride, the neck built
in), and their kernels' arguments (each network's own initializer, insightface's, unless
--weight_filler names another; each with the run's weight decay)."""

from kerasbn.nn import registry

# The factor both networks shrink the image by: 112 -> 7.
STRIDE = 16
INPUT = {"image_size": (112, 112), "channels": 3, "embedding_dim": 512}


def check(settings):
    if settings.embedding != "pool" or any(side % STRIDE for side in settings.image_size):
        height, width = settings.image_size
        return (f"--model={settings.name} has insightface's neck built in (drop --embedding) "
                f"and takes images whose sides are multiples of {STRIDE}, not "
                f"{height}x{width}; build the dataset at 112x112")
    return None


def conv_args(parts, own):
    """A convolution's kernel initializer (`own`: the network's, insightface's) and L2."""
    return {"kernel_initializer": parts.filler(own), "kernel_regularizer": parts.l2()}


def dense_args(parts, own):
    """A fully connected layer's kernel initializer (`own`: the network's) and L2."""
    return {"kernel_initializer": parts.filler(own), "kernel_regularizer": parts.l2()}


def register(name, features, **spec):
    """Registers field network `name` with the field's input and rule."""
    registry.register_network(name, family="field", made_for=INPUT, check=check,
                              **spec)(features)
