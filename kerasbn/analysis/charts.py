"""Line charts as PNG files, drawn off-screen (Agg), for the commands that plot curves."""


def save_lines(curves, out, xlabel, ylabel, xscale="linear", yscale="linear", marker=None,
               ylim=None):
    """Draws (label, xs, ys) curves on one chart with a legend into PNG `out`; a fourth item,
    a dict of matplotlib line properties (colour, alpha), styles that curve (several runs of
    one group in one colour, labelled once: label None for the others)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, xs, ys, *style in curves:
        ax.plot(xs, ys, label=label, marker=marker, **(style[0] if style else {}))
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
