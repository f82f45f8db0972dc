"""Real deploy networks as people wrote them (../shared/data/caffe_zoo: BVLC's, the field's
face networks, MTCNN, MobileNets, an SSD face detector): each imports with weights made here
(random, of the shapes its layers need) and equals OpenCV's dnn on the same files, or
runs where OpenCV cannot (the forks' Flip, Axpy and L2 Normalize) and is checked by what it
must do, or is refused in one line naming its first unsupported layer. Skipped where the
folder is absent (KERASBN_CAFFE_ZOO names another)."""

import os

import numpy as np
import pytest

from kerasbn.caffe import network, proto

cv2 = pytest.importorskip("cv2")
ZOO = os.environ.get("KERASBN_CAFFE_ZOO", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "caffe_zoo"))
FILES = sorted(f[:-len(".prototxt")] for f in os.listdir(ZOO)
               if f.endswith(".prototxt")) if os.path.isdir(ZOO) else []
# The fork layers OpenCV lacks, replaced for it by BVLC layers that compute the same.
FORKS = {"arcface_seresnet50_axpy": "Axpy as Scale and Eltwise for OpenCV",
         "amsoftmax_face_mirror": "mirror fusion, unit norm",
         "normface_lightcnn_mirror": "mirror fusion"}
REFUSED = {"opencv_face_ssd_res10": "layer conv4_3_norm_mbox_priorbox has type PriorBox, "
                                    "which kerasbn does not import"}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FILES, reason=f"no Caffe zoo at {ZOO}")]


def random_weights(planned, rng):
    """A `network.build` fill: weights of the shapes each layer asks for, scaled so a deep
    network's activations neither vanish nor overflow (fan-in variance, BN statistics
    near the identity); {layer name: blobs} of those made."""
    kinds = {layer.name: layer.type for layer, _ in planned.steps}
    kinds.update({scale.name: "Scale" for _, scale in planned.steps if scale is not None})
    made = {}

    def fill(name, shapes):
        kind = kinds[name]
        if kind == "BatchNorm":
            blobs = [rng.normal(0, 0.1, shapes[0]), rng.uniform(0.5, 1.5, shapes[1]),
                     np.ones(1)]
        elif kind == "Scale":
            blobs = [rng.uniform(0.8, 1.2, shapes[0])] + [rng.normal(0, 0.1, s)
                                                           for s in shapes[1:]]
        elif kind in ("PReLU", "Normalize"):
            blobs = [rng.uniform(0, 0.3, shapes[0])]
        else:
            fan_in = int(np.prod(shapes[0][1:]))
            blobs = [rng.normal(0, np.sqrt(1 / fan_in), shapes[0])] + [
                rng.normal(0, 0.01, s) for s in shapes[1:]]
        made[name] = [np.asarray(b, np.float32) for b in blobs]
        return made[name]
    return fill, made


def _axpy_for_opencv(net):
    """`net` with each Axpy(a, x, y) written as BVLC layers: a flattened to N,C, x scaled by
    it along axes 0-1 (Scale with two bottoms), plus y (Eltwise SUM)."""
    out = proto.messages()["NetParameter"]()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer.type != "Axpy":
            out.layer.add().CopyFrom(layer)
            continue
        (a, x, y), top = layer.bottom, layer.top[0]
        out.layer.add(name=f"{top}_a", type="Flatten", bottom=[a], top=[f"{top}_a"])
        scale = out.layer.add(name=f"{top}_ax", type="Scale", bottom=[x, f"{top}_a"],
                              top=[f"{top}_ax"])
        scale.scale_param.axis = 0
        out.layer.add(name=layer.name, type="Eltwise", bottom=[f"{top}_ax", y], top=[top])
    return out


def _run_ours(built, x):
    outputs = built.model(x.transpose(0, 2, 3, 1))
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [o.numpy().transpose(0, 3, 1, 2) if o.ndim == 4 else o.numpy() for o in outputs]


@pytest.mark.parametrize("name", FILES)
def test_every_zoo_network_imports_equal_to_opencv_or_is_refused_in_one_line(name, tmp_path):
    from google.protobuf import text_format

    path = os.path.join(ZOO, f"{name}.prototxt")
    deploy = proto.read_prototxt(path)
    if name in REFUSED:
        with pytest.raises(network.CaffeError) as info:
            network.plan(deploy)
        assert str(info.value).startswith(REFUSED[name]) and "\n" not in str(info.value)
        return
    planned = network.plan(deploy)
    fill, made = random_weights(planned, np.random.default_rng(0))
    built = network.build(planned, {}, fill=fill)
    channels, height, width = planned.input[1]
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, channels, height, width)).astype(np.float32)
    mine = _run_ours(built, x)
    assert all(np.isfinite(o).all() and o.std() > 0 for o in mine)
    # The same weights, matched by the Caffe names, give the same network from a file.
    prototxt, caffemodel = proto.write_net(tmp_path, name, open(path).read(), made)
    again = network.build(network.plan(proto.read_prototxt(prototxt)),
                          network.weights_of(proto.read_caffemodel(caffemodel)))
    for a, b in zip(_run_ours(again, x), mine):
        np.testing.assert_array_equal(a, b)
    if "mirror" in name:
        # A face and its mirror give one embedding: the network sums (or takes the larger
        # of) each image's and its mirror's.
        for a, b in zip(_run_ours(built, x[..., ::-1].copy()), mine):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
        if name == "amsoftmax_face_mirror":
            np.testing.assert_allclose(np.linalg.norm(mine[0], axis=1), 1, rtol=1e-5)
        return
    if name == "arcface_seresnet50_axpy":
        prototxt = str(tmp_path / "for_opencv.prototxt")
        with open(prototxt, "w") as f:
            f.write(text_format.MessageToString(_axpy_for_opencv(deploy)))
    reference = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    reference.setInput(x)
    # OpenCV names an output by the layer that wrote it last (a BatchNorm's Scale).
    writers = {top: (scale or layer).name for layer, scale in planned.steps for top in layer.top}
    theirs = reference.forward([writers[end] for end in planned.ends])
    worst = max(float(np.abs(a.reshape(b.shape) - b).max() / np.abs(b).max())
                for a, b in zip(mine, theirs))
    print(f"{name}: imported, largest difference from OpenCV {worst:.1e} of the output's "
          "scale")
    assert worst < 1e-4, (name, worst)
