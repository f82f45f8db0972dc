from kerasbn import bench


def test_input_bench_measures_both_readers_on_the_same_shards(small_data):
    result = bench.bench_input(small_data, 8, 3, 1)
    assert result["encoding"] == "raw" and result["bare"] > 0 and result["pipeline"] > 0
    assert result["ratio"] == result["pipeline"] / result["bare"]


def test_train_bench_times_the_real_pipeline_beside_one_cached_batch(small_data):
    variants = [("float32", "keras", False, 1), ("float32", "keras", False, 2)]
    rates = bench.bench_train("bn", 6, variants, 8, 2, 1, small_data)
    assert list(rates) == variants
    assert all(r["cached"] > 0 and r["pipeline"] > 0 for r in rates.values())
    alone = bench.bench_train("bn", 6, variants[:1], 8, 2, 1)
    assert list(alone[variants[0]]) == ["cached"]


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
    from kerasbn import bench_scale
    rng = np.random.default_rng(0)
    for identities in (6, 150, 14700):
        draws = rng.integers(0, identities, (4000, 128))
        simulated = np.mean([len(np.unique(row)) for row in draws])
        assert abs(bench_scale.expected_distinct(identities, 128) - simulated) < 0.15
    assert round(bench_scale.expected_distinct(14700, 128), 1) == 127.4


def test_scale_bench_measures_memory_shuffle_and_first_step(small_data, capsys):
    import os
    from kerasbn import verified
    results = bench.bench_scale.run([small_data], 16, 20)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{small_data}: 90 training records of 6 identities; pipeline peak")
    (result,) = results
    # Batches of 16 from 6 identities: nearly all six in each, never more.
    assert 5.5 < result["distinct"] <= 6
    assert result["rss_peak_mb"] >= result["rss_start_mb"] > 0
    assert 0 < result["first_step_s"] and 0 < result["first_step_unchecked_s"]
    # The second start found the first one's note of checked splits.
    assert os.path.exists(os.path.join(small_data, verified.FILENAME))


def test_scale_bench_names_a_directory_without_a_dataset(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "kerasbn.bench", "--bench=scale",
                           f"--data_dir={tmp_path}"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {tmp_path}")
