"""The training step as identities grow: the full classifier against Partial FC.

`python -m kerasbn.bench --bench=heads [--head=arcface --class_counts=14700,1000000
--sample_fractions=1,0.1]` trains the study's BN network with the margin head on one cached
batch (labels drawn uniformly from the classes) at each class count and fraction F of the
centres (`--sample_classes`), each in a process of its own so each peak memory is its own,
the variants alternating over --repeats rounds (the best round's time counts). It reports
seconds per step and the process's peak resident memory, and both over the growth since the
network and its optimizer were built: what the step itself holds (logits, their gradients,
the centres' gradient), where sampling saves. The centres and their momentum are in memory
whole either way on one device.

`--bench=shard [--replicas=1,2,4 --class_counts=100000,1000000,2000000]` times the same step
with a 512-d embedding on R logical CPU devices (`--batch_size` per replica), the centres
replicated on every replica against sharded (`--shard_classes`); a variant whose centres and
momentum would not fit in this machine's memory is reported so, not run.
"""

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from kerasbn import config
from kerasbn.benchmarks import scaling, timing
from kerasbn.nn.sharded import centres
from kerasbn.runs import network
from kerasbn.training import runtime

SHARD_DIM = 512


def _config(num_classes, fraction, head, batch_size, precision, **distributed):
    """The bench's run config; with `distributed` settings (the shard bench's), a 512-d
    embedding."""
    embedding = {"embedding": "bn_fc", "embedding_dim": SHARD_DIM} if distributed else {}
    return config.RunConfig(data_dir="-", run_dir="-", num_classes=num_classes,
                            image_size=(50, 50), channels=1, head=head, sample_classes=fraction,
                            batch_size=batch_size, test_interval=1, precision=precision,
                            **embedding, **distributed)


def probe(num_classes, fraction, head, batch_size, steps, precision, replicas=0,
          shard=False):
    """Times `steps` training steps (with `replicas`, on that many logical CPU devices,
    the centres sharded with `shard`, `batch_size` the global batch); prints
    {seconds_per_step, rss_built_mb, rss_peak_mb} as JSON."""
    keras.mixed_precision.set_global_policy(precision)
    distributed = {"shard_classes": shard, "strategy": "mirrored"} if replicas else {}
    cfg = _config(num_classes, fraction, head, batch_size, precision, **distributed)
    if replicas:
        runtime.split_cpu(replicas)
    with runtime.make_strategy(cfg.strategy).scope():
        model = network.build_and_compile(cfg)
    built = scaling.peak_rss_mb()
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensors(
        (rng.standard_normal((batch_size, 50, 50, 1), np.float32),
         rng.integers(0, num_classes, batch_size))).repeat()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    clock = timing.CallClock()
    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False,
              callbacks=[clock])
    print(json.dumps({"seconds_per_step": (clock.ends[-1] - clock.ends[0]) / steps,
                      "rss_built_mb": built, "rss_peak_mb": scaling.peak_rss_mb()}))


def run(class_counts, fractions, head, batch_size, steps, repeats, precision):
    """Measures each (class count, fraction); prints one line each and returns
    {(classes, fraction): {seconds_per_step, rss_built_mb, rss_peak_mb}}."""
    for classes in class_counts:
        for fraction in fractions:
            try:
                _config(classes, fraction, head, batch_size, precision)
            except config.ConfigError as e:
                sys.exit(f"error: {e}")
    rounds = {}
    for _ in range(repeats):
        for classes in class_counts:
            for fraction in fractions:
                rounds.setdefault((classes, fraction), []).append(scaling.probe_process(
                    f"from kerasbn.benchmarks import margin_heads; margin_heads.probe({classes}, "
                    f"{fraction}, {head!r}, {batch_size}, {steps}, {precision!r})",
                    f"the {head} step at {classes} classes, --sample_classes={fraction:g}"))
    best = {key: {"seconds_per_step": min(r["seconds_per_step"] for r in results),
                  "rss_built_mb": min(r["rss_built_mb"] for r in results),
                  "rss_peak_mb": max(r["rss_peak_mb"] for r in results)}
            for key, results in rounds.items()}
    for classes in class_counts:
        reference = best[classes, fractions[0]]
        grown = lambda r: r["rss_peak_mb"] - r["rss_built_mb"]
        for fraction in fractions:
            r = best[classes, fraction]
            print(f"{classes:,} classes, {head}, {precision}, --sample_classes={fraction:g}: "
                  f"{r['seconds_per_step']:.3f} s per step of {batch_size} "
                  f"({r['seconds_per_step'] / reference['seconds_per_step']:.2f}x F="
                  f"{fractions[0]:g}'s), peak {r['rss_peak_mb']:.0f} MB, "
                  f"+{grown(r):.0f} MB over the built network "
                  f"({grown(r) / max(grown(reference), 1):.2f}x F={fractions[0]:g}'s)",
                  flush=True)
    return best


def _memory_gib():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def run_sharded(class_counts, fraction, head, batch_size, steps, repeats, precision,
                replicas_list):
    """Measures each (class count, replicas), replicated and sharded; prints one line each
    (the sharded step's time over the replicated one's) and returns
    {(classes, replicas, layout): result or None where it would not fit}."""
    for classes in class_counts:
        try:
            _config(classes, fraction, head, batch_size, precision, shard_classes=True)
        except config.ConfigError as e:
            sys.exit(f"error: {e}")
    memory = _memory_gib()
    variants = [(classes, replicas, shard) for classes in class_counts
                for replicas in replicas_list for shard in (False, True)]
    held = {(classes, replicas, shard): centres.footprint(
        classes, SHARD_DIM, replicas if shard else 1, batch_size)[0] / 2**30
        for classes, replicas, shard in variants}
    best = {}
    for _ in range(repeats):
        for classes, replicas, shard in variants:
            # Each replica's centres, momentum and one gradient's worth, with a GiB
            # for the network, the process and the logits.
            if held[classes, replicas, shard] * 1.5 * replicas + 1 > memory:
                best[classes, replicas, shard] = None
                continue
            result = scaling.probe_process(
                "from kerasbn.benchmarks import margin_heads; margin_heads.probe("
                f"{classes}, {fraction}, {head!r}, {batch_size * replicas}, {steps}, "
                f"{precision!r}, {replicas}, {shard})",
                f"the {head} step at {classes} classes on {replicas} replicas"
                f"{', sharded' if shard else ''}")
            kept = best.get((classes, replicas, shard))
            if kept is None or result["seconds_per_step"] < kept["seconds_per_step"]:
                best[classes, replicas, shard] = result
    for classes, replicas, shard in variants:
        r = best[classes, replicas, shard]
        what = (f"{classes:,} classes on {replicas} replica{'s' * (replicas > 1)}, "
                f"{'sharded' if shard else 'replicated'}: centres and momentum "
                f"{held[classes, replicas, shard]:.2f} GiB per replica")
        if r is None:
            print(f"{what}: does not fit in this machine's {memory:.0f} GiB", flush=True)
            continue
        other = best[classes, replicas, not shard]
        ratio = f" ({r['seconds_per_step'] / other['seconds_per_step']:.2f}x " \
            "replicated)" if shard and other else ""
        print(f"{what}: {r['seconds_per_step']:.3f} s per step of {batch_size} per "
              f"replica{ratio}, peak {r['rss_peak_mb'] / 1024:.1f} GiB", flush=True)
    return best
