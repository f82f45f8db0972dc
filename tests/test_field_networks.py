"""The field's networks, insightface's IResNet and MobileFaceNet: parameter counts from
their definitions, counted by hand, and training under every BN semantics at narrow
widths."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from kerasbn import config
from kerasbn.nn import models, norms, prelu
from kerasbn.nn.networks import iresnet, mobilefacenet
from kerasbn.runs import network


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def by_hand(name, size, channels, embedding, widths=iresnet.WIDTHS):
    """The backbone's trainable parameters from insightface's definition: convolutions
    without bias, BN's scale and shift (the last BN's shift alone: its weight is fixed),
    PReLU's one slope per channel, the neck's fully connected layer."""
    bn = lambda c: 2 * c
    stem, *stages = widths
    count = 3 * 3 * channels * stem + bn(stem) + stem
    inplanes = stem
    for blocks, planes in zip(iresnet.LAYERS[name], stages):
        for index in range(blocks):
            count += bn(inplanes) + 9 * inplanes * planes + bn(planes) + planes
            count += 9 * planes * planes + bn(planes)
            if index == 0:  # stride 2: the shortcut is a 1x1 convolution and BN
                count += inplanes * planes + bn(planes)
            inplanes = planes
    height, width = (side // iresnet.STRIDE for side in size)
    return count + bn(inplanes) + inplanes * height * width * embedding + embedding + embedding


@pytest.mark.slow
@pytest.mark.parametrize("name", list(iresnet.LAYERS))
def test_parameter_counts_at_112_are_the_definitions(name):
    model = models.build(name, 10, image_size=(112, 112), channels=3, embedding_dim=512)
    classifier = 512 * 10 + 10
    assert _trainable(model) - classifier == by_hand(name, (112, 112), 3, 512)
    assert model.get_layer("embedding").output.shape == (None, 512)


def test_the_published_sizes_of_r50_and_r100():
    # insightface: about 43.6M parameters for r50 and 65.2M for r100 with a 512-d embedding.
    assert by_hand("iresnet50", (112, 112), 3, 512) / 1e6 == pytest.approx(43.6, abs=0.05)
    assert by_hand("iresnet100", (112, 112), 3, 512) / 1e6 == pytest.approx(65.2, abs=0.05)


def test_an_odd_size_and_narrow_widths_build_and_embed():
    widths = (8, 8, 16, 16, 32)
    model = models.build("iresnet18", 5, image_size=(80, 64), channels=1, widths=widths,
                         embedding_dim=16)
    assert _trainable(model) - (16 * 5 + 5) == by_hand("iresnet18", (80, 64), 1, 16, widths)
    out = model(np.zeros((2, 80, 64, 1), np.float32), training=False)
    assert out.shape == (2, 5)


def mbf_by_hand(size, channels, embedding, widths=mobilefacenet.WIDTHS):
    """MobileFaceNet's parameters from arcface_torch's definition."""
    low, high, e1, e2, e3, separable = widths
    block = lambda c_in, c_out, k, groups=1, prelu=True: (
        k * k * (c_in // groups) * c_out + 2 * c_out + (c_out if prelu else 0))
    bottleneck = lambda c_in, c_out, e: (block(c_in, e, 1) + block(e, e, 3, e)
                                         + block(e, c_out, 1, prelu=False))
    count = block(channels, low, 3) + block(low, low, 3, low // 2)
    count += bottleneck(low, low, e1) + 4 * bottleneck(low, low, e1)
    count += bottleneck(low, high, e2) + 6 * bottleneck(high, high, e2)
    count += bottleneck(high, high, e3) + 2 * bottleneck(high, high, e2)
    count += block(high, separable, 1)
    height, width = (side // mobilefacenet.STRIDE for side in size)
    count += height * width * separable + 2 * separable  # the GDC and its BN
    return count + separable * embedding + 2 * embedding


@pytest.mark.parametrize("size, widths", [((112, 112), mobilefacenet.WIDTHS),
                                          ((64, 96), (16, 32, 16, 32, 64, 64))])
def test_mobilefacenets_parameter_count_is_its_definitions(size, widths):
    model = models.build("mobilefacenet", 10, image_size=size, channels=3, embedding_dim=512,
                         widths=widths)
    assert _trainable(model) - (512 * 10 + 10) == mbf_by_hand(size, 3, 512, widths)
    assert model.get_layer("embedding").output.shape == (None, 512)


def _train_a_few(model, size=32):
    rng = np.random.default_rng(0)
    for _ in range(3):
        logs = model.train_on_batch(rng.normal(size=(8, size, size, 3)).astype(np.float32),
                                    rng.integers(0, 6, 8), return_dict=True)
        assert np.isfinite(logs["loss"])
    assert all(np.all(np.isfinite(v.numpy())) for v in model.variables)


FIELD_NARROW = [("iresnet18", (8, 8, 8, 16, 16)), ("mobilefacenet", (16, 32, 16, 32, 64, 64))]


def _narrow(norm, **kw):
    values = dict(data_dir="d", run_dir="r", model="iresnet18", num_classes=6,
                  image_size=(32, 32), channels=3, batch_size=8, test_interval=2,
                  schedule={"max_iter": 2, "base_lr": 0.05}, widths=(8, 8, 8, 16, 16),
                  embedding_dim=16, norm=norm, head="arcface")
    values.update(kw)
    return config.RunConfig(**values)


# IResNet under every norm; MobileFaceNet (whose grouped convolutions make each case slower)
# under the study's Caffe semantics and Keras's.
@pytest.mark.slow
@pytest.mark.parametrize("model, widths, norm", [
    *((*FIELD_NARROW[0], norm) for norm in norms.NORMS),
    *((*FIELD_NARROW[1], norm) for norm in ("keras", "bvlc", "windows", "nvidia"))])
def test_a_narrow_field_network_trains_under_every_norm(norm, model, widths):
    keras.utils.set_random_seed(0)
    _train_a_few(network.build_and_compile(_narrow(norm, model=model, widths=widths)))


@pytest.mark.slow
@pytest.mark.parametrize("model, widths", FIELD_NARROW)
@pytest.mark.parametrize("precision, norm, xla", [
    ("mixed_float16", "bvlc", False), ("mixed_bfloat16", "nvidia", False),
    ("mixed_bfloat16", "keras", True)])
def test_mixed_precision_and_xla_train_the_field_networks(model, widths, precision, norm, xla):
    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()  # an earlier --deterministic run in this process
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    try:
        net = network.build_and_compile(_narrow(norm, model=model, widths=widths,
                                                precision=precision, jit_compile=xla))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert net.get_layer("stem").compute_dtype == precision.replace("mixed_", "")
    assert net.jit_compile == xla
    _train_a_few(net)


@pytest.mark.slow
@pytest.mark.parametrize("model, widths", FIELD_NARROW)
def test_bn_runs_the_fused_kernel_on_the_low_precision_tensor_without_casts(model, widths):
    import tensorflow as tf
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = models.build(model, 6, image_size=(32, 32), channels=3, widths=widths,
                           embedding_dim=16, norm="keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(images, training=True))
        return tape.gradient(loss, net.trainable_variables)

    graph = step.get_concrete_function(tf.TensorSpec([8, 32, 32, 3])).graph
    ops = {op.name: op for op in graph.get_operations()}
    fused = [op for op in ops.values() if op.type == "FusedBatchNormV3"]
    bn_layers = [layer for layer in net.layers if isinstance(layer, norms.KerasBatchNorm)]
    assert len(fused) == len(bn_layers) > 10
    for op in fused:
        assert op.get_attr("T") == tf.bfloat16, op.name
        assert op.inputs[0].op.type != "Cast", op.name  # the kernel takes bfloat16 itself
    backward = [op for op in ops.values() if op.type == "FusedBatchNormGradV3"]
    assert len(backward) == len(bn_layers)


@pytest.mark.parametrize("shared_axes", [[1, 2], None])
def test_the_fused_prelu_is_the_formula_and_kerass_layer_with_their_gradients(shared_axes):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 6, 7)).astype(np.float32)
    upstream = rng.standard_normal(x.shape).astype(np.float32)
    ours = prelu.PReLU(shared_axes=shared_axes)
    theirs = keras.layers.PReLU(shared_axes=shared_axes)
    for layer in (ours, theirs):
        layer.build(x.shape)
    alpha = rng.uniform(-1, 1, ours.alpha.shape).astype(np.float32)
    ours.set_weights([alpha])
    theirs.set_weights([alpha])
    axes = (0, *(shared_axes or ()))
    expected = [np.where(x > 0, x, alpha * x), np.where(x > 0, upstream, alpha * upstream),
                np.where(x > 0, 0, x * upstream).sum(axes, keepdims=True)[0]]
    inputs = tf.constant(x)
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=True)
        found = [y, *tape.gradient(y, [inputs, layer.alpha], output_gradients=upstream)]
        for got, want in zip(found, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours(inputs, training=False), theirs(inputs))
    low = tf.cast(inputs, tf.bfloat16)
    ours_low = prelu.PReLU.from_config({**ours.get_config(), "dtype": "mixed_bfloat16"})
    theirs_low = keras.layers.PReLU.from_config({**ours.get_config(),
                                                 "dtype": "mixed_bfloat16"})
    for layer in (ours_low, theirs_low):
        layer.build(x.shape)
        layer.set_weights([alpha])
    np.testing.assert_array_equal(ours_low(low, training=True), theirs_low(low))


@pytest.mark.slow
def test_it_serializes_and_refuses_what_it_cannot_take(tmp_path):
    model = models.build("iresnet18", 4, image_size=(32, 32), channels=3,
                         widths=(8, 8, 8, 16, 16), embedding_dim=8)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), atol=1e-5)
    with pytest.raises(config.ConfigError, match="multiples of 16, not 50x50"):
        _narrow("keras", image_size=(50, 50))
    with pytest.raises(config.ConfigError, match="neck built in"):
        _narrow("keras", embedding="bn_fc")


LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch",
                      "field")


# Today's arcface_torch configs (insightface d9cb10e6, recognition/arcface_torch/configs),
# transcribed: network, margin_list, embedding_size, sample_rate, momentum, weight_decay,
# per-GPU batch_size (x 8 GPUs for the global batch), lr, num_epoch, warmup_epoch, fp16.
CONFIGS = {
    "ms1mv3_r50": ("iresnet50", (1.0, 0.5, 0.0), 512, 1.0, 0.9, 5e-4, 128, 0.1, 20, 0, True),
    "ms1mv3_r100": ("iresnet100", (1.0, 0.5, 0.0), 512, 1.0, 0.9, 5e-4, 128, 0.1, 20, 0, True),
    "ms1mv3_mbf": ("mobilefacenet", (1.0, 0.5, 0.0), 512, 1.0, 0.9, 1e-4, 128, 0.1, 40, 0,
                   True),
    "glint360k_r100": ("iresnet100", (1.0, 0.0, 0.4), 512, 1.0, 0.9, 5e-4, 128, 0.1, 20, 0,
                       True),
    "wf42m_pfc02_r50": ("iresnet50", (1.0, 0.5, 0.0), 512, 0.2, 0.9, 5e-4, 512, 0.4, 20, 2,
                        True),
    # configs/wf42m_pfc03_40epoch_8gpu_vit_t.py at insightface 5ef98047.
    "wf42m_pfc03_vit_t": ("vit_t", (1.0, 0.0, 0.4), 512, 0.3, 0.9, 0.1, 512, 0.001, 40, 4,
                          True),
}
# The configs' optimizer (config.optimizer; sgd where not named here), and get_model's
# network variant as (drop_path_rate, mask_ratio) where the config names one.
OPTIMIZERS = {"wf42m_pfc03_vit_t": "AdamW"}
VARIANTS = {"wf42m_pfc03_vit_t": (0.05, 0.0)}
# What train_v2.py fixes for every config: the loss's scale, the clip of the backbone's
# gradient norm, PolynomialLRWarmup's power, torch.optim.SGD (weight decay on every
# parameter), PyTorch's BatchNorm, and its dataset's random horizontal flip.
TRAIN_V2 = {"scale": 64.0, "clip_grad_norm": 5.0, "power": 1.0, "sgd": "torch",
            "norm": "torch", "head": "combined", "lr_policy": "poly_warmup", "mirror": True,
            "bias_decay_mult": 1.0, "bn_decay_mult": 1.0, "prelu_decay_mult": 1.0}


def _preset(name, train_images=5_179_510):
    from kerasbn.data.manifest import Manifest, Split
    from kerasbn.flags import cli, train_flags
    values = cli.parse(["train", f"--flagfile={os.path.join(LAUNCH, name + '.flags')}"],
                       train_flags.define)[0]
    manifest = Manifest(image_size=(112, 112), channels=3, encoding="raw",
                        class_names=tuple(f"id{i}" for i in range(93_431)),
                        splits={"train": Split((), train_images)},
                        mean=(0.0,) * 3, std=(1.0,) * 3)
    return train_flags.to_config(values, manifest)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_preset_is_its_arcface_torch_config(name):
    (network_name, margin_list, embedding, sample_rate, momentum, weight_decay, batch, lr,
     num_epoch, warmup_epoch, fp16) = CONFIGS[name]
    run = _preset(name)
    per_epoch = 5_179_510 // (batch * 8)
    assert (run.model, run.margins, run.embedding_dim, run.sample_classes, run.momentum,
            run.weight_decay, run.batch_size, run.schedule.base_lr, run.num_epoch,
            run.warmup_epoch, run.precision == "mixed_float16") == (
        network_name, margin_list, embedding, sample_rate, momentum, weight_decay, batch * 8,
        lr, num_epoch, warmup_epoch, fp16)
    assert (run.max_iter, run.schedule.warmup_iter) == (per_epoch * num_epoch,
                                                        per_epoch * warmup_epoch)
    got = {key: getattr(run.schedule if key in ("power", "lr_policy") else run, key)
           for key in TRAIN_V2}
    assert got == TRAIN_V2
    assert run.sample_update == ("all" if sample_rate < 1 else "drawn")
    assert run.solver_type == OPTIMIZERS.get(name, "SGD")
    assert (run.drop_path, run.mask_ratio) == VARIANTS.get(name, (None, None))
    if run.solver_type == "AdamW":  # torch.optim.AdamW's defaults
        assert (run.momentum2, run.delta, run.iter_size) == (0.999, 1e-8, 1)


def test_the_quick_preset_is_a_valid_run_at_112():
    run = _preset("quick", 1000)
    assert run.model == "iresnet18" and run.head == "arcface"


@pytest.mark.slow
def test_the_quick_preset_trains_verifies_exports_and_names_an_aligned_photo(tmp_path, capsys):
    from conftest import run_train
    from skimage import data as photos

    from data_tools import synth
    from kerasbn import predict
    from kerasbn.runs.run_dir import RunDir
    synth.build(str(tmp_path / "data"), 6, 12, 0.25, 112, 0, "raw", 64, False,
                holdout_identities=4, pairs=20, channels=3)
    run_dir = str(tmp_path / "run")
    run_train([f"--flagfile={os.path.join(LAUNCH, 'quick.flags')}",
               f"--data_dir={tmp_path / 'data'}", f"--run_dir={run_dir}", "--max_iter=4",
               "--test_interval=4", "--snapshot=4", "--display=2"])
    out = capsys.readouterr().out
    assert "verify iter 4: accuracy" in out
    Image.fromarray(photos.astronaut()).save(tmp_path / "astronaut.png")
    predict.main(["predict", f"--model={RunDir(run_dir).export}", "--align",
                  str(tmp_path / "astronaut.png")])
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{tmp_path / 'astronaut.png'} face 0 at ")


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory):
    from data_tools import synth
    out = tmp_path_factory.mktemp("rgb32")
    synth.build(str(out), 6, 16, 0.25, 32, 0, "raw", 64, False, channels=3)
    return str(out)


def _iresnet_args(data_dir, run_dir, **extra):
    from conftest import train_args
    settings = dict(model="iresnet18", widths="8,8,8,16,16", embedding_dim=16, head="arcface",
                    batch_size=8, max_iter=8, snapshot=4, test_interval=4, display=4)
    settings.update(extra)
    return train_args(data_dir, run_dir, **settings)


@pytest.mark.slow
def test_an_iresnet_run_resumes_bit_identical_and_tunes_into_new_identities(
        rgb32, tmp_path, capsys, monkeypatch):
    from conftest import run_stopped_then_resumed, run_train
    from test_finetune import restored
    from test_train import _final_state, _metrics

    from data_tools import synth
    runs = {name: str(tmp_path / name) for name in ("whole", "cut", "tuned")}
    args = lambda run: _iresnet_args(rgb32, runs[run], deterministic="true")
    run_train(args("whole"))
    # Stopped at a display (the displayed loss averages the iterations a process ran);
    # test_train kills the study's network at any moment.
    run_stopped_then_resumed(args("cut"), monkeypatch, 4)
    timing = ("wall_time", "images_per_sec", "test_seconds", "verify_seconds")
    strip = lambda run: [{k: v for k, v in e.items() if k not in timing}
                         for e in _metrics(runs[run])]
    assert strip("cut") == strip("whole")
    whole, cut = _final_state(runs["whole"]), _final_state(runs["cut"])
    assert whole.keys() == cut.keys() and len(whole) > 100
    for name in whole:
        np.testing.assert_array_equal(whole[name], cut[name], err_msg=name)
    # Fine-tuning into 7 people never seen: the backbone comes over, frozen for the whole run.
    others = str(tmp_path / "others")
    synth.build(others, 7, 12, 0.25, 32, 5, "raw", 64, False, channels=3)
    run_train(_iresnet_args(others, runs["tuned"], max_iter=4, weights=runs["whole"],
                            freeze_backbone_iter=4))
    assert "6 classes there, 7 here" in capsys.readouterr().out
    source, tuned = restored(runs["whole"]), restored(runs["tuned"])
    assert tuned["logits"][0].shape == (7, 16)  # ArcFace keeps a centre per row
    for name, weights in source.items():
        if name != "logits":
            for a, b in zip(weights, tuned[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("norm", ["torch", "sync"])
def test_the_iresnet_embedding_bn_keeps_its_scale_at_1_through_training_and_unfreezing(norm):
    """insightface fixes its IResNet's last BN weight (features.weight.requires_grad =
    False): untrained, it stays 1 after steps and after --freeze_backbone_iter unfreezes."""
    from kerasbn.nn import keras_compat
    model = models.build("iresnet18", 5, image_size=(16, 16), channels=3, widths=(4, 4, 4, 4, 4),
                         embedding_dim=8, norm=norm)
    embedding = model.get_layer("embedding")
    assert all(v.path != f"{embedding.name}/gamma" for v in model.trainable_variables)
    keras_compat.freeze_backbone(model, True)
    keras_compat.freeze_backbone(model, False)
    assert all(not v.path.endswith("embedding/gamma") for v in model.trainable_variables)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    model.fit(x, np.arange(4) % 5, epochs=2, verbose=0)
    gammas = [v for v in embedding.weights if v.name == "gamma"]
    for gamma in gammas:
        np.testing.assert_array_equal(gamma.numpy(), 1.0)
    assert [v.name for v in embedding.weights].count("beta") == 1


def _kernel_std(model, name):
    return float(np.std(model.get_layer(name).kernel.numpy()))


def test_the_field_networks_start_from_insightfaces_initialisation():
    """Statistics of freshly built weights against insightface's _initialize_weights: IResNet's
    convolutions N(0, 0.1) (once He-normal: 0.27 in the stem, 0.059 in stage 1), its fully
    connected layer and bias uniform on +-1/sqrt(fan_in) (once Glorot); MobileFaceNet's
    N(0, 2 / fan_out)."""
    keras.utils.set_random_seed(0)
    ir = models.build("iresnet18", 5, image_size=(32, 32), channels=3,
                      widths=(64, 64, 64, 64, 64), embedding_dim=64)
    for name in ("stem", "stage1_1_conv1", "stage2_1_conv2"):
        assert _kernel_std(ir, name) == pytest.approx(0.1, rel=0.05)
    fc = ir.get_layer("embedding_fc")
    bound = 1 / np.sqrt(fc.kernel.shape[0])
    for weights in (fc.kernel.numpy(), fc.bias.numpy()):
        assert np.abs(weights).max() <= bound
    assert float(np.std(fc.kernel.numpy())) == pytest.approx(bound / np.sqrt(3), rel=0.05)
    mbf = models.build("mobilefacenet", 5, image_size=(32, 32), channels=3, embedding_dim=64)
    for name, fan_out in (("stem", 128 * 9), ("stage1_1_expand", 128), ("gdc", 512 * 4)):
        assert _kernel_std(mbf, name) == pytest.approx(np.sqrt(2 / fan_out), rel=0.08)
    zero = models.build("iresnet18", 5, image_size=(32, 32), channels=3,
                        widths=(4, 4, 4, 4, 4), embedding_dim=8, zero_init_residual=True)
    np.testing.assert_array_equal(zero.get_layer("stage1_1_bn2").gamma.numpy(), 0)
    np.testing.assert_array_equal(zero.get_layer("stage1_1_bn3").gamma.numpy(), 1)
