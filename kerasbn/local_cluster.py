"""Runs one training run as N tf.distribute workers on this machine: try multi-worker
training before a cluster.

    python -m kerasbn.local_cluster --workers 2 -- --flagfile=launch/bn.flags \
        --data_dir=data/faces --run_dir=runs/bn_2workers

Starts N `python -m kerasbn.train ... --strategy=multi_worker` processes, each with a
TF_CONFIG naming all N on loopback ports and its own index; worker 0 is the chief, whose
output this command streams, with its `warning:` and `error:` lines (everything else a
worker writes to standard error goes to a log). If any worker fails, the others are stopped
and the command ends with that worker's own `error:` line, or the last lines of its log when
it died without one, never the other workers' collective-abort dumps that its death causes,
and exits with its status; Ctrl-C or SIGTERM stops them all. On a real cluster each machine runs the same train command with
its own TF_CONFIG (BUILD.md shows a Slurm array and a Kubernetes Job).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
    """[(process, log path)] of `count` workers running `train_args`, worker 0 first: the
    chief's standard output stays this command's, its standard error is logged and its own
    lines forwarded; the other workers write only to their logs."""
    ports = free_ports(count)
    command = [sys.executable, "-m", "kerasbn.train", *train_args, "--strategy=multi_worker"]
    workers = []
    for index in range(count):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        log = os.path.join(log_dir, f"worker{index}.log")
        if index == 0:
            process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
            threading.Thread(target=_forward, args=(process.stderr, log), daemon=True).start()
        else:
            with open(log, "wb") as out:
                process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        workers.append((process, log))
    return workers


def _forward(stream, log):
    """Copies the chief's standard error into `log`, passing its own warning and error
    lines on as they come."""
    with open(log, "wb") as out:
        for line in stream:
            out.write(line)
            out.flush()
            if line.startswith(OWN_LINES):
                sys.stderr.buffer.write(line)
                sys.stderr.flush()


# A worker's own lines on standard error, as every kerasbn command writes them.
OWN_LINES = (b"warning:", b"error:")


def cause(log):
    """What a failed worker's `log` says of its failure: its own `error:` lines, else the
    last lines that are neither TensorFlow's log nor a traceback's frames."""
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    own = [line for line in lines if line.startswith("error:")]
    if own:
        return own[-1:]
    plain = [line for line in lines if line.strip() and not TF_LOG.match(line)
             and not line.startswith((" ", "Traceback"))]
    return plain[-3:]


# TensorFlow's C++ log lines (absl's format: severity, date, time, thread, file:line).
TF_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|^WARNING: All log messages before")


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
    others), else 0. Of workers found failed at the same poll, one other than the chief is
    taken: the chief's collective ops fail because a peer died, not the other way round."""
    while True:
        codes = [process.poll() for process, _ in workers]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            first = max(failed) if failed[0] == 0 else failed[0]
            stop(workers)
            time.sleep(0.2)  # the chief's forwarding thread finishes its log
            for line in cause(workers[first][1]):
                print(f"worker {first}: {line}", file=sys.stderr)
            print(f"error: worker {first} exited with status {codes[first]}; stopped the "
                  "other workers", file=sys.stderr)
            return codes[first]
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
