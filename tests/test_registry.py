"""The registry of networks and heads: a network registered in one place is built, checked
and listed like the built-in ones, and a name is never registered twice."""

import os
import re

import numpy as np
import pytest

from kerasbn import config
from kerasbn.nn import models, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny():
    """The network of docs/ARCHITECTURE.md's worked example, registered as the doc writes it
    (so the doc cannot drift from what works); removed after."""
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
        example = f.read().split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "nn/networks/tiny.py", "exec"), {"__name__": "tiny"})
    yield "tiny"
    del registry.NETWORKS["tiny"]


def test_a_registered_network_builds_under_every_head(tiny):
    for head in models.HEADS:
        model = models.build(tiny, 7, head=head, norm="bvlc")
        assert model.name == tiny and model.output.shape == (None, 7)
        assert model.get_layer("conv").filters == 16 and model.layers[-1].name == "logits"
        logits = model(np.zeros((2, 50, 50, 1), np.float32))
        assert np.all(np.isfinite(logits))


def test_a_registered_networks_rules_and_widths_are_checked(tiny):
    with pytest.raises(ValueError, match="takes gray images"):
        models.build(tiny, 7, channels=3)
    with pytest.raises(ValueError, match="takes 1 values, got 2"):
        models.build(tiny, 7, widths=(4, 8))
    assert models.build(tiny, 7, widths=(4,)).get_layer("conv").filters == 4


def test_the_config_refuses_by_the_same_rule_the_network_registered():
    values = dict(data_dir="d", run_dir="r", num_classes=7, image_size=(50, 50), channels=3,
                  schedule={"max_iter": 2}, test_interval=2, model="iresnet18")
    with pytest.raises(config.ConfigError) as refused:
        config.RunConfig(**values)
    settings = models.NetworkSettings(name="iresnet18", num_classes=7, image_size=(50, 50),
                                      channels=3)
    assert str(refused.value) == models.problem(settings)
    assert "multiples of 16" in str(refused.value)


def test_names_are_unique_and_every_builtin_is_listed():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_head("softmax", classifier=None, loss=None)
    assert models.MODELS[:3] == ("baseline", "bn", "bn_all")
    assert set(models.FIELD_MODELS) == {"iresnet18", "iresnet34", "iresnet50", "iresnet100",
                                        "mobilefacenet", "vit_t", "vit_s", "vit_b"}
    assert models.HEADS == ("softmax", "cosface", "arcface", "combined")
    assert registry.margin_heads() == ["cosface", "arcface", "combined"]


@pytest.mark.parametrize("values,message", [
    ({"head": "softmax", "scale": 30.0}, "--head=softmax; add --head=cosface or --head=arcface"),
    ({"head": "cosface", "easy_margin": True}, "ArcFace's; add --head=arcface"),
    ({"head": "arcface", "margin": 1.6}, r"\[0, 1.571\)"),
    ({"head": "combined", "margin": 0.5}, "takes its margins from --margins=m1,m2,m3"),
    ({"head": "arcface", "margins": (1.0, 0.0, 0.4)}, "set --head=combined's loss"),
    ({"head": "softmax", "interclass_filtering_threshold": 0.4}, "set --head=combined's loss"),
    ({"head": "combined", "margins": (0.9, 0.4, 0.0)}, "m1 .*must be 1"),
    ({"head": "combined", "margins": (1.0, 0.3, 0.2)}, "would drop m2 silently"),
    ({"head": "combined", "margins": (1.0, 0.5)}, "takes three values"),
])
def test_head_rules_come_from_the_heads_registration(values, message):
    settings = type("Settings", (), {"scale": None, "margin": None, "easy_margin": False,
                                     "margins": registry.DEFAULT_MARGINS,
                                     "interclass_filtering_threshold": 0.0, **values})
    assert re.search(message, registry.head_problem(settings))


def test_an_unknown_embedding_is_refused_by_the_study_networks_rule():
    with pytest.raises(ValueError, match="unknown --embedding 'bn-fc'; choose one of pool"):
        models.build("bn", 7, embedding="bn-fc")
