"""--shard_classes: the centres sharded across replicas (logical CPU devices, each run in its
own process by tests/sharded_step.py), checked against one device with the whole classifier
computed here with plain TensorFlow (data-parallel BN: each replica's images normalised on
their own), and Caffe's SGD written out in numpy."""

import dataclasses
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_synth, train_args

from kerasbn import config
from kerasbn.nn import models
from kerasbn.nn.sharded import centres, softmax
from kerasbn.optim import schedules
from kerasbn.runs import checkpoints, network
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import signatures

sys.path.insert(0, os.path.dirname(__file__))
import sharded_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(tmp_path, replicas, classes, sample_classes=1.0, head="cosface", labels=()):
    out = tmp_path / f"r{replicas}.npz"
    subprocess.run([sys.executable, sharded_step.__file__, str(out), str(replicas),
                    str(classes), str(sample_classes), head, *map(str, labels)],
                   check=True, capture_output=True)
    return dict(np.load(out))


def _drawn(cfg, replicas, labels):
    """The classes each shard's first step takes logits over (the step's own draw)."""
    rows = centres.shard_rows(cfg.num_classes, replicas)
    take = min(rows, int(np.ceil(cfg.sample_classes * rows)))
    drawn = []
    for r in range(replicas):
        first, end = centres.bounds(cfg.num_classes, replicas, r)
        index = softmax.draw(tf.constant(labels, tf.int32), first, end - first, rows, take,
                             softmax.draw_seed(cfg.seed, 0, r)).numpy()
        drawn += [first + i for i in index if i < end - first]
    return np.array(sorted(drawn))


def _reference(cfg, result, replicas, drawn=None):
    """(loss, backbone after, centres after, momentum after) of the step on one device with
    the whole classifier, over the classes `drawn` (all by default); every centre moves
    under `--sample_update=all`, only those drawn otherwise."""
    net = models.build_from(dataclasses.replace(cfg.network(), decay_centres=False))
    features = keras.Model(net.inputs, net.get_layer("logits").input)
    backbone = [v for v in net.trainable_variables if "logits" not in v.path]
    for i, v in enumerate(backbone):
        v.assign(result[f"before_{i}"])
    weights = tf.Variable(result["centres"])
    drawn = np.arange(cfg.num_classes) if drawn is None else drawn
    labels = np.searchsorted(drawn, result["labels"])
    loss_fn = network.make_loss(cfg)
    with tf.GradientTape() as tape:
        parts = np.split(result["images"], replicas)
        embedded = tf.concat([features(part, training=True) for part in parts], axis=0)
        embedded = tf.math.l2_normalize(embedded, axis=-1, epsilon=1e-12)
        rows = tf.math.l2_normalize(tf.gather(weights, drawn), axis=-1, epsilon=1e-12)
        logits = loss_fn.scale * tf.matmul(embedded, rows, transpose_b=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, loss_fn.margined(labels, logits)))
        total = loss + tf.add_n(net.losses)
    grads = tape.gradient(total, [*backbone, weights])
    lr = float(schedules.make_schedule(cfg.schedule)(0))
    after = [v.numpy() - lr * g.numpy() for v, g in zip(backbone, grads[:-1])]
    centre_grad = tf.convert_to_tensor(grads[-1]).numpy()
    velocity = np.zeros_like(result["centres"])
    moved = slice(None) if cfg.sample_update == "all" else drawn
    velocity[moved] = -lr * (centre_grad[moved] + cfg.weight_decay * result["centres"][moved])
    return float(total), after, result["centres"] + velocity, velocity


def _check(result, reference):
    loss, backbone, weights, momentum = reference
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)
    for i, value in enumerate(backbone):
        np.testing.assert_allclose(result[f"after_{i}"], value, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["after_centres"], weights, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result["after_momentum"], momentum, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_a_sharded_step_is_the_one_device_step_of_the_whole_classifier(tmp_path, replicas):
    # 10 classes do not divide over 4 replicas: shards of 2, 3, 2, 3 rows.
    result = _step(tmp_path, replicas, 10)
    cfg = sharded_step.settings(10, 1.0, "cosface")
    _check(result, _reference(cfg, result, replicas))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["arcface", "combined"])
def test_the_margin_of_each_head_is_put_on_by_the_shard_that_owns_the_class(tmp_path, head):
    result = _step(tmp_path, 2, 10, head=head)
    _check(result, _reference(sharded_step.settings(10, 1.0, head), result, 2))


@pytest.mark.slow
@pytest.mark.parametrize("labels", [
    # Every label in the first of two shards: the second holds none of the batch.
    [0, 1, 2, 3, 4, 0, 1, 2],
    # Every label in the last shard of four.
    [30, 31, 39, 38, 35, 36, 37, 30]])
def test_a_sampled_sharded_step_is_the_one_device_step_over_the_same_draw(tmp_path, labels):
    replicas = 2 if max(labels) < 10 else 4
    result = _step(tmp_path, replicas, 40, 0.8, labels=labels)
    cfg = sharded_step.settings(40, 0.8, "cosface")
    drawn = _drawn(cfg, replicas, labels)
    assert set(labels) <= set(drawn) and len(drawn) < 40
    _check(result, _reference(cfg, result, replicas, drawn))


@pytest.mark.slow
def test_with_sample_update_all_every_row_of_every_shard_takes_decay(tmp_path):
    labels = [0, 1, 2, 3, 20, 21, 22, 23]
    result = _step(tmp_path, 2, 40, 0.5, labels=[*labels, "sample_update=all"])
    cfg = sharded_step.settings(40, 0.5, "cosface", sample_update="all")
    drawn = _drawn(cfg, 2, labels)
    assert len(drawn) == 20 and np.all(result["after_centres"] != result["centres"])
    _check(result, _reference(cfg, result, 2, drawn))


def test_the_first_centres_do_not_depend_on_the_replica_count():
    whole = centres._initial_rows(7, 0, 10_000, 3).numpy()
    assert whole.std() == pytest.approx(centres.INIT_STDDEV, rel=0.02)
    for first, count in [(0, 2500), (2500, 2500), (4095, 7), (9999, 1)]:
        np.testing.assert_array_equal(centres._initial_rows(7, first, count, 3).numpy(),
                                      whole[first:first + count])


@pytest.fixture(scope="module")
def forty_people(tmp_path_factory):
    out = tmp_path_factory.mktemp("forty")
    make_synth(out, identities=42, images_per_identity=6, seed=4)
    return str(out)


def _train(args, devices, fault=None):
    flags = ["--strategy=mirrored", f"--cpu_devices={devices}"] if devices > 1 else \
        ["--strategy=one_device"]
    env = {**os.environ, **({"KERASBN_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "kerasbn.train", *args, *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True)


def _restored(tmp_path, run, replicas):
    out = tmp_path / f"restored{replicas}.npz"
    subprocess.run([sys.executable, sharded_step.__file__, "restore", str(out), str(replicas),
                    run], check=True, capture_output=True)
    return dict(np.load(out))


@pytest.mark.slow
def test_a_sharded_run_resumes_on_another_replica_count_and_exports_the_whole_classifier(
        forty_people, tmp_path):
    run = str(tmp_path / "two")
    args = train_args(forty_people, run, head="cosface", shard_classes="true", max_iter=6,
                      snapshot=2, test_interval=2, display=2, batch_size=8, momentum=0.9)
    stopped = _train(args, 2, fault="iteration:3:SIGTERM")
    assert stopped.returncode != 0
    assert "centres: 42 x 64, sharded over 2 replicas: 0.0 MiB per replica" in stopped.stdout
    saved = {replicas: _restored(tmp_path, run, replicas) for replicas in (2, 4, 1)}
    # 42 classes: shards of 21 rows on two replicas, 11 (padded) on four.
    assert [int(saved[r]["rows"]) for r in (2, 4, 1)] == [21, 11, 42]
    assert np.abs(saved[2]["momentum"]).max() > 0
    for replicas in (4, 1):
        np.testing.assert_array_equal(saved[replicas]["centres"], saved[2]["centres"])
        np.testing.assert_array_equal(saved[replicas]["momentum"], saved[2]["momentum"])
    for replicas in (4, 1):
        copy = str(tmp_path / f"on{replicas}")
        shutil.copytree(run, copy)
        flags = [a for a in args if not a.startswith("--run_dir")] + [f"--run_dir={copy}"]
        done = _train(flags, replicas)
        assert done.returncode == 0, done.stderr
        assert f"resuming from {copy}" in done.stdout
        assert [m["iteration"] for m in RunDir(copy).read_metrics()][-1] == 6
    # A sharded run's backbone initialises another run (--weights), its classifier left.
    cfg, _, whole, _ = signatures.restore_run(str(tmp_path / "on1"))
    fresh = network.build_and_compile(dataclasses.replace(cfg, shard_classes=False,
                                                          num_classes=7))
    assert "every layer but the classifier" in checkpoints.load_weights(fresh,
                                                                        str(tmp_path / "on1"))
    for layer in fresh.layers:
        if layer.weights and layer.name != "logits":
            for mine, theirs in zip(layer.get_weights(), whole.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    served = signatures.from_saved_model(RunDir(str(tmp_path / "on4")).export)
    images = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 1), np.uint8)
    logits = served.serve(tf.constant(images))["logits"].numpy()
    assert logits.shape == (3, 42)
    assert np.abs(logits).max() <= 30 * (1 + 1e-5)


@pytest.mark.slow
def test_under_mixed_precision_the_logits_are_float32_and_an_overflow_moves_nothing(
        tmp_path):
    cfg = sharded_step.settings(10, 1.0, "cosface")
    exact = _step(tmp_path, 2, 10)
    # A scale whose gradients fit float16 (the centres' are large at 0.01-norm rows).
    mixed = _step(tmp_path, 2, 10, labels=["precision=mixed_float16", "initial_loss_scale=8"])
    assert str(mixed["logits_dtype"]) == "float32" and float(mixed["scale"]) == 8
    # float16 activations: the step's loss and centres near the float32 step's, and its
    # own reference.
    assert float(mixed["loss"]) == pytest.approx(float(exact["loss"]), rel=1e-2)
    # (The first step moves the 0.01-norm centres by up to 20.)
    np.testing.assert_allclose(mixed["after_centres"], exact["after_centres"], rtol=1e-2,
                               atol=0.05)
    _, _, weights, _ = _reference(cfg, mixed, 2)
    np.testing.assert_allclose(mixed["after_centres"], weights, rtol=1e-2, atol=0.05)
    # bfloat16 (--precision=auto on a CPU with native bfloat16): its embeddings are gathered
    # in float32, as TensorFlow's collectives take no bfloat16; three significant digits.
    brain = _step(tmp_path, 2, 10, labels=["precision=mixed_bfloat16"])
    assert str(brain["logits_dtype"]) == "float32"
    assert float(brain["loss"]) == pytest.approx(float(exact["loss"]), rel=1e-2)
    np.testing.assert_allclose(brain["after_centres"], exact["after_centres"], rtol=5e-2,
                               atol=0.5)
    # A loss scale that overflows float16: the step is skipped on every replica, the
    # backbone and every shard unmoved, momentum still zero, the scale halved.
    skipped = _step(tmp_path, 2, 10, labels=["precision=mixed_float16",
                                             "initial_loss_scale=1073741824"])
    assert float(skipped["scale"]) == 2.0 ** 29
    np.testing.assert_array_equal(skipped["after_centres"], skipped["centres"])
    assert not skipped["after_momentum"].any()
    for i in range(3):
        np.testing.assert_array_equal(skipped[f"after_{i}"], skipped[f"before_{i}"])


@pytest.mark.parametrize("settings, message", [
    ({"head_": "softmax"}, "--head=cosface or --head=arcface or --head=combined"),
    ({"solver_type": "Adam"}, "--solver_type=SGD or Nesterov"),
    ({"schedule": {"max_iter": 2, "base_lr": 0.1, "iter_size": 2}}, "--iter_size=1"),
    ({"jit_compile": True}, "no --jit_compile"),
    ({"freeze_backbone_iter": 2}, "no --freeze_backbone_iter"),
])
def test_what_sharding_cannot_train_is_refused_in_one_line(settings, message):
    with pytest.raises(config.ConfigError, match="--shard_classes") as refused:
        sharded_step.settings(10, 1.0, settings.pop("head_", "cosface"), **settings)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_shard_that_draws_fewer_rows_than_a_batch_is_refused_by_its_replica_count(
        tmp_path):
    # 40 classes at 0.25 draw 10 >= the batch of 8 on one device; two shards of 20 draw 5.
    with pytest.raises(subprocess.CalledProcessError) as refused:
        _step(tmp_path, 2, 40, 0.25)
    assert "draws 5 of the 20 centres of each of 2 shards" in refused.value.stderr.decode()


@pytest.mark.slow
def test_two_local_workers_shard_as_one_process_with_two_devices(tmp_path):
    data = str(tmp_path / "data")
    # One shard for two workers: each keeps every other record of the one stream, so each
    # worker's batch is the one process's replica's (as in test_distribute).
    make_synth(data, identities=10, shard_size=10_000)
    args = lambda run: train_args(data, str(tmp_path / run), model="baseline", dropout=0,
                                  max_iter=6, test_interval=2, display=2, snapshot=2,
                                  widths="16,16,32,24,48,40,64,80", head="cosface",
                                  shard_classes="true", momentum=0.9)
    single = _train(args("single"), 2)
    assert single.returncode == 0, single.stderr
    done = subprocess.run([sys.executable, "-m", "kerasbn.local_cluster", "--workers=2", "--",
                           *args("chief")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "CollectiveAllReduceStrategy: 2 replicas" in done.stdout
    assert "sharded over 2 replicas" in done.stdout
    for want, got in zip(RunDir(str(tmp_path / "single")).read_metrics(),
                         RunDir(str(tmp_path / "chief")).read_metrics(), strict=True):
        assert got["iteration"] == want["iteration"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=2e-4)
        assert got["test_loss"] == pytest.approx(want["test_loss"], abs=2e-4)
    # The chief's checkpoint holds both workers' shards: it restores whole on one device.
    want = _restored(tmp_path, str(tmp_path / "single"), 1)
    got = _restored(tmp_path, str(tmp_path / "chief"), 1)
    np.testing.assert_allclose(got["centres"], want["centres"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["momentum"], want["momentum"], rtol=1e-4, atol=1e-7)
