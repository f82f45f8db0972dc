"""Networks and heads by name, as timm's `register_model`: a name maps to a builder, and
what belongs to that network or head (its widths, default dropout, the input it is made for,
its rules; a head's loss, default scale and margin) is declared beside the builder, in its
own module of `nn/networks/` or `nn/heads/`. `models.build` is then a lookup, and a new
backbone or head is one module with its registration (docs/ARCHITECTURE.md shows one).

The modules of both folders are imported by `load()`, so registering needs no list to edit.
"""

import dataclasses
import importlib
import pkgutil

# The classifier is every network's last layer, under this name: fine-tuning replaces it,
# the rest is the backbone, and Partial FC samples its centres.
CLASSIFIER = "logits"
# The families networks are listed in, in this order (then in the order they register).
FAMILIES = ("study", "field", "cifar")
# The input a network is made for unless it says otherwise: the study's 50x50 gray faces.
STUDY_INPUT = {"image_size": (50, 50), "channels": 1}


@dataclasses.dataclass(frozen=True)
class Network:
    """A registered network. `features(inputs, settings, parts)` returns the embedding tensor
    of the image tensor `inputs` (`settings` a `models.NetworkSettings` with its widths and
    dropout resolved, `parts` a `models.Parts`). `family`: study, field or cifar. `widths`:
    its convolution widths in order (what --widths replaces); `dropout`: its default;
    `made_for`: `build`'s keyword arguments of the input (and embedding) it is made for;
    `check(settings)`: why settings cannot build it, or None; `classifier_std`: the std of
    its own Gaussian classifier filler (None: the run's filler's glorot); `options`: the
    settings of `models.OPTIONS` it takes."""
    name: str
    features: object
    family: str
    widths: tuple = ()
    dropout: float = 0.0
    made_for: dict = dataclasses.field(default_factory=lambda: dict(STUDY_INPUT))
    check: object = None
    classifier_std: float | None = None
    options: tuple = ()


@dataclasses.dataclass(frozen=True)
class Head:
    """A registered head. `classifier(units, settings, kernel, bias_regularizer)` returns the
    layer `logits` (`kernel`: its kernel's initializer and regularizer, its dtype and name;
    `bias_regularizer`: for a bias, if it has one); `loss(settings)` the training
    loss (a margin lives in the loss, so inference sees plain logits). `defaults`: the
    (scale, margin) a margin head takes when none are given (None: it takes neither);
    `margin_limit`: the margin's open upper bound (None: it takes no --margin);
    `easy_margin`: whether it takes --easy_margin; `margins`: whether it takes --margins and
    --interclass_filtering_threshold; `samples`: whether Partial FC can sample its centres;
    `title`: its name as the field writes it."""
    name: str
    classifier: object
    loss: object
    defaults: tuple | None = None
    margin_limit: float | None = None
    easy_margin: bool = False
    margins: bool = False
    samples: bool = False
    title: str = ""


NETWORKS = {}
HEADS = {}
# insightface's margin_list of ArcFace, --margins's default.
DEFAULT_MARGINS = (1.0, 0.5, 0.0)


def register_network(name, **spec):
    """Registers the decorated `features` builder as network `name` (`Network`'s fields)."""
    def register(features):
        _add(NETWORKS, Network(name=name, features=features, **spec))
        return features
    return register


def register_head(name, **spec):
    """Registers head `name` (`Head`'s fields)."""
    _add(HEADS, Head(name=name, **spec))


def _add(table, entry):
    if entry.name in table:
        raise ValueError(f"{entry.name!r} is registered twice")
    table[entry.name] = entry


def load():
    """Imports every module of nn/networks and nn/heads, which registers them; returns the
    names of the networks (by family) and of the heads (the unmargined first)."""
    for package in ("kerasbn.nn.networks", "kerasbn.nn.heads"):
        folder = importlib.import_module(package)
        for module in pkgutil.iter_modules(folder.__path__):
            importlib.import_module(f"{package}.{module.name}")
    networks = sorted(NETWORKS, key=lambda name: FAMILIES.index(NETWORKS[name].family))
    heads = sorted(HEADS, key=lambda name: HEADS[name].defaults is not None)
    return tuple(networks), tuple(heads)


def head_problem(settings):
    """Why the head settings (`head`, `scale`, `margin`, `easy_margin`) of `settings` cannot
    be used together, or None; each head's own rules are the fields it registered."""
    head = HEADS[settings.head]
    if head.defaults is None and (settings.scale is not None or settings.margin is not None):
        return (f"--scale and --margin set a margin head's loss, but --head={head.name}; "
                f"add --head={' or --head='.join(margin_heads())}")
    if settings.easy_margin and not head.easy_margin:
        takers = [h for h in HEADS.values() if h.easy_margin]
        return (f"--easy_margin is {' and '.join(h.title for h in takers)}'s; add "
                f"--head={takers[0].name} or drop it")
    if settings.margin is not None and head.margin_limit is None:
        return (f"--head={head.name} takes its margins from --margins=m1,m2,m3, not --margin")
    if settings.margin is not None and not 0 <= settings.margin < head.margin_limit:
        return (f"--margin of --head={head.name} must lie in [0, {head.margin_limit:.4g}), "
                f"got {settings.margin:g}")
    return margins_problem(settings, head)


def margins_problem(settings, head):
    """Why `--margins` and `--interclass_filtering_threshold` cannot be used with `head`, or
    None: insightface's CombinedMarginLoss takes m1 = 1 only, and with m3 > 0 it applies m3
    alone, silently dropping m2, which is refused here instead."""
    margins, threshold = tuple(settings.margins), settings.interclass_filtering_threshold
    if not head.margins:
        if margins != DEFAULT_MARGINS or threshold:
            takers = [h.name for h in HEADS.values() if h.margins]
            return (f"--margins and --interclass_filtering_threshold set --head="
                    f"{' or --head='.join(takers)}'s loss, but --head={head.name}")
        return None
    if len(margins) != 3:
        return f"--margins takes three values m1,m2,m3 (insightface's margin_list), got {margins}"
    m1, m2, m3 = margins
    if m1 != 1:
        return (f"--margins={m1:g},{m2:g},{m3:g}: m1 (SphereFace's multiplicative margin) "
                "must be 1, as insightface's CombinedMarginLoss takes no other")
    if not (0 <= m2 < 1.5708 and 0 <= m3 < 1) or (m2 > 0 and m3 > 0):
        return (f"--margins=1,{m2:g},{m3:g}: give ArcFace's m2 in [0, pi/2) with m3 = 0, or "
                "CosFace's m3 in [0, 1) with m2 = 0 (insightface would drop m2 silently)")
    return None


def margin_heads():
    """The names of the heads with a margin."""
    return [head.name for head in HEADS.values() if head.defaults is not None]
