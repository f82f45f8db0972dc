from kerasbn import bench


def test_input_bench_measures_both_readers_on_the_same_shards(small_data):
    result = bench.bench_input(small_data, 8, 3, 1)
    assert result["encoding"] == "raw" and result["bare"] > 0 and result["pipeline"] > 0
    assert result["ratio"] == result["pipeline"] / result["bare"]
