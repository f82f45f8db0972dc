"""A Caffe deploy network and its weights as a Keras functional model, channels last: each
layer of the prototxt becomes the Keras layer computing what Caffe's computes, its weights
taken from the caffemodel's layer of the same name, shape checked. BatchNorm followed by its
Scale becomes one of kerasbn's Caffe BN layers (kerasbn.nn.norms), so an imported network
trains on with its own BN semantics."""

import dataclasses
import re

import keras
import numpy as np

from kerasbn.caffe import schema
from kerasbn.nn import caffe_layers, grouped_conv, norms, prelu
from kerasbn.utils import errors

SUPPORTED = ("Axpy", "BatchNorm", "BN", "Concat", "Convolution", "Deconvolution",
             "DepthwiseConvolution", "Dropout", "ELU", "Eltwise", "Flatten", "Flip",
             "InnerProduct", "Input", "LRN", "Normalize", "Permute", "PReLU", "Pooling", "Power",
             "ReLU", "Reshape", "Scale", "Sigmoid", "Slice", "Softmax", "Split", "TanH")
_NO_WEIGHTS = ("Axpy", "Concat", "Dropout", "ELU", "Eltwise", "Flatten", "Flip", "Input",
               "LRN", "Permute", "Pooling", "Power", "ReLU", "Reshape", "Sigmoid", "Slice",
               "Softmax", "Split", "TanH")


class CaffeError(errors.UserError):
    """A deploy network or caffemodel that cannot be imported, said in one line."""


@dataclasses.dataclass
class Layer:
    """One layer of either format: its name, LayerParameter type, bottoms, tops, and the
    message (for its *_param fields); `keras` is the name its Keras layer takes (`plan`'s
    `keras_names`)."""

    name: str
    type: str
    bottom: list
    top: list
    message: object
    keras: str = None


def _in_test_phase(layer):
    test = 1
    if layer.include:
        return any(not rule.HasField("phase") or rule.phase == test for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == test for rule in layer.exclude)


def _type(layer, v1):
    if not v1:
        return layer.type
    name = type(layer).DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number[
        layer.type].name
    return schema.V1_TYPES.get(name, name)


def blob_array(blob):
    """A BlobProto's data as an array of its shape (`shape`, or the legacy num, channels,
    height, width)."""
    shape = list(blob.shape.dim) if blob.HasField("shape") else [
        blob.num, blob.channels, blob.height, blob.width]
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float32)
    if data.size != int(np.prod(shape)):
        raise CaffeError(f"a blob holds {data.size} values but its shape is {shape}")
    broken = int(np.count_nonzero(~np.isfinite(data)))
    if broken:
        raise CaffeError(f"a blob holds {broken} values that are NaN or infinite: the "
                         "caffemodel is damaged (or was saved from a diverged training); "
                         "take it again from where it came")
    return data.reshape(shape)


def layers_of(net):
    """The layers of NetParameter `net` (either format) that run at test time."""
    v1 = not net.layer and bool(net.layers)
    return [Layer(layer.name, _type(layer, v1), list(layer.bottom), list(layer.top), layer)
            for layer in (net.layers if v1 else net.layer) if _in_test_phase(layer)]


def weights_of(net):
    """{layer name: [blob arrays]} of a caffemodel's NetParameter."""
    out = {}
    for layer in layers_of(net):
        try:
            out[layer.name] = [blob_array(b) for b in layer.message.blobs]
        except CaffeError as e:
            raise CaffeError(f"layer {layer.name}: {e}") from None
    return out


def input_shapes(deploy, layers, input_size=None):
    """{input blob: (channels, height, width)} from `input` with `input_shape` or
    `input_dim`, or Input layers; `input_size` (height, width) overrides the sizes."""
    shapes = {}
    dims = list(deploy.input_dim)
    for index, name in enumerate(deploy.input):
        if index < len(deploy.input_shape):
            shape = list(deploy.input_shape[index].dim)
        elif len(dims) >= 4 * (index + 1):
            shape = dims[4 * index:4 * index + 4]
        else:
            raise CaffeError(f"input {name!r} has no input_shape or input_dim in the prototxt")
        shapes[name] = shape
    for layer in layers:
        if layer.type == "Input":
            given = list(layer.message.input_param.shape)
            for index, top in enumerate(layer.top):
                shapes[top] = list(given[min(index, len(given) - 1)].dim) if given else None
    if not shapes:
        raise CaffeError("the prototxt declares no input (input/input_dim/input_shape or an "
                         "Input layer)")
    out = {}
    for name, shape in shapes.items():
        if shape is None or len(shape) != 4:
            raise CaffeError(f"input {name!r} needs a 4-D N,C,H,W shape, got {shape}")
        if min(shape[1:]) <= 0:
            raise CaffeError(f"input {name!r} has shape {list(shape)}: each of C, H and W "
                             "must be positive")
        height, width = input_size or shape[2:]
        out[name] = (int(shape[1]), int(height), int(width))
    return out


# What TensorFlow takes as a name scope, which every Keras layer opens when called.
_KERAS_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.-]*")
# The names kerasbn gives layers of its own in an imported network.
RESERVED = ("image", "caffe_input", "embedding")


def keras_names(names):
    """{Caffe layer name: Keras layer name} for `names` in order: a name TensorFlow takes as a
    scope stays; any other has each character outside [A-Za-z0-9_.-] made "_" (and "layer"
    before a leading "_" or "-"), and "_2", "_3", ... after it where that name is taken,
    so distinct Caffe names stay distinct. Helper layers (padding, flattening, a Slice's
    parts) are named "<keras name>>pad" and so on: ">" is in no name made here."""
    taken = set(RESERVED) | {n for n in names if _KERAS_NAME.fullmatch(n)}
    out = {}
    for name in names:
        if _KERAS_NAME.fullmatch(name) and name not in RESERVED:
            out[name] = name
            continue
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        base = base if _KERAS_NAME.fullmatch(base) else f"layer{base}"
        candidate, suffix = base, 2
        while candidate in taken:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(candidate)
        out[name] = candidate
    return out


def _pair(param, name, default):
    """The (h, w) `name` ("kernel", "stride" or "pad") of a convolution or pooling: name_h and
    name_w, else its repeated field once or per axis, else `default`."""
    if param.HasField(f"{name}_h") or param.HasField(f"{name}_w"):
        return int(getattr(param, f"{name}_h")), int(getattr(param, f"{name}_w"))
    values = list(getattr(param, "kernel_size" if name == "kernel" else name))
    return (int(values[0]), int(values[-1])) if values else (default, default)


def _expect(layer, blobs, shapes):
    """`blobs` in the `shapes` the layer needs, naming the first that differs. Sizes are
    compared, as the legacy format stores every blob 4-D (an InnerProduct's as 1,1,out,in).
    `blobs` may be a function making them of given shapes (`build`'s `fill`)."""
    if callable(blobs):
        return blobs(shapes)
    if len(blobs) < len(shapes):
        raise CaffeError(f"layer {layer.name} ({layer.type}) has {len(blobs)} weight blobs in "
                         f"the caffemodel; it needs {len(shapes)}")
    for index, (blob, shape) in enumerate(zip(blobs, shapes)):
        if blob.size != int(np.prod(shape)):
            raise CaffeError(f"layer {layer.name} ({layer.type}): blob {index} has shape "
                             f"{list(blob.shape)}, the layer needs {list(shape)}")
    return [blob.reshape(shape) for blob, shape in zip(blobs, shapes)]


def _axis(axis, rank):
    """A Caffe axis of an N,C,H,W (or N,C) blob as the channels-last tensor's axis."""
    axis = axis + rank if axis < 0 else axis
    return {0: 0, 1: 3, 2: 1, 3: 2}[axis] if rank == 4 else axis


def _check_window(layer, x, kernel, pad, dilation=(1, 1)):
    """CaffeError when a window (dilated) is larger than its padded input, which Caffe
    refuses too: a network given a smaller --input_size than it was made for, or a broken
    prototxt."""
    padded = [size + 2 * p for size, p in zip(x.shape[1:3], pad)]
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if any(s > size for s, size in zip(span, padded)):
        raise CaffeError(f"layer {layer.name} ({layer.type}): its {span[0]}x{span[1]} window "
                         f"is larger than its padded {padded[0]}x{padded[1]} input; is "
                         "--input_size smaller than the network was made for?")


def _convolution(layer, x, blobs):
    p = layer.message.convolution_param
    channels = x.shape[-1]
    kernel, stride, pad = _pair(p, "kernel", 1), _pair(p, "stride", 1), _pair(p, "pad", 0)
    dilation = tuple(int(d) for d in p.dilation) or (1,)
    dilation = (dilation[0], dilation[-1])
    groups = channels if layer.type == "DepthwiseConvolution" else p.group
    outputs = p.num_output
    if channels % groups or outputs % groups:
        raise CaffeError(f"layer {layer.name}: group {groups} does not divide its "
                         f"{channels} input and {outputs} output channels")
    _check_window(layer, x, kernel, pad, dilation)
    shapes = [(outputs, channels // groups, *kernel)] + ([(outputs,)] if p.bias_term else [])
    weights = _expect(layer, blobs, shapes)
    if pad != (0, 0):
        x = keras.layers.ZeroPadding2D(pad, name=f"{layer.keras}>pad")(x)
    conv = grouped_conv.conv2d(outputs, kernel, stride, groups, dilation_rate=dilation,
                               use_bias=p.bias_term, name=layer.keras)
    y = conv(x)
    conv.set_weights([weights[0].transpose(2, 3, 1, 0), *weights[1:]])
    return y


def _deconvolution(layer, x, blobs):
    p = layer.message.convolution_param
    kernel, stride, pad = _pair(p, "kernel", 1), _pair(p, "stride", 1), _pair(p, "pad", 0)
    if p.group != 1 or list(p.dilation) not in ([], [1]):
        raise CaffeError(f"layer {layer.name} (Deconvolution): only group 1 and dilation 1 "
                         "are supported")
    shapes = [(x.shape[-1], p.num_output, *kernel)] + ([(p.num_output,)] if p.bias_term
                                                        else [])
    weights = _expect(layer, blobs, shapes)
    deconv = keras.layers.Conv2DTranspose(p.num_output, kernel, stride, use_bias=p.bias_term,
                                          name=layer.keras)
    y = deconv(x)
    deconv.set_weights([weights[0].transpose(2, 3, 1, 0), *weights[1:]])
    if pad != (0, 0):
        y = keras.layers.Cropping2D(pad, name=f"{layer.keras}>crop")(y)
    return y


def _inner_product(layer, x, blobs):
    p = layer.message.inner_product_param
    if _axis(p.axis, len(x.shape)) != (3 if len(x.shape) == 4 else 1):
        raise CaffeError(f"layer {layer.name} (InnerProduct): only axis 1 is supported")
    if len(x.shape) != 2:
        x = caffe_layers.ChannelsFirstFlatten(name=f"{layer.keras}>flatten")(x)
    inputs = x.shape[-1]
    shape = (inputs, p.num_output) if p.transpose else (p.num_output, inputs)
    weights = _expect(layer, blobs, [shape] + ([(p.num_output,)] if p.bias_term else []))
    dense = keras.layers.Dense(p.num_output, use_bias=p.bias_term, name=layer.keras)
    y = dense(x)
    dense.set_weights([weights[0] if p.transpose else weights[0].T, *weights[1:]])
    return y


def _batch_norm(layer, x, blobs, scale):
    """BVLC's BatchNorm (mean, variance, scale factor), or NVIDIA Caffe's with its own scale
    and bias (five blobs), with the Scale layer after it (`scale`: its blobs, or None), as
    kerasbn's `bvlc` or `nvidia` norm."""
    channels = x.shape[-1]
    param = layer.message.batch_norm_param
    eps, momentum = param.eps, param.moving_average_fraction
    own = not callable(blobs) and len(blobs) == 5
    mean, variance, factor, *affine = _expect(
        layer, blobs, [(channels,), (channels,), (1,)] + [(channels,)] * (2 if own else 0))
    gamma, beta = affine if own else (scale if scale else (np.ones(channels),
                                                           np.zeros(channels)))
    if own:
        k = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        bn = norms.make_norm("nvidia", momentum, max(eps, 1e-5), name_prefix=layer.keras)
        y = bn(x)
        bn.set_weights([gamma, beta, k * mean, k * variance])
        return y
    bn = norms.make_norm("bvlc", momentum, eps, name_prefix=layer.keras)
    y = bn(x)
    bn.set_weights([gamma, beta, factor.reshape(()), mean, variance])
    return y


def _windows_bn(layer, x, blobs):
    """caffe-windows' BN: scale, shift, running mean and variance; no epsilon at inference."""
    channels = x.shape[-1]
    gamma, beta, mean, variance = _expect(layer, blobs, [(channels,)] * 4)
    bn = norms.make_norm("windows", name_prefix=layer.keras)
    y = bn(x)
    bn.set_weights([gamma, beta, mean, variance])
    return y


def _scale(layer, x, blobs):
    p = layer.message.scale_param
    if len(layer.bottom) != 1 or p.num_axes != 1 or _axis(p.axis, len(x.shape)) != len(
            x.shape) - 1:
        raise CaffeError(f"layer {layer.name} (Scale): only a learned scale along the "
                         "channels (axis 1, one bottom) is supported")
    weights = _expect(layer, blobs, [(x.shape[-1],)] * (2 if p.bias_term else 1))
    scale = caffe_layers.Scale(p.bias_term, name=layer.keras)
    y = scale(x)
    scale.set_weights(weights)
    return y


def _prelu(layer, x, blobs):
    shared = layer.message.prelu_param.channel_shared
    [slope] = _expect(layer, blobs, [(1,) if shared else (x.shape[-1],)])
    axes = list(range(1, len(x.shape))) if shared else list(range(1, len(x.shape) - 1))
    activation = prelu.PReLU(shared_axes=axes or None, name=layer.keras)
    y = activation(x)
    activation.set_weights([np.broadcast_to(slope, activation.alpha.shape).copy()])
    return y


def _pooling(layer, x):
    p = layer.message.pooling_param
    method = type(p).DESCRIPTOR.enum_types_by_name["PoolMethod"].values_by_number[p.pool].name
    if method == "STOCHASTIC":
        raise CaffeError(f"layer {layer.name} (Pooling): STOCHASTIC pooling is not supported")
    rounding = type(p).DESCRIPTOR.enum_types_by_name["RoundMode"].values_by_number[
        p.round_mode].name
    kernel, pad = _pair(p, "kernel", 1), _pair(p, "pad", 0)
    if not p.global_pooling:
        _check_window(layer, x, kernel, pad)
    return caffe_layers.CaffePooling(method, kernel, _pair(p, "stride", 1), pad,
                                     p.global_pooling, rounding, name=layer.keras)(x)


def _one_input(layer, x, blobs):
    """The layers with one bottom and one top."""
    kind = layer.type
    m = layer.message
    if kind == "ReLU":
        slope = m.relu_param.negative_slope
        return keras.layers.LeakyReLU(slope, name=layer.keras)(x) if slope else \
            keras.layers.ReLU(name=layer.keras)(x)
    if kind in ("Sigmoid", "TanH"):
        return keras.layers.Activation(kind.lower(), name=layer.keras)(x)
    if kind == "ELU":
        return keras.layers.ELU(m.elu_param.alpha, name=layer.keras)(x)
    if kind == "Power":
        p = m.power_param
        return caffe_layers.Power(p.power, p.scale, p.shift, name=layer.keras)(x)
    if kind == "Softmax":
        return keras.layers.Softmax(_axis(m.softmax_param.axis, len(x.shape)),
                                    name=layer.keras)(x)
    if kind == "LRN":
        p = m.lrn_param
        return caffe_layers.LRN(p.local_size, p.alpha, p.beta, p.k, p.norm_region == 1,
                                name=layer.keras)(x)
    if kind == "Flatten":
        p = m.flatten_param
        if p.axis != 1 or p.end_axis != -1:
            raise CaffeError(f"layer {layer.name} (Flatten): only axis 1 to the end is "
                             "supported")
        return caffe_layers.ChannelsFirstFlatten(name=layer.keras)(x)
    if kind == "Reshape":
        return _reshape(layer, x)
    if kind == "Permute":
        order = list(m.permute_param.order)
        order += [axis for axis in range(4) if axis not in order]
        if len(x.shape) != 4 or sorted(order) != [0, 1, 2, 3] or order[0] != 0:
            raise CaffeError(f"layer {layer.name} (Permute): order {order} of a "
                             f"{len(x.shape)}-D blob; kerasbn permutes the C, H, W of 4-D "
                             "blobs, the batch first")
        return caffe_layers.CaffePermute(order, name=layer.keras)(x)
    if kind == "Pooling":
        return _pooling(layer, x)
    if kind == "Flip":
        p = m.flip_param
        return caffe_layers.Flip(p.flip_width, p.flip_height, name=layer.keras)(x)
    if kind == "Normalize" and _vector_normalize(layer, blobs):
        norm = m.normalize_param.normalize_type
        if norm not in ("L1", "L2"):
            raise CaffeError(f"layer {layer.name} (Normalize): normalize_type {norm!r}; "
                             "kerasbn imports L2 and L1")
        return caffe_layers.VectorNormalize(norm, name=layer.keras)(x)
    if kind == "Normalize":
        p = m.norm_param
        [scale] = _expect(layer, blobs, [(1,) if p.channel_shared else (x.shape[-1],)])
        norm = caffe_layers.Normalize(p.across_spatial, p.channel_shared, p.eps,
                                      name=layer.keras)
        y = norm(x)
        norm.set_weights([scale])
        return y
    return {"Convolution": _convolution, "DepthwiseConvolution": _convolution,
            "Deconvolution": _deconvolution, "InnerProduct": _inner_product,
            "BN": _windows_bn, "Scale": _scale, "PReLU": _prelu}[kind](layer, x, blobs)


def _vector_normalize(layer, blobs):
    """Whether a Normalize layer is happynear's (no weights, `normalize_param`), not SSD's
    (a learned scale, `norm_param`): two forks gave one type name to two layers."""
    m = layer.message
    return m.HasField("normalize_param") or (
        not m.HasField("norm_param") and not callable(blobs) and not len(blobs))


def _reshape(layer, x):
    p = layer.message.reshape_param
    caffe_shape = [x.shape[-1], *x.shape[1:-1]] if len(x.shape) == 4 else list(x.shape[1:])
    full = [None] + caffe_shape
    axis = p.axis + len(full) if p.axis < 0 else p.axis
    end = len(full) if p.num_axes == -1 else axis + p.num_axes
    dims = [full[axis + i] if d == 0 else d for i, d in enumerate(p.shape.dim)]
    new = full[:axis] + dims + full[end:]
    if new[0] not in (None, 0, -1):
        raise CaffeError(f"layer {layer.name} (Reshape): the batch axis must stay (dim 0 or "
                         "-1 first)")
    rest = new[1:]
    known = int(np.prod([d for d in rest if d != -1]))
    if -1 in rest:
        rest[rest.index(-1)] = int(np.prod(caffe_shape)) // known
    return caffe_layers.CaffeReshape(rest, name=layer.keras)(x)


def _many_inputs(layer, xs):
    m = layer.message
    if layer.type == "Eltwise":
        p = m.eltwise_param
        operation = type(p).DESCRIPTOR.enum_types_by_name["EltwiseOp"].values_by_number[
            p.operation].name
        return [caffe_layers.Eltwise(operation, list(p.coeff), name=layer.keras)(xs)]
    if layer.type == "Axpy":
        if len(xs) != 3:
            raise CaffeError(f"layer {layer.name} (Axpy) takes three bottoms (a, x, y), "
                             f"not {len(xs)}")
        return [caffe_layers.Axpy(name=layer.keras)(xs)]
    if layer.type == "Concat":
        p = m.concat_param
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        return [keras.layers.Concatenate(_axis(axis, len(xs[0].shape)), name=layer.keras)(xs)]
    [x] = xs
    p = m.slice_param
    axis = _axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim,
                 len(x.shape))
    size = x.shape[axis]
    parts = len(layer.top)
    if size is None and not p.slice_point:  # the batch, in equal parts
        return [caffe_layers.SliceAxis(axis, index, index + 1, parts,
                                       name=f"{layer.keras}>{index}")(x)
                for index in range(parts)]
    points = list(p.slice_point) or [size * i // parts for i in range(1, parts)]
    edges = [0, *points, size if size is not None else np.iinfo(np.int32).max]
    return [caffe_layers.SliceAxis(axis, a, b, name=f"{layer.keras}>{index}")(x)
            for index, (a, b) in enumerate(zip(edges, edges[1:]))]


def refused_setting(layer):
    """Why a supported layer's parameters ask for what kerasbn does not compute, or None:
    each field of a supported layer's parameters either changes the import or is refused
    here, never dropped (docs/caffe.md lists them)."""
    m = layer.message
    if layer.type == "BatchNorm" and m.batch_norm_param.HasField("use_global_stats") \
            and not m.batch_norm_param.use_global_stats:
        return ("batch_norm_param { use_global_stats: false } normalises every batch by its "
                "own statistics even at deploy, so a photo's output would depend on the others "
                "in its batch (and a batch of one gives zeros); a deploy network means true: "
                "delete the line to use the stored statistics")
    if layer.type in ("Convolution", "Deconvolution", "DepthwiseConvolution"):
        p = m.convolution_param
        if p.axis != 1:
            return f"convolution_param {{ axis: {p.axis} }}; kerasbn convolves axis 1 only"
        spatial = (p.kernel_size, p.stride, p.pad, p.dilation)
    elif layer.type == "Pooling":
        p = m.pooling_param
        spatial = (p.kernel_size, p.stride, p.pad)
    else:
        return None
    if any(len(values) > 2 for values in spatial):
        return "a kernel, stride, pad or dilation of more than 2 axes (an N-D layer); " \
               "kerasbn imports 2-D ones"
    return None


@dataclasses.dataclass
class Plan:
    """What a deploy network runs, found before any Keras layer is made: its name, its one
    input (blob name, (channels, height, width)), its steps in order (each a layer and the
    Scale layer a BatchNorm absorbs, or None; the BatchNorm then writes the Scale's tops), per
    layer the layers whose outputs it reads (None for the input), and its output blobs (those
    written and never read)."""

    name: str
    input: tuple
    steps: list
    sources: dict
    ends: list


def plan(deploy, input_size=None):
    """The `Plan` of deploy NetParameter `deploy`, its input of `input_size` (height, width)
    when given; CaffeError for a network kerasbn cannot import."""
    layers = layers_of(deploy)
    shapes = input_shapes(deploy, layers, input_size)
    if len(shapes) != 1:
        raise CaffeError(f"the network takes {len(shapes)} inputs ({', '.join(shapes)}); "
                         "kerasbn imports networks of one image input")
    [start] = shapes.items()
    names = keras_names(list(dict.fromkeys(layer.name for layer in layers)))
    layers = [dataclasses.replace(layer, keras=names[layer.name]) for layer in layers]
    writer = {start[0]: None}
    sources = {}
    # Whether each blob's latest value has been read since written: in-place layers (top
    # equal to bottom) write a blob again, so the outputs are the values never read.
    read = {}
    steps = []
    for index, layer in enumerate(layers):
        if layer.type == "Input" or (steps and steps[-1][1] is layer):
            continue
        if layer.type not in SUPPORTED:
            raise CaffeError(f"layer {layer.name} has type {layer.type}, which kerasbn does "
                             f"not import; supported: {', '.join(SUPPORTED)}")
        refused = refused_setting(layer)
        if refused:
            raise CaffeError(f"layer {layer.name} ({layer.type}): {refused}")
        missing = [b for b in layer.bottom if b not in writer]
        if missing:
            raise CaffeError(f"layer {layer.name} ({layer.type}) reads blob {missing[0]!r}, "
                             "which no earlier layer produces")
        after = layers[index + 1] if index + 1 < len(layers) else None
        scale = after if (layer.type == "BatchNorm" and after is not None
                          and after.type == "Scale" and after.bottom == layer.top) else None
        read.update(dict.fromkeys(layer.bottom, True))
        sources[layer.name] = [writer[b] for b in layer.bottom]
        if scale is not None:
            layer = dataclasses.replace(layer, top=scale.top)
        read.update(dict.fromkeys(layer.top, False))
        writer.update(dict.fromkeys(layer.top, layer.name))
        steps.append((layer, scale))
    ends = [blob for blob, was_read in read.items() if not was_read]
    if not ends:
        raise CaffeError("the network has no output blob")
    return Plan(deploy.name or "caffe", start, steps, sources, ends)


@dataclasses.dataclass
class Built:
    """A built network: the Keras model from the image to every output blob, and each blob's
    latest tensor."""

    model: keras.Model
    blobs: dict


def build(planned, weights, preprocess=None, embedding=None, fill=None):
    """The `Built` network of `planned` (`plan`'s) with `weights` ({layer name: [blob
    arrays]}): one input, NHWC, made into the network's input first by `preprocess` (a Keras
    layer: Caffe's preprocessing of RGB pixels); a Keras layer `embedding` marks the output of
    the layer of that name. `fill(layer name, [shape])` makes the blobs of a layer `weights`
    lacks (a network tried without its caffemodel, as the tests try the zoo's)."""

    def blobs_of(name):
        if name in weights or fill is None:
            return weights.get(name, [])
        return lambda shapes: fill(name, shapes)

    input_name, (channels, height, width) = planned.input
    image = keras.Input((height, width, channels), name="image")
    blobs = {input_name: preprocess(image) if preprocess else image}
    for layer, scale in planned.steps:
        weightless = layer.type in _NO_WEIGHTS or (layer.type == "Normalize"
                                                   and _vector_normalize(layer, []))
        if not weightless and layer.name not in weights and fill is None:
            raise CaffeError(f"layer {layer.name} ({layer.type}) has no weights in the "
                             "caffemodel (no layer of that name there)")
        own = blobs_of(layer.name)
        xs = [blobs[b] for b in layer.bottom]
        if layer.type in ("Split", "Dropout"):
            outputs = [xs[0]] * len(layer.top)
        elif layer.type in ("Axpy", "Eltwise", "Concat", "Slice"):
            outputs = _many_inputs(layer, xs)
        elif layer.type == "BatchNorm":
            affine = None
            if scale is not None:
                bias = scale.message.scale_param.bias_term
                affine = _expect(scale, blobs_of(scale.name),
                                 [(xs[0].shape[-1],)] * (2 if bias else 1))
                if not bias:
                    affine.append(np.zeros(xs[0].shape[-1]))
            outputs = [_batch_norm(layer, xs[0], own, affine)]
        else:
            outputs = [_one_input(layer, xs[0], own)]
        if layer.name == embedding:
            outputs = [keras.layers.Identity(name="embedding")(outputs[0]), *outputs[1:]]
        blobs.update(zip(layer.top, outputs))
    outputs = [blobs[t] for t in planned.ends]
    model = keras.Model(image, outputs[0] if len(outputs) == 1 else outputs, name=planned.name)
    return Built(model, blobs)
