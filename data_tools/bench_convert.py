"""Benchmark: build_records conversion speed with 1 and with N decoding workers, one run.

    python -m data_tools.bench_convert [--images 2000 --size 250 --workers 1,2 --repeats 3]

Generates RGB JPEGs of --size pixels (identity folders of 20 images each) in a temporary
directory, converts them with each --workers value, interleaved, and reports the best
images/s of each and its ratio to the first. Beside it, in the same run, the machine's own
ceiling: the same ratio for plain CPU-bound Python split over as many processes, which on a
shared 2-core VM can be well below 2.
"""

import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from data_tools import convert
from kerasbn.flags import cli


def make_jpegs(root, count, size, per_identity=20, seed=0):
    """Writes `count` smooth random RGB JPEGs of size x size, `per_identity` per folder."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, f"id{i // per_identity:04d}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 10, size // 10, 3), np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def _spin(steps):
    total = 0
    for i in range(steps):
        total += i * i
    return total


def cpu_rate(processes, steps=4_000_000):
    """Steps/s of a fixed CPU-bound job split over `processes` processes."""
    start = time.perf_counter()
    if processes == 1:
        _spin(steps)
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_spin, [steps // processes] * processes)
    return steps / (time.perf_counter() - start)


def bench_convert(count, size, workers, repeats):
    """({workers: best images/s}, {workers: best CPU-job steps/s}), measured interleaved."""
    best = dict.fromkeys(workers, 0.0)
    ceiling = dict.fromkeys(workers, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "faces")
        make_jpegs(source, count, size)
        for repeat in range(repeats):
            for n in workers:
                out = os.path.join(tmp, f"out-{n}-{repeat}")
                start = time.perf_counter()
                convert.build(source, out, workers=n, log=lambda _: None)
                best[n] = max(best[n], count / (time.perf_counter() - start))
                ceiling[n] = max(ceiling[n], cpu_rate(n))
    return best, ceiling


def main(argv):
    values, args = cli.parse(argv, define_flags, __doc__)
    if not all(w.isdigit() and int(w) > 0 for w in values.workers):
        sys.exit(f"error: --workers takes positive integers such as 1,2; got "
                 f"{','.join(values.workers)}")
    workers = [int(w) for w in values.workers]
    rates, ceiling = bench_convert(values.images, values.size, workers, values.repeats)
    for n, rate in rates.items():
        print(f"{values.images} {values.size}x{values.size} RGB JPEGs, --workers {n}: "
              f"{rate:.0f} images/s, {rate / rates[workers[0]]:.2f}x --workers {workers[0]}; "
              f"machine ceiling (CPU-bound Python in {n} processes) "
              f"{ceiling[n] / ceiling[workers[0]]:.2f}x")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_integer("images", 2000, "JPEGs to generate and convert.", lower_bound=1, **on)
    flags.DEFINE_integer("size", 250, "Their width and height.", lower_bound=1, **on)
    flags.DEFINE_list("workers", ["1", "2"], "--workers values to compare; ratios to the first.",
                      **on)
    flags.DEFINE_integer("repeats", 3, "Timed conversions per value; the best counts.",
                         lower_bound=1, **on)


if __name__ == "__main__":
    main(sys.argv)
