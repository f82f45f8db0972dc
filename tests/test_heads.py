"""Margin heads (CosFace, ArcFace), Partial FC's sampled classifier and the embedding neck,
against numpy transcriptions of their formulas (insightface's CombinedMarginLoss and
partial_fc) and against the full classifier."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_synth, run_stopped_then_resumed, run_train, train_args

from kerasbn import config
from kerasbn.nn import models, partial_fc
from kerasbn.nn.heads import cosine, margins
from kerasbn.runs import checkpoints, network
from kerasbn.runs.run_dir import RunDir, stored_config
from kerasbn.serving import signatures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cosines(features, centres):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    c = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return f @ c.T


def _numpy_loss(features, centres, labels, head, scale, margin, easy_margin=False):
    """insightface's margin on the true class, then softmax cross entropy (mean)."""
    cos = np.clip(_cosines(features, centres), -1, 1)
    rows = np.arange(len(labels))
    true = cos[rows, labels]
    if head == "cosface":
        target = true - margin
    else:
        theta = np.arccos(true)
        target = np.cos(theta + margin)
        if easy_margin:
            target = np.where(true > 0, target, true)
        else:
            target = np.where(theta < math.pi - margin, target,
                              true - math.sin(math.pi - margin) * margin)
    logits = scale * cos
    logits[rows, labels] = scale * target
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[rows, labels].mean()


def _layer(centres, scale):
    layer = cosine.CosineClassifier(len(centres), scale)
    layer.build((None, centres.shape[1]))
    layer.kernel.assign(centres)
    return layer


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(8, 5)).astype(np.float32),
            rng.normal(size=(11, 5)).astype(np.float32), rng.integers(0, 11, 8))


@pytest.mark.parametrize("head,margin,easy", [("cosface", 0.35, False), ("arcface", 0.5, False),
                                              ("arcface", 0.5, True), ("arcface", 1.2, False)])
def test_a_margin_heads_logits_loss_and_gradient_follow_its_formula(batch, head, margin, easy):
    features, centres, labels = batch
    scale = 16.0
    layer = _layer(centres, scale)
    np.testing.assert_allclose(layer(features).numpy(), scale * _cosines(features, centres),
                               rtol=1e-5, atol=1e-5)
    loss = margins.MarginLoss(head, scale, margin, easy)
    x = tf.Variable(features)
    with tf.GradientTape() as tape:
        value = loss(labels, layer(x))
    np.testing.assert_allclose(float(value), _numpy_loss(features, centres, labels, head, scale,
                                                         margin, easy), rtol=1e-5)
    gradient = tape.gradient(value, x).numpy()
    numeric = np.zeros_like(features, dtype=np.float64)
    step = 1e-3
    for index in np.ndindex(features.shape):
        up, down = features.astype(np.float64), features.astype(np.float64)
        up[index] += step
        down[index] -= step
        loss = lambda f: _numpy_loss(f, centres, labels, head, scale, margin, easy)
        numeric[index] = (loss(up) - loss(down)) / (2 * step)
    cosine = np.sum(gradient * numeric) / np.linalg.norm(gradient) / np.linalg.norm(numeric)
    assert cosine > 0.999
    np.testing.assert_allclose(gradient, numeric, atol=2e-3)


def test_arcface_falls_back_beyond_pi_minus_m_as_the_original_does():
    # A true class at angle 170 degrees: cos(theta + m) would rise again, so the original
    # uses cos(theta) - m sin(m) there; easy_margin leaves a negative cosine unmargined.
    m, scale = 0.5, 10.0
    cos = np.float32(math.cos(math.radians(170)))
    logits = tf.constant([[scale * cos, 0.0]])
    fallback = margins.margin_logits([0], logits, "arcface", scale, m).numpy()[0, 0]
    assert fallback == pytest.approx(scale * (cos - math.sin(math.pi - m) * m), rel=1e-5)
    easy = margins.margin_logits([0], logits, "arcface", scale, m, easy_margin=True).numpy()[0, 0]
    assert easy == pytest.approx(scale * cos, rel=1e-5)


@pytest.mark.parametrize("dim", [1, 8])
@pytest.mark.parametrize("easy", [False, True])
def test_arcface_keeps_a_finite_gradient_where_a_feature_is_parallel_to_its_centre(dim, easy):
    rng = np.random.default_rng(dim)
    centres = rng.normal(size=(4, dim)).astype(np.float32)
    labels = np.array([0, 2, 3])
    features = tf.Variable(centres[labels] * np.float32(2.5))  # cos = 1 with the true centre
    layer = cosine.CosineClassifier(4, 30.0)
    layer.build((None, dim))
    layer.kernel.assign(centres)
    loss = margins.MarginLoss("arcface", 30.0, 0.5, easy)
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(labels, layer(features)))
    gradients = tape.gradient(value, [features, layer.kernel])
    assert np.isfinite(value.numpy())
    for gradient in gradients:
        assert np.all(np.isfinite(gradient.numpy()))
    # The margin's value there is cos(0 + m), to float32's resolution of an angle near 0
    # (a cosine of 1 - 6e-8 is an angle of 3.5e-4).
    margined = margins.margin_logits(labels, layer(features), "arcface", 30.0, 0.5, easy)
    np.testing.assert_allclose(tf.gather(margined, labels, batch_dims=1) / 30.0,
                               math.cos(0.5), atol=5e-4)


@pytest.mark.parametrize("head", ["cosface", "arcface"])
def test_margin_zero_is_normalised_softmax_at_the_same_scale(batch, head):
    features, centres, labels = batch
    logits = _layer(centres, 24.0)(features)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    margined = margins.MarginLoss(head, 24.0, 0.0)(labels, logits)
    assert float(margined) == pytest.approx(float(plain), rel=1e-5)


def test_sampling_every_centre_is_the_full_classifier(batch):
    features, centres, labels = batch
    layer = _layer(centres, 8.0)
    logits, targets = layer.sampled(features, labels, len(centres), [1, 2])
    np.testing.assert_allclose(logits.numpy(), layer(features).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(targets.numpy(), labels)


def test_a_sampled_step_holds_every_class_of_the_batch_and_its_labels_point_at_them():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(1000, 4)).astype(np.float32)
    layer = _layer(centres, 8.0)
    features = rng.normal(size=(64, 4)).astype(np.float32)
    full = layer(features).numpy()
    drawn = set()
    for step in range(20):
        labels = rng.integers(0, 1000, 64)
        logits, targets = layer.sampled(features, labels, 100, [0, step])
        assert logits.shape == (64, 100)
        # The logit at each label's position is the full classifier's logit of that label.
        np.testing.assert_allclose(np.take_along_axis(logits.numpy(), targets.numpy()[:, None], 1)[:, 0],
                                   full[np.arange(64), labels], rtol=1e-5)
        index = np.argmax(np.isclose(logits.numpy()[:1].T, full[:1]), axis=1)
        drawn |= set(index) - set(labels)
    # Negatives are drawn afresh each step, not the same ones.
    assert len(drawn) > 300


def _config(**kw):
    values = dict(data_dir="d", run_dir="r", num_classes=40, image_size=(50, 50), channels=1,
                  batch_size=8, test_interval=2, schedule={"max_iter": 2, "base_lr": 0.1},
                  widths=(8, 8, 8, 8, 8, 8, 16), head="cosface", weight_decay=0.01)
    values.update(kw)
    return config.RunConfig(**values)


def _trained(cfg, steps, init=None):
    keras.utils.set_random_seed(3)
    model = network.build_and_compile(cfg)
    if init is not None:
        for v, value in zip(model.variables, init):
            v.assign(value)
    rng = np.random.default_rng(5)
    for _ in range(steps):
        model.train_on_batch(rng.random((8, 50, 50, 1), np.float32), rng.integers(0, 40, 8))
    head = model.get_layer("logits")
    momentum = model.optimizer.momentums[model.optimizer._get_variable_index(head.kernel)]
    return model, head.kernel.numpy(), momentum.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["SGD", "Nesterov"])
def test_partial_fc_of_every_centre_updates_as_the_full_head_with_its_decay(solver):
    full, kernel, momentum = _trained(_config(solver_type=solver), 3)
    start = [v.numpy() for v in _trained(_config(solver_type=solver), 0)[0].variables]
    # --sample_classes just under 1 draws all 40 centres: the sparse row update with its own
    # decay must give Keras's dense SGD with the L2 term.
    sampled, sampled_kernel, sampled_momentum = _trained(
        _config(solver_type=solver, sample_classes=0.99), 3, init=start)
    assert isinstance(sampled, partial_fc.SampledTraining)
    np.testing.assert_allclose(sampled_kernel, kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sampled_momentum, momentum, rtol=1e-4, atol=1e-7)


def _second_step(sample_update):
    """A Partial FC head (16 of 64 centres drawn) after one step, then another: (the
    centres and their momentum before the second step, after it, its labels, its rate)."""
    cfg = _config(sample_classes=0.25, num_classes=64, momentum=0.9,
                  sample_update=sample_update)
    model, before, _ = _trained(cfg, 1)
    head = model.get_layer("logits")
    slot = model.optimizer.momentums[model.optimizer._get_variable_index(head.kernel)]
    velocity = slot.numpy()
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 64, 8)
    lr = float(model.optimizer.learning_rate)
    model.train_on_batch(rng.random((8, 50, 50, 1), np.float32), labels)
    return (before, velocity), (head.kernel.numpy(), slot.numpy()), labels, lr


def test_centres_not_drawn_keep_their_values_and_momentum():
    (before, momentum_before), (after, momentum), labels, _ = _second_step("drawn")
    moved = np.any(after != before, axis=1)
    assert moved.sum() == 16 and moved[labels].all()
    np.testing.assert_array_equal(momentum[~moved], momentum_before[~moved])
    np.testing.assert_array_equal(after[~moved], before[~moved])


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("head", ["cosface", "arcface"])
def test_100000_classes_give_a_finite_loss_under_mixed_precision(precision, head):
    keras.mixed_precision.set_global_policy(precision)
    cfg = _config(num_classes=100_000, head=head, precision=precision, sample_classes=0.01,
                  scale=64.0)
    model = network.build_and_compile(cfg)
    rng = np.random.default_rng(0)
    images, labels = rng.random((8, 50, 50, 1), np.float32), rng.integers(0, 100_000, 8)
    logits = model(images)
    assert logits.dtype == "float32"
    assert np.isfinite(float(network.make_loss(cfg)(labels, logits)))
    assert np.isfinite(model.train_on_batch(images, labels))


def test_the_neck_feeds_the_classifier_an_embedding_of_its_width():
    model = models.build("bn", 30, head="arcface", embedding="bn_fc", embedding_dim=64,
                         norm="nvidia")
    assert model.get_layer("embedding").output.shape == (None, 64)
    assert model.get_layer("logits").kernel.shape == (30, 64)
    # 320 x 64 + 64 for the fully connected layer, 2 x (320 + 64) BN scales and shifts.
    plain = models.build("bn", 30, head="arcface")
    extra = sum(int(np.prod(v.shape)) for v in model.trainable_variables) - sum(
        int(np.prod(v.shape)) for v in plain.trainable_variables)
    assert extra == 320 * 64 + 64 + 2 * (320 + 64) + 30 * (64 - 320)


def test_the_head_and_loss_serialize():
    layer = cosine.CosineClassifier(7, 30.0, kernel_regularizer=keras.regularizers.L2(1e-4))
    again = cosine.CosineClassifier.from_config(layer.get_config())
    assert (again.units, again.scale) == (7, 30.0)
    assert again.kernel_regularizer.get_config() == layer.kernel_regularizer.get_config()
    loss = margins.MarginLoss("arcface", 30.0, 0.3, easy_margin=True)
    assert margins.MarginLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    model = models.build("bn", 5, head="cosface", widths=(8,) * 7)
    copy = keras.models.clone_model(model)
    assert isinstance(copy.get_layer("logits"), cosine.CosineClassifier)


@pytest.mark.parametrize("settings,message", [
    ({"head": "softmax", "margin": 0.3}, "--head=softmax"),
    ({"head": "cosface", "easy_margin": True}, "ArcFace's"),
    ({"head": "cosface", "margin": 1.5}, "[0, 1)"),
    ({"head": "softmax", "sample_classes": 0.5}, "Partial FC"),
    ({"sample_classes": 0.5, "solver_type": "Adam"}, "--solver_type=SGD"),
    ({"sample_classes": 0.1}, "fewer than the 8 identities"),
    ({"model": "cifar10_quick"}, "face networks"),
])
def test_head_settings_that_cannot_work_are_refused_by_name(settings, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace(
            "(", r"\(").replace(")", r"\)")):
        _config(**settings)


@pytest.fixture(scope="module")
def forty_people(tmp_path_factory):
    out = tmp_path_factory.mktemp("forty")
    make_synth(out, identities=40, images_per_identity=8, seed=4)
    return str(out)


@pytest.mark.slow
def test_an_arcface_partial_fc_run_resumes_exactly_exports_and_serves_cosines(
        forty_people, tmp_path, monkeypatch):
    args = lambda run: train_args(forty_people, str(tmp_path / run), head="arcface",
                                  sample_classes=0.5, embedding="bn_fc", embedding_dim=32,
                                  max_iter=20, snapshot=10, deterministic="true")
    run_train(args("whole"))
    run_stopped_then_resumed(args("cut"), monkeypatch, 6)  # test_train's is 7
    restored = {}
    for run in ("whole", "cut"):
        cfg = stored_config(str(tmp_path / run))
        model = network.build_and_compile(cfg)
        checkpoints.restore_latest(RunDir(str(tmp_path / run)), model)
        restored[run] = model.get_layer("logits").kernel.numpy()
    assert (cfg.head, cfg.sample_classes, cfg.embedding) == ("arcface", 0.5, "bn_fc")
    # The draws follow the iteration, so the resumed run drew what the whole one did.
    np.testing.assert_array_equal(restored["cut"], restored["whole"])
    served = signatures.from_saved_model(RunDir(str(tmp_path / "whole")).export)
    images = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 1), np.uint8)
    outputs = served.serve(tf.constant(images))
    np.testing.assert_allclose(np.linalg.norm(outputs["embedding"].numpy(), axis=1), 1,
                               rtol=1e-5)
    assert outputs["embedding"].shape == (3, 32)
    # Inference gives every centre's unmargined cosine times the scale.
    scale = margins.resolved("arcface")[0]
    assert outputs["logits"].shape == (3, 40)
    assert np.abs(outputs["logits"].numpy()).max() <= scale * (1 + 1e-5)


@pytest.mark.slow
def test_partial_fc_over_two_replicas_ends_where_one_device_does(forty_people, tmp_path):
    # Both replicas draw for the global batch, so they take the centres one device takes.
    # One iteration: its loss is taken on the same weights and the same centres, and the test
    # after it on weights one update apart only by the order of float sums. Over more steps
    # at scale 30 those orders (and oneDNN's kernels, which differ by CPU) part the losses by
    # more than any tolerance that still tells a wrong draw from a right one.
    args = lambda run: [sys.executable, "-m", "kerasbn.train", *train_args(
        forty_people, str(tmp_path / run), head="cosface", sample_classes=0.5, norm="sync",
        max_iter=1, snapshot=1, test_interval=1, display=1)]
    for run, extra in (("one", []), ("two", ["--strategy=mirrored", "--cpu_devices=2"])):
        done = subprocess.run(args(run) + extra, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    want, got = (RunDir(str(tmp_path / run)).read_metrics()[-1] for run in ("one", "two"))
    assert got["iteration"] == want["iteration"] == 1
    assert got["train_loss"] == pytest.approx(want["train_loss"], abs=2e-4)
    assert got["test_loss"] == pytest.approx(want["test_loss"], abs=1e-3)


@pytest.mark.slow
def test_partial_fc_trains_under_xla(forty_people, tmp_path):
    # Its own process: an in-process --deterministic run earlier turns op determinism on
    # for good, and Keras has no XLA under it.
    run_dir = str(tmp_path / "xla")
    done = subprocess.run([sys.executable, "-m", "kerasbn.train", *train_args(
        forty_people, run_dir, head="arcface", sample_classes=0.5, max_iter=4, snapshot=4,
        test_interval=4, jit_compile="true")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.isfinite(RunDir(run_dir).read_metrics()[-1]["train_loss"])


def test_every_centre_takes_momentum_and_decay_with_sample_update_all():
    # insightface's PartialFC_V2: a centre not drawn has a zero gradient, but SGD's momentum
    # and weight decay still act on it: v = mu v - lr wd w; w += v (Keras's SGD, Caffe's).
    (before, velocity), (after, momentum), labels, lr = _second_step("all")
    expected_velocity = 0.9 * velocity - lr * 0.01 * before
    # The 48 centres not drawn (16 of 64 are) follow the formula (a drawn negative whose
    # gradient is tiny may too), the batch's classes do not; every centre moved.
    follows = np.all(np.isclose(after, before + expected_velocity, rtol=1e-5, atol=1e-8),
                     axis=1)
    assert follows.sum() >= 64 - 16 and not follows[labels].any()
    assert np.all(np.any(after != before, axis=1))
    np.testing.assert_allclose(momentum[follows], expected_velocity[follows], rtol=1e-4,
                               atol=1e-7)


@pytest.mark.slow
def test_sample_update_all_of_every_centre_is_the_full_head():
    full, kernel, momentum = _trained(_config(), 3)
    start = [v.numpy() for v in _trained(_config(), 0)[0].variables]
    _, sampled_kernel, sampled_momentum = _trained(
        _config(sample_classes=0.99, sample_update="all"), 3, init=start)
    np.testing.assert_allclose(sampled_kernel, kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sampled_momentum, momentum, rtol=1e-4, atol=1e-7)


def _combined_margin_loss(torch, s, m1, m2, m3, threshold=0.0):
    """insightface's CombinedMarginLoss (recognition/arcface_torch/losses.py at HEAD, July
    2026, after commit 657ae30), transcribed: its forward on logits = cos, in place."""
    def forward(logits, labels):
        index_positive = torch.where(labels != -1)[0]
        if threshold > 0:
            with torch.no_grad():
                dirty = (logits > threshold).float()
                mask = torch.ones([index_positive.size(0), logits.size(1)])
                mask.scatter_(1, labels[index_positive].view(-1, 1), 0)
                dirty[index_positive] *= mask
                tensor_mul = 1 - dirty
            logits = tensor_mul * logits
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        if m1 == 1.0 and m3 == 0.0:
            with torch.no_grad():
                target_logit.arccos_()
                logits.arccos_()
                final_target_logit = target_logit + m2
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits.cos_()
            logits = logits * s
        else:
            final_target_logit = target_logit - m3
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits = logits * s
        return logits
    return forward


@pytest.mark.parametrize("margin_list, threshold", [
    ((1.0, 0.5, 0.0), 0.0), ((1.0, 0.0, 0.4), 0.0), ((1.0, 0.5, 0.0), 0.2)])
def test_the_combined_head_is_insightfaces_combined_margin_loss_value_and_gradient(
        margin_list, threshold):
    """Today's loss: no fallback past pi - m2 and the gradient straight through the margin
    (its angles reach past 2.8, where the 2018 ArcFace's logits were 12.4 lower at s = 64),
    against PyTorch running insightface's code as transcribed."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install "
                                                "-e '.[torch]'")
    rng = np.random.default_rng(4)
    cos = rng.uniform(-1, 1, (6, 9)).astype(np.float32)
    cos[0, 2] = math.cos(3.1)  # a true class past pi - m
    labels = np.array([2, 0, 5, 8, 1, 3])
    scale = 64.0
    theirs_cos = torch.tensor(cos.copy(), requires_grad=True)
    theirs = _combined_margin_loss(torch, scale, *margin_list, threshold)(
        theirs_cos.clone(), torch.from_numpy(labels))
    theirs_loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(labels),
                                                    reduction="sum")
    theirs_loss.backward()
    ours_cos = tf.constant(cos)
    with tf.GradientTape() as tape:
        tape.watch(ours_cos)
        ours = margins.combined_logits(labels, scale * ours_cos, scale, margin_list, threshold)
        ours_loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, ours))
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(float(ours_loss), theirs_loss.item(), rtol=1e-4)
    np.testing.assert_allclose(tape.gradient(ours_loss, ours_cos).numpy(),
                               theirs_cos.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_the_combined_arcface_has_no_fallback_and_a_straight_through_gradient():
    """By hand: cos(theta + m) on the true class whatever theta, dL/dcos = s (p - y)."""
    theta = np.array([0.3, 2.8, 3.1], np.float32)
    cos = np.stack([np.cos(theta), np.full(3, 0.1, np.float32)], axis=1)
    labels = np.zeros(3, np.int64)
    x = tf.constant(cos)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = margins.combined_logits(labels, 64.0 * x, 64.0, (1.0, 0.5, 0.0))
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    np.testing.assert_allclose(logits.numpy()[:, 0], 64 * np.cos(theta + 0.5), rtol=1e-4,
                               atol=1e-3)
    p = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                               64.0 * (p - np.eye(2)[labels]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_combined_head_run_trains_with_partial_fc_and_says_its_margins(small_data, tmp_path,
                                                                        capsys):
    run_dir = str(tmp_path / "run")
    run_train(train_args(small_data, run_dir, head="combined", margins="1,0,0.35",
                         interclass_filtering_threshold=0.5, sample_classes=0.9, max_iter=6,
                         test_interval=3, snapshot=6, batch_size=4))
    assert "bn + combined (margins 1,0,0.35), norm keras" in capsys.readouterr().out
    stored = stored_config(run_dir)
    assert stored.margins == (1.0, 0.0, 0.35) and stored.interclass_filtering_threshold == 0.5
    assert RunDir(run_dir).finished()
