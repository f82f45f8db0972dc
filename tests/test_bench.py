import pytest

from kerasbn import bench
from kerasbn.benchmarks import input_pipeline, peer_comparison, scaling, timing
from kerasbn.utils import hardware


def test_input_bench_measures_both_readers_on_the_same_shards(small_data):
    result = input_pipeline.bench_input(small_data, 8, 3, 1)
    assert result["encoding"] == "raw" and result["bare"] > 0 and result["pipeline"] > 0
    assert result["ratio"] == result["pipeline"] / result["bare"]


@pytest.mark.slow
def test_train_bench_times_the_real_pipeline_beside_one_cached_batch(small_data):
    variants = [("float32", "keras", False, 1), ("float32", "keras", False, 2)]
    rates = timing.bench_train("bn", 6, variants, 8, 2, 1, small_data)
    assert list(rates) == variants
    assert all(r["cached"] > 0 and r["pipeline"] > 0 for r in rates.values())
    alone = timing.bench_train("bn", 6, variants[:1], 8, 2, 1)
    assert list(alone[variants[0]]) == ["cached"]


@pytest.mark.slow
def test_train_bench_prints_the_verdict_and_refuses_an_unknown_compile(small_data, capsys):
    import pytest
    bench.main(["bench", "--bench=train", f"--data_dir={small_data}", "--num_classes=6",
                "--batch_size=8", "--batches=2", "--repeats=1", "--precisions=float32"])
    line, = capsys.readouterr().out.splitlines()
    assert line.startswith("bn x6 classes, batch 8, float32: one cached batch ")
    assert f"real pipeline of {small_data} " in line and "input-bound)" in line
    with pytest.raises(SystemExit, match="--compile takes plain and/or xla, got jit"):
        bench.main(["bench", "--bench=train", "--compile=jit"])


def test_expected_distinct_identities_matches_uniform_draws():
    import numpy as np

    from kerasbn.benchmarks import scaling
    rng = np.random.default_rng(0)
    for identities in (6, 150, 14700):
        draws = rng.integers(0, identities, (4000, 128))
        simulated = np.mean([len(np.unique(row)) for row in draws])
        assert abs(scaling.expected_distinct(identities, 128) - simulated) < 0.15
    assert round(scaling.expected_distinct(14700, 128), 1) == 127.4


@pytest.mark.slow
def test_scale_bench_measures_memory_shuffle_and_first_step(small_data, capsys):
    import os

    from kerasbn.data import checks
    results = scaling.run([small_data], 16, 20)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{small_data}: 90 training records of 6 identities; pipeline peak")
    (result,) = results
    # Batches of 16 from 6 identities: nearly all six in each, never more.
    assert 5.5 < result["distinct"] <= 6
    assert result["rss_peak_mb"] >= result["rss_start_mb"] > 0
    assert 0 < result["first_step_s"] and 0 < result["first_step_unchecked_s"]
    # The second start found the first one's note of checked splits.
    assert os.path.exists(os.path.join(small_data, checks.FILENAME))


@pytest.mark.slow
def test_scale_bench_names_a_directory_without_a_dataset(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "kerasbn.bench", "--bench=scale",
                           f"--data_dir={tmp_path}"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {tmp_path}")


def test_the_pytorch_peer_builds_kerasbn_s_networks_layer_for_layer():
    import pytest
    torch = pytest.importorskip("torch")
    from kerasbn.benchmarks import pytorch_peer
    from kerasbn.nn import models
    for name in ("baseline", "bn"):
        ours = models.build(name, 14_700)
        peer = pytorch_peer.network(name, 14_700)
        assert sum(p.numel() for p in peer.parameters()) == sum(
            int(v.shape.num_elements()) for v in ours.trainable_variables)
        convs = [m for m in peer if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == models.default_widths(name)
        assert [c.bias is not None for c in convs] == [
            layer.use_bias for layer in ours.layers if hasattr(layer, "filters")]
        assert peer(torch.zeros(2, 1, 50, 50)).shape == (2, 14_700)
    assert 0 < peer_comparison.peer_rate("bn", 10, "float32", 4, 1)


@pytest.mark.parametrize("name", ["iresnet50", "mobilefacenet"])
def test_the_pytorch_peer_of_a_field_network_has_its_parameters_and_convolutions(name):
    torch = pytest.importorskip("torch")
    from kerasbn.benchmarks import pytorch_peer
    from kerasbn.nn import flops, models
    ours = models.build(name, 100, **models.made_for(name))
    peer = pytorch_peer.network(name, 100)
    assert sum(p.numel() for p in peer.parameters() if p.requires_grad) == sum(
        int(v.shape.num_elements()) for v in ours.trainable_variables)
    # The same multiply-adds, convolution for convolution, counted on PyTorch's side by hooks.
    macs = []
    hook = lambda m, i, o: macs.append(o.numel() * m.weight[0].numel())
    for module in peer.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    peer.eval()(torch.zeros(1, 3, 112, 112))
    assert 2 * sum(macs) == flops.per_image(ours)["forward"]


def test_peer_bench_reports_ranges_and_same_round_ratios(capsys):
    rounds = [{("kerasbn", "baseline", "float32", None): 100.0,
               ("pytorch", "baseline", "float32", None): 80.0,
               ("kerasbn", "bn", "float32", "keras"): 90.0,
               ("pytorch", "bn", "float32", None): 75.0},
              {("kerasbn", "baseline", "float32", None): 110.0,
               ("pytorch", "baseline", "float32", None): 88.0,
               ("kerasbn", "bn", "float32", "keras"): 110.0,
               ("pytorch", "bn", "float32", None): 80.0}]
    peer_comparison.print_peer(rounds, ["float32"], ["keras"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:6] == ["| kerasbn baseline | 100-110 |", "| pytorch baseline | 80-88 |",
                          "| kerasbn bn --norm=keras | 90-110 |", "| pytorch bn | 75-80 |"]
    # 100/90 = 1.11 and 110/110; 90/75 = 1.20 and 110/80 = 1.38
    assert lines[6] == ("float32, --norm=keras: BN network step per image 1.00-1.11x the "
                        "baseline's; kerasbn/PyTorch: BN network 1.20-1.38x")
    assert lines[7] == ("float32: kerasbn/PyTorch baseline 1.25x; PyTorch's BN network step "
                        "per image 1.07-1.10x its baseline's")


@pytest.mark.slow
def test_peer_bench_without_pytorch_measures_kerasbn_alone(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    bench.main(["bench", "--bench=peer", "--num_classes=6", "--batch_size=4", "--batches=1",
                "--repeats=1", "--precisions=float32", "--norms=keras"])
    out = capsys.readouterr().out
    assert "PyTorch is not installed: kerasbn measured alone" in out
    assert "| kerasbn bn --norm=keras |" in out and "pytorch" not in out
    assert "float32, --norm=keras: BN network step per image " in out


@pytest.mark.slow
def test_run_bench_times_a_training_run_beside_its_step(small_data, tmp_path, capsys):
    from kerasbn.benchmarks import whole_run
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"--model=bn\n--norm=keras\n--batch_size=8\n--data_dir={small_data}\n"
                        "--precision=float32\n")
    measured = whole_run.run(str(flagfile), None, 4, 1)
    assert set(measured[0]) == {"run", "cached", "pipeline"}
    assert all(value > 0 for value in measured[0].values())
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("round 1: bn --norm=keras, float32, batch 8, 6 classes: run ")
    assert out[1].startswith("run/cached step over 1 round(s): ")


def test_profiles_name_onednn_rewrites_by_their_stock_types():
    # Machines with and without oneDNN's rewrites must give one profile's rows one name.
    assert {op: timing._stock_type(op) for op in (
        "_MklNativeFusedBatchNormV3", "_MklNativeFusedConv2D", "_MklMatMul",
        "_MklNativeConv2DBackpropFilterWithBias", "_FusedConv2D", "Relu")} == {
        "_MklNativeFusedBatchNormV3": "FusedBatchNormV3", "_MklNativeFusedConv2D": "_FusedConv2D",
        "_MklMatMul": "MatMul",
        "_MklNativeConv2DBackpropFilterWithBias": "Conv2DBackpropFilterWithBias",
        "_FusedConv2D": "_FusedConv2D", "Relu": "Relu"}


@pytest.mark.slow
def test_the_profile_names_the_fused_batch_norm_ops_of_the_keras_norm(tmp_path):
    busy = timing.op_profile("bn", 10, "float32", "keras", 8, 2, str(tmp_path))
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3", "Conv2DBackpropFilter"} <= set(busy)
    assert "IDLE" not in busy and all(seconds >= 0 for seconds in busy.values())
    assert list(busy.values()) == sorted(busy.values(), reverse=True)
    plain = timing.op_profile("bn", 10, "float32", "none", 8, 2, str(tmp_path / "none"))
    assert not {"FusedBatchNormV3", "FusedBatchNormGradV3"} & set(plain)


@pytest.mark.slow
def test_norms_bench_gives_step_times_against_the_first_norm(capsys):
    bench.main(["bench", "--bench=norms", "--num_classes=6", "--batch_size=4", "--batches=1",
                "--repeats=1", "--precisions=float32", "--norms=bvlc,none"])
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("bn x6 classes, batch 4, float32, --norm=bvlc: ")
    assert first.endswith("step time 1.00x bvlc")
    assert second.startswith("bn x6 classes, batch 4, float32, --norm=none: ")


@pytest.mark.slow
def test_heads_bench_gives_each_fractions_step_and_memory_against_the_full_head(capsys):
    bench.main(["bench", "--bench=heads", "--class_counts=40", "--sample_fractions=1",
                "--sample_fractions=0.5", "--batch_size=8", "--batches=1", "--repeats=1",
                "--precisions=float32"])
    full, sampled = capsys.readouterr().out.splitlines()
    assert full.startswith("40 classes, arcface, float32, --sample_classes=1: ")
    assert "(1.00x F=1's), peak " in full and full.endswith("(1.00x F=1's)")
    assert sampled.startswith("40 classes, arcface, float32, --sample_classes=0.5: ")
    assert " s per step of 8 " in sampled and " MB over the built network " in sampled


def test_heads_bench_names_a_fraction_too_small_for_the_batch():
    with pytest.raises(SystemExit) as info:
        bench.main(["bench", "--bench=heads", "--class_counts=40", "--sample_fractions=0.1",
                    "--batch_size=8", "--batches=1", "--repeats=1"])
    assert "--sample_classes=0.1" in str(info.value) and "fewer than the 8" in str(info.value)


@pytest.mark.slow
def test_the_photos_bench_times_align_and_serve_photo_against_their_references(
        finished_run, att_faces):
    from kerasbn.benchmarks import photo_pipeline
    from kerasbn.runs.run_dir import RunDir
    result = photo_pipeline.run(RunDir(finished_run).export, att_faces, repeats=1, photos=1)
    assert set(result) == {"align_640x480_photos_per_sec", "mtcnn_640x480_photos_per_sec",
                           "align_1280x960_photos_per_sec", "mtcnn_1280x960_photos_per_sec",
                           "serve_photo_1_faces_ms", "serve_bytes_1_faces_ms",
                           "serve_photo_6_faces_ms", "serve_bytes_6_faces_ms"}
    assert all(value > 0 for value in result.values())


def _profiled_flops(model, shape):
    """FLOPs of the convolutions and matrix products in `model`'s forward graph, counted by
    TensorFlow's own profiler."""
    import tensorflow as tf
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    kinds = {op.name: op.type for op in graph.get_operations()}
    counted = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
    stack, total = [profile], 0
    while stack:
        node = stack.pop()
        stack += node.children
        total += node.float_ops if kinds.get(node.name) in counted else 0
    return total


@pytest.mark.parametrize("name, widths", [("iresnet18", (8, 8, 8, 16, 16)),
                                          ("mobilefacenet", (16, 32, 16, 32, 64, 64))])
def test_flops_per_image_are_tensorflow_profilers_count(name, widths):
    from kerasbn.nn import flops, models
    model = models.build(name, 10, image_size=(32, 32), channels=3, widths=widths,
                         embedding_dim=16)
    counts = flops.per_image(model)
    assert counts["forward"] == _profiled_flops(model, [1, 32, 32, 3])
    # Backward: the weights' gradients and the inputs' (the stem's input is the image).
    stem = model.get_layer("stem")
    height, width, filters = stem.output.shape[1:]
    assert counts["training"] == 3 * counts["forward"] - 2 * height * width * filters * 3 * 3 * 3


@pytest.mark.slow
def test_the_published_flops_of_r50_and_mbf():
    from kerasbn.nn import flops, models
    # insightface's tables: r50 6.3G and mbf about 0.45G multiply-adds at 112x112.
    r50 = flops.per_image(models.build("iresnet50", 10, **models.made_for("iresnet50")))
    mbf = flops.per_image(models.build("mobilefacenet", 10,
                                       **models.made_for("mobilefacenet")))
    assert r50["forward"] / 2e9 == pytest.approx(6.3, abs=0.05)
    assert mbf["forward"] / 2e9 == pytest.approx(0.44, abs=0.02)


def test_the_cpu_peak_is_cores_clock_and_units_by_vendor_and_never_a_guess():
    """It once gave every AVX-512 CPU Intel's two 512-bit units, and bfloat16 the float32
    rate, so an AMD Zen 4 showed an IResNet-50 bfloat16 step at 96% of its peak."""
    cpu = lambda vendor, family, flags: (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family"
                                         f"\t: {family}\ncpu MHz\t\t: 2600.000\nflags\t\t: "
                                         f"fpu {flags}\n")
    xeon = cpu("GenuineIntel", 6, "avx2 avx512f avx512_bf16 amx_bf16")
    assert hardware.cpu_peak("float32", xeon, 2)[0] == 2 * 2.6e9 * 64
    assert hardware.cpu_peak("mixed_bfloat16", xeon, 2)[0] == 2 * 2.6e9 * 1024
    cooper = cpu("GenuineIntel", 6, "avx2 avx512f avx512_bf16")
    assert hardware.cpu_peak("mixed_bfloat16", cooper, 2)[0] == 2 * 2.6e9 * 128
    zen4 = cpu("AuthenticAMD", 25, "avx2 avx512f avx512_bf16")
    assert hardware.cpu_peak("float32", zen4, 2)[0] == 2 * 2.6e9 * 32
    assert hardware.cpu_peak("mixed_bfloat16", zen4, 2)[0] == 2 * 2.6e9 * 64
    zen3 = cpu("AuthenticAMD", 25, "avx2")
    assert hardware.cpu_peak("mixed_bfloat16", zen3, 4)[0] == 4 * 2.6e9 * 32
    peak, why = hardware.cpu_peak("float32", cpu("AuthenticAMD", 26, "avx2 avx512f"), 2)
    assert peak is None and why.startswith("unknown for a AuthenticAMD CPU of family 26")
    assert hardware.cpu_peak("float32", cpu("GenuineIntel", 6, "sse2"), 1)[0] is None