"""Runs one training run as N tf.distribute workers on this machine: try multi-worker
training before a cluster.

    python -m kerasbn.local_cluster --workers 2 -- --flagfile=launch/bn.flags \
        --data_dir=data/faces --run_dir=runs/bn_2workers

Starts N `python -m kerasbn.train ... --strategy=multi_worker` processes, each with a
TF_CONFIG naming all N on loopback ports and its own index; worker 0 is the chief, whose
output this command streams (the others' goes to a log, shown if one fails). If any worker
fails, the others are stopped and the command exits with the failed worker's status; Ctrl-C
or SIGTERM stops them all. On a real cluster each machine runs the same train command with
its own TF_CONFIG (BUILD.md shows a Slurm array and a Kubernetes Job).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags

from kerasbn.flags import cli


def free_ports(count):
    """`count` TCP ports free on the loopback interface now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    """TF_CONFIG of worker `index` in a cluster of workers on `ports` of this machine."""
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_workers(count, train_args, log_dir):
    """[(process, log path)] of `count` workers running `train_args`, worker 0 first."""
    ports = free_ports(count)
    command = [sys.executable, "-m", "kerasbn.train", *train_args, "--strategy=multi_worker"]
    workers = []
    for index in range(count):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        log = None if index == 0 else os.path.join(log_dir, f"worker{index}.log")
        out = None if log is None else open(log, "w", encoding="utf-8")
        workers.append((subprocess.Popen(command, env=env, stdout=out, stderr=out), log))
    return workers


def stop(workers):
    for process, _ in workers:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 30
    for process, _ in workers:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def supervise(workers):
    """Waits for every worker; the exit status of the first that fails (after stopping the
    others), else 0."""
    while True:
        codes = [process.poll() for process, _ in workers]
        failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None:
            stop(workers)
            _, log = workers[failed]
            if log:
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read().strip().splitlines()[-5:]
                print("\n".join(f"worker {failed}: {line}" for line in tail), file=sys.stderr)
            print(f"error: worker {failed} exited with status {codes[failed]}; stopped the "
                  "other workers", file=sys.stderr)
            return codes[failed]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)


def define_flags(values):
    flags.DEFINE_integer("workers", 2, "Worker processes (worker 0 is the chief).",
                         lower_bound=1, upper_bound=64, flag_values=values)


def main(argv):
    split = argv.index("--") if "--" in argv else len(argv)
    values, rest = cli.parse(argv[:split], define_flags, __doc__)
    if rest or split == len(argv):
        sys.exit("error: give the training flags after --, e.g. python -m "
                 "kerasbn.local_cluster --workers 2 -- --flagfile=launch/bn.flags "
                 "--run_dir=runs/bn2")
    train_args = argv[split + 1:]
    if any(arg.startswith("--strategy") for arg in train_args):
        sys.exit("error: drop --strategy: every worker runs --strategy=multi_worker")
    with tempfile.TemporaryDirectory(prefix="kerasbn-cluster-") as log_dir:
        workers = start_workers(values.workers, train_args, log_dir)
        handler = lambda signum, frame: stop(workers)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)
        code = supervise(workers)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv)
