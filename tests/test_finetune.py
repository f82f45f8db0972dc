"""Fine-tuning: --weights from a network trained on other identities (another class count)."""

import re

import numpy as np
import pytest
from conftest import make_synth, run_train, train_args

from kerasbn.runs import checkpoints, network
from kerasbn.runs.run_dir import RunDir, stored_config


def restored(run_dir):
    model = network.build_and_compile(stored_config(run_dir))
    checkpoints.restore_latest(RunDir(run_dir), model)
    return {layer.name: [v.numpy() for v in layer.variables] for layer in model.layers
            if layer.variables}


@pytest.fixture(scope="module")
def seven_people(tmp_path_factory):
    out = tmp_path_factory.mktemp("seven")
    make_synth(out, identities=7, seed=3)
    return str(out)


@pytest.mark.slow
def test_a_run_starts_from_another_class_counts_backbone_with_a_fresh_classifier(
        finished_run, seven_people, tmp_path, capsys):
    # --freeze_backbone_iter covers the whole run: the backbone must come out as it went in.
    run_dir = str(tmp_path / "tuned")
    run_train(train_args(seven_people, run_dir, max_iter=10, weights=finished_run,
                         freeze_backbone_iter=10, test_interval=10))
    out = capsys.readouterr().out
    assert "ckpt-" in out and "every layer but the classifier (" in out
    assert "variables; 6 classes there, 7 here; the classifier starts fresh)" in out
    source, tuned = restored(finished_run), restored(run_dir)
    assert tuned["logits"][0].shape[1] == 7
    for name, weights in source.items():
        if name != "logits":
            for a, b in zip(weights, tuned[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.slow
def test_after_the_frozen_iterations_every_layer_trains(finished_run, seven_people, tmp_path):
    run_dir = str(tmp_path / "tuned")
    run_train(train_args(seven_people, run_dir, max_iter=10, weights=finished_run,
                         freeze_backbone_iter=5, test_interval=10))
    source, tuned = restored(finished_run), restored(run_dir)
    first = next(name for name in source if name != "logits")
    assert not np.array_equal(source[first][0], tuned[first][0])


@pytest.mark.slow
def test_a_network_of_the_same_classes_loads_whole(finished_run, small_data, tmp_path, capsys):
    run_train(train_args(small_data, str(tmp_path / "again"), max_iter=1, test_interval=1,
                         weights=finished_run))
    out = capsys.readouterr().out
    assert "initialised from" in out and "every layer (" in out and "classifier" not in out


@pytest.mark.slow
def test_an_export_of_other_identities_gives_its_backbone_by_name(finished_run, seven_people,
                                                                  tmp_path, capsys):
    run_dir = str(tmp_path / "tuned")
    run_train(train_args(seven_people, run_dir, max_iter=2, test_interval=2,
                         weights=RunDir(finished_run).export, freeze_backbone_iter=2))
    assert "6 classes there, 7 here" in capsys.readouterr().out
    source, tuned = restored(finished_run), restored(run_dir)
    for name, weights in source.items():
        if name != "logits":
            for a, b in zip(weights, tuned[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("donor, here, message", [
    # The study's baseline into a BN run: its convolutions carry biases, BN's do not.
    ({"model": "baseline", "widths": "16,16,32,32,24,48,40,64"}, {},
     "is another network: its variables have no conv1_1_bn/gamma"),
    # A donor with insightface's neck into a network without it.
    ({"head": "cosface", "embedding": "bn_fc", "embedding_dim": 16}, {"head": "cosface"},
     "is another network: it has pool_bn/gamma (64,), which this one lacks"),
    ({}, {"widths": "16,16,32,24,48,40,32"}, "is another network: conv4_2/kernel is (3, 3, 40, 64) "
                                             "there, (3, 3, 40, 32) here"),
])
def test_weights_of_another_network_are_refused_by_the_first_mismatch(
        small_data, tmp_path, donor, here, message):
    source = str(tmp_path / "donor")
    run_train(train_args(small_data, source, max_iter=1, test_interval=1, **donor))
    with pytest.raises(SystemExit, match=re.escape(message)) as stopped:
        run_train(train_args(small_data, str(tmp_path / "run"), max_iter=1, test_interval=1,
                             weights=source, **here))
    assert str(stopped.value).startswith("error: --weights=") and "\n" not in str(
        stopped.value)


def final_test(run_dir):
    last = RunDir(run_dir).read_metrics()[-1]
    return last["test_top1"], last["test_loss"]


@pytest.mark.slow
def test_a_50_class_backbone_beats_a_fresh_network_on_7_new_people(seven_people, tmp_path):
    # The case: 30 iterations with the backbone frozen, so only what the backbone
    # learnt on the 50 other people can tell the 7 apart (chance is 1/7).
    fifty = str(tmp_path / "fifty")
    make_synth(fifty, identities=50, seed=5)
    source = str(tmp_path / "source")
    run_train(train_args(fifty, source, max_iter=200, batch_size=32, test_interval=200,
                         base_lr=0.05))
    results = {}
    for name, extra in (("tuned", {"weights": source}), ("fresh", {})):
        run_dir = str(tmp_path / name)
        run_train(train_args(seven_people, run_dir, max_iter=30, freeze_backbone_iter=30,
                             test_interval=30, **extra))
        results[name] = final_test(run_dir)
    (tuned_top1, tuned_loss), (fresh_top1, fresh_loss) = results["tuned"], results["fresh"]
    assert tuned_top1 >= fresh_top1 + 0.25, results
    assert tuned_loss < fresh_loss, results
