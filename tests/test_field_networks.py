"""The field's networks, insightface's IResNet and MobileFaceNet: parameter counts from
their definitions, counted by hand, and training under every BN semantics at narrow
widths."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from kerasbn import config
from kerasbn.nn import iresnet, mobilefacenet, models, norms
from kerasbn.training import network


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def by_hand(name, size, channels, embedding, widths=iresnet.WIDTHS):
    """The backbone's parameters from insightface's definition: convolutions without bias,
    BN's scale and shift, PReLU's one slope per channel, the neck's fully connected layer."""
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
    return count + bn(inplanes) + inplanes * height * width * embedding + embedding + bn(
        embedding)


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


def _narrow(norm, **kw):
    values = dict(data_dir="d", run_dir="r", model="iresnet18", num_classes=6,
                  image_size=(32, 32), channels=3, batch_size=8, test_interval=2,
                  schedule={"max_iter": 2, "base_lr": 0.05}, widths=(8, 8, 8, 16, 16),
                  embedding_dim=16, norm=norm, head="arcface")
    values.update(kw)
    return config.RunConfig(**values)


@pytest.mark.parametrize("model, widths", [("iresnet18", (8, 8, 8, 16, 16)),
                                           ("mobilefacenet", (16, 32, 16, 32, 64, 64))])
@pytest.mark.parametrize("norm", norms.NORMS)
def test_a_narrow_field_network_trains_under_every_norm(norm, model, widths):
    keras.utils.set_random_seed(0)
    model = network.build_and_compile(_narrow(norm, model=model, widths=widths))
    rng = np.random.default_rng(0)
    for _ in range(3):
        logs = model.train_on_batch(rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
                                    rng.integers(0, 6, 8), return_dict=True)
        assert np.isfinite(logs["loss"]), norm
    assert all(np.all(np.isfinite(v.numpy())) for v in model.variables)


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


@pytest.mark.parametrize("preset", ["arcface_r50", "arcface_r100", "arcface_mbf", "quick"])
def test_the_field_presets_are_valid_runs_at_112(preset):
    from absl import flags

    from kerasbn.data.manifest import Manifest
    from kerasbn.flags import cli, train_flags
    values = cli.parse(["train", f"--flagfile={os.path.join(LAUNCH, preset + '.flags')}"],
                       train_flags.define)[0]
    manifest = Manifest(image_size=(112, 112), channels=3, encoding="raw",
                        class_names=tuple(f"id{i}" for i in range(100)), splits={},
                        mean=(0.0,) * 3, std=(1.0,) * 3)
    run = train_flags.to_config(values, manifest)
    assert run.model.startswith(("iresnet", "mobilefacenet")) and run.head == "arcface"
    assert isinstance(values, flags.FlagValues)


def test_the_quick_preset_trains_verifies_exports_and_names_an_aligned_photo(tmp_path, capsys):
    from skimage import data as photos

    from conftest import run_train
    from data_tools import synth
    from kerasbn import predict
    from kerasbn.training.run_dir import RunDir
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
