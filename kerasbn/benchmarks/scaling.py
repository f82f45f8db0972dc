"""The training input pipeline as a dataset grows: memory, shuffle quality, time to first step.

`python -m kerasbn.bench --bench=scale --data_dir=SMALL --data_dir=... --data_dir=LARGEST`
measures each dataset in processes of its own, so each peak is its own:
- the pipeline (`pipeline.train_dataset`, mirrored) read for --batches batches: peak resident
  memory, its growth over the process's after the imports, images/s, and the mean number of
  distinct identities per batch beside what uniform draws give (`expected_distinct`: 127.4
  for a batch of 128 from 14,700 equally frequent identities);
- `python -m kerasbn.train` on it, from the command's start to its first training iteration
  (no iteration-0 test): once with the dataset's shards unchecked (the first run on a
  dataset reads them all, `checks.check_split`), then again (later runs, its note).
Ratios are to the first --data_dir, measured in the same run.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from kerasbn.benchmarks import subprocesses
from kerasbn.data import checks, pipeline, records


def peak_rss_mb():
    """The process's peak resident memory (VmHWM), MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def probe(data_dir, batch_size, batches):
    """Reads `batches` batches of the training pipeline; prints {records, identities,
    rss_start_mb, rss_peak_mb, first_batch_s, images_per_sec, distinct} as JSON."""
    manifest = records.read_manifest(data_dir)
    start_rss = peak_rss_mb()
    start = time.perf_counter()
    iterator = iter(pipeline.train_dataset(data_dir, manifest, batch_size, mirror=True))
    distinct = [len(np.unique(next(iterator)[1].numpy()))]
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches - 1):
        distinct.append(len(np.unique(next(iterator)[1].numpy())))
    rate = (batches - 1) * batch_size / (time.perf_counter() - start)
    print(json.dumps({"records": manifest.splits["train"].count,
                      "identities": manifest.num_classes, "rss_start_mb": start_rss,
                      "rss_peak_mb": peak_rss_mb(), "first_batch_s": first,
                      "images_per_sec": rate, "distinct": float(np.mean(distinct))}))


def expected_distinct(identities, batch_size):
    """Mean distinct identities in `batch_size` independent uniform draws from `identities`."""
    return identities * (1 - (1 - 1 / identities) ** batch_size)


def probe_process(code, what):
    """The JSON that Python `code` prints last, run in a process of its own (so its peak
    memory is its own); exits with one line naming `what` when it fails."""
    return subprocesses.last_json(["-c", code], what)


def seconds_to_first_step(data_dir, batch_size):
    """Seconds from `python -m kerasbn.train` starting on `data_dir` (a fresh run dir, no
    iteration-0 test) to its first training iteration's display line."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "kerasbn.train", f"--data_dir={data_dir}",
                   f"--run_dir={run_dir}/run", "--model=bn", f"--batch_size={batch_size}",
                   "--max_iter=100000", "--display=1", "--test_interval=100000",
                   "--snapshot=100000", "--notest_initialization"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        lines = []
        try:
            for line in process.stdout:
                if line.startswith("iter 1/"):
                    return time.perf_counter() - start
                lines.append(line)
        finally:
            process.kill()
            process.wait()
    sys.exit(f"error: training on {data_dir} stopped before its first iteration: "
             f"{lines[-1].strip() if lines else 'no output'}")


def forget_checks(data_dir):
    """Removes the dataset's note of checked splits, so the next run reads them all again."""
    path = os.path.join(data_dir, checks.FILENAME)
    if os.path.exists(path):
        os.remove(path)


def run(data_dirs, batch_size, batches):
    """Measures each of `data_dirs`; prints one line per dataset and returns the results."""
    for data_dir in data_dirs:
        try:
            records.read_manifest(data_dir)
        except records.DataError as e:
            sys.exit(f"error: {e}")
    results = []
    for data_dir in data_dirs:
        result = probe_process(f"from kerasbn.benchmarks import scaling; scaling.probe("
                               f"{data_dir!r}, {batch_size}, {batches})",
                               f"the pipeline probe on {data_dir}")
        forget_checks(data_dir)
        result["first_step_unchecked_s"] = seconds_to_first_step(data_dir, batch_size)
        result["first_step_s"] = seconds_to_first_step(data_dir, batch_size)
        results.append(result)
    first = results[0]
    for data_dir, r in zip(data_dirs, results):
        print(f"{data_dir}: {r['records']:,} training records of {r['identities']:,} "
              f"identities; pipeline peak {r['rss_peak_mb']:.0f} MB "
              f"({r['rss_peak_mb'] / first['rss_peak_mb']:.2f}x the first; "
              f"+{r['rss_peak_mb'] - r['rss_start_mb']:.0f} MB over its imports), "
              f"{r['images_per_sec']:.0f} images/s, first batch {r['first_batch_s']:.2f}s, "
              f"{r['distinct']:.1f} distinct identities per batch of {batch_size} "
              f"({expected_distinct(r['identities'], batch_size):.1f} for uniform draws); "
              f"first training step {r['first_step_s']:.1f}s "
              f"({r['first_step_s'] - first['first_step_s']:+.1f}s against the first; "
              f"{r['first_step_unchecked_s']:.1f}s when the shards are still unchecked)",
              flush=True)
    return results
