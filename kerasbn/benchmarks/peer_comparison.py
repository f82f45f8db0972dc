"""kerasbn's networks against the same networks in PyTorch (kerasbn.benchmarks.pytorch_peer,
each round in a process of its own), alternating rounds (`bench --bench=peer`): for the
study's, what BN costs each; for the field's, how near each step comes to the CPU's peak."""

import keras

from kerasbn.benchmarks import subprocesses, timing
from kerasbn.nn import flops, models
from kerasbn.utils import hardware

# The networks the peer bench has in PyTorch: the study's pair (timed together, for BN's
# cost) and the field's.
NETWORKS = ("baseline", "bn") + models.FIELD_MODELS
# kerasbn's dtype policy beside the PyTorch setting it is measured against.
PEER_PRECISIONS = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                   "mixed_float16": "float16"}


def peer_rate(name, num_classes, precision, batch_size, steps):
    """PyTorch's images/s for network `name` at `precision` (kerasbn.benchmarks.pytorch_peer's),
    measured in a process of its own so neither framework's threads wait beside the other's."""
    return subprocesses.last_json(
        ["-m", "kerasbn.benchmarks.pytorch_peer", f"--model={name}", f"--precision={precision}",
         f"--num_classes={num_classes}", f"--batch_size={batch_size}", f"--steps={steps}"],
        "the PyTorch benchmark")["images_per_second"]


def bench_peer(num_classes, precisions, norm_names, batch_size, steps, rounds, peer=True):
    """One dict per round {(framework, network, precision, norm): images/s}: kerasbn's
    baseline and BN network (each of `norm_names`) on one cached batch, then PyTorch's
    (norm None; `peer` False leaves it out) at the matching precision."""
    measured = []
    for _ in range(rounds):
        rates = {}
        for name in ("baseline", "bn"):
            names = norm_names if name == "bn" else ["keras"]
            variants = [(p, n, False, 1) for p in precisions for n in names]
            for (precision, norm, _, _), rate in timing.bench_train(
                    name, num_classes, variants, batch_size, steps, 1).items():
                rates["kerasbn", name, precision, norm if name == "bn" else None] = \
                    rate["cached"]
            for precision in precisions if peer else []:
                rates["pytorch", name, precision, None] = peer_rate(
                    name, num_classes, PEER_PRECISIONS[precision], batch_size, steps)
        measured.append(rates)
    return measured


def _span(values, digits=0):
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" \
        else f"{low:.{digits}f}-{high:.{digits}f}"


def print_peer(measured, precisions, norm_names):
    """The rates of `bench_peer` as ranges over its rounds, then the same-round ratios."""
    print(f"| network | {' | '.join(precisions)} |\n|---|{'---|' * len(precisions)}")
    for key in measured[0]:
        if key[2] != precisions[0]:
            continue
        framework, name, _, norm = key
        label = f"{framework} {name}" + (f" --norm={norm}" if norm else "")
        cells = [_span([r[framework, name, p, norm] for r in measured]) for p in precisions]
        print(f"| {label} | {' | '.join(cells)} |")
    peer = ("pytorch", "bn", precisions[0], None) in measured[0]

    def ratio(top, bottom):
        return _span([r[top] / r[bottom] for r in measured], 2) + "x"

    for precision in precisions:
        baseline = ("kerasbn", "baseline", precision, None)
        peer_baseline = ("pytorch", "baseline", precision, None)
        peer_bn = ("pytorch", "bn", precision, None)
        for norm in norm_names:
            bn = ("kerasbn", "bn", precision, norm)
            line = (f"{precision}, --norm={norm}: BN network step per image "
                    f"{ratio(baseline, bn)} the baseline's")
            if peer:
                line += f"; kerasbn/PyTorch: BN network {ratio(bn, peer_bn)}"
            print(line)
        if peer:
            print(f"{precision}: kerasbn/PyTorch baseline {ratio(baseline, peer_baseline)}; "
                  f"PyTorch's BN network step per image {ratio(peer_baseline, peer_bn)} its "
                  "baseline's")


def bench_field(names, num_classes, precisions, batch_size, steps, rounds, peer=True):
    """One dict per round {(framework, network, precision): images/s} of the field's networks
    `names` (Keras's norm, softmax on the 512-d embedding), kerasbn's then PyTorch's."""
    measured = []
    for _ in range(rounds):
        rates = {}
        for name in names:
            variants = [(p, "keras", False, 1) for p in precisions]
            for (precision, _, _, _), rate in timing.bench_train(
                    name, num_classes, variants, batch_size, steps, 1).items():
                rates["kerasbn", name, precision] = rate["cached"]
            for precision in precisions if peer else []:
                rates["pytorch", name, precision] = peer_rate(
                    name, num_classes, PEER_PRECISIONS[precision], batch_size, steps)
        measured.append(rates)
    return measured


def print_field(measured, names, num_classes, precisions):
    """Per network and precision: FLOPs per image, each framework's images/s over the rounds,
    kerasbn/PyTorch in each round, and the FLOP/s of kerasbn's best round against the CPU's
    peak (hardware.cpu_peak)."""
    for name in names:
        counts = flops.per_image(models.build(name, num_classes, **models.made_for(name)))
        keras.backend.clear_session()
        print(f"{name}: {counts['forward'] / 1e9:.2f} GFLOPs per image forward, "
              f"{counts['training'] / 1e9:.2f} per training step (convolutions and dense "
              "layers, a multiply-add as two)")
        for precision in precisions:
            ours = [r["kerasbn", name, precision] for r in measured]
            line = f"  {precision}: kerasbn {_span(ours)} images/s"
            if ("pytorch", name, precision) in measured[0]:
                theirs = [r["pytorch", name, precision] for r in measured]
                ratios = [a / b for a, b in zip(ours, theirs)]
                line += (f", PyTorch {_span(theirs)}; kerasbn/PyTorch {_span(ratios, 2)}x "
                         f"({sum(x >= 1.2 for x in ratios)}/{len(ratios)} rounds >= 1.2x)")
            achieved = max(ours) * counts["training"]
            peak, how = hardware.cpu_peak(precision)
            line += f"; {achieved / 1e9:.0f} GFLOP/s"
            line += (f" = {100 * achieved / peak:.1f}% of the peak {peak / 1e9:.0f} GFLOP/s "
                     f"({how})" if peak else f" (no peak: {how})")
            print(line, flush=True)
