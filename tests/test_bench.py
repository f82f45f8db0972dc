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
