"""arcface_torch's Vision Transformers: parameter counts from the definition counted by hand,
insightface's initialisation, the masking, stochastic depth and attention against NumPy
transcriptions of vit.py's, and a narrow ViT training under the ViT config's settings
(PyTorch's BN, AdamW, CosFace margins, masking and drop path on)."""

import keras
import numpy as np
import pytest

from kerasbn import config
from kerasbn.nn import models, transformer
from kerasbn.nn.networks import vit
from kerasbn.runs import network


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def by_hand(dim, depth, embedding=512, tokens=144, patch=9, channels=3):
    """VisionTransformer's parameters: the patch convolution, position embeddings and mask
    token, per block two LayerNorms, qkv (no bias), the projection and the 4x MLP, the last
    LayerNorm, and the neck: a Linear from the flattened tokens (no bias), BatchNorm1d, a
    Linear to the embedding (no bias), BatchNorm1d."""
    block = 2 * 2 * dim + dim * 3 * dim + dim * dim + dim + dim * 4 * dim + 4 * dim \
        + 4 * dim * dim + dim
    return (patch * patch * channels * dim + dim + tokens * dim + dim + depth * block + 2 * dim
            + tokens * dim * dim + 2 * dim + dim * embedding + 2 * embedding)


@pytest.mark.parametrize("name", ["vit_t", "vit_s"])
def test_parameter_counts_at_112_are_the_definitions(name):
    dim, depth = vit.SIZES[name]
    model = models.build(name, 10, image_size=(112, 112), channels=3, embedding_dim=512,
                         norm="torch")
    assert _trainable(model) - (512 * 10 + 10) == by_hand(dim, depth)
    assert model.get_layer("embedding").output.shape == (None, 512)


def test_the_sizes_of_the_three():
    # vit_t 19.1M, vit_s 76.0M, vit_b 113.8M trainable parameters with a 512-d embedding;
    # vit_b is counted, not built (its flattened neck alone is 37.7M).
    assert [round(by_hand(*vit.SIZES[n]) / 1e6, 1) for n in ("vit_t", "vit_s", "vit_b")] == [
        19.1, 76.0, 113.8]


def test_it_starts_from_arcface_torchs_initialisation():
    keras.utils.set_random_seed(0)
    model = models.build("vit_t", 5, image_size=(112, 112), channels=3, widths=(64,),
                         embedding_dim=64, norm="torch")
    for name in ("block0_fc1", "block3_fc2", "feature_fc"):
        kernel = model.get_layer(name).kernel.numpy()
        assert float(np.std(kernel)) == pytest.approx(0.02, rel=0.05)
    assert float(np.std(model.get_layer("pos_embed").position.numpy())) == pytest.approx(
        0.02, rel=0.05)
    np.testing.assert_array_equal(model.get_layer("block0_fc1").bias.numpy(), 0)
    np.testing.assert_array_equal(model.get_layer("block0_norm1").gamma.numpy(), 1)
    patch = model.get_layer("patch_embed")
    bound = (9 * 9 * 3) ** -0.5
    assert np.abs(patch.kernel.numpy()).max() <= bound
    assert np.abs(patch.bias.numpy()).max() <= bound
    assert model.get_layer("embedding").epsilon == model.get_layer("feature_bn").epsilon == 2e-5
    assert model.get_layer("norm").epsilon == 1e-5


def test_masking_keeps_a_random_part_of_each_sample_and_restores_it_with_the_mask_token():
    keras.utils.set_random_seed(1)
    tokens = np.random.default_rng(0).normal(size=(3, 10, 4)).astype(np.float32)
    kept, restore = transformer.TokenMasking(0.3)(tokens, training=True)
    kept, restore = kept.numpy(), restore.numpy()
    assert kept.shape == (3, 7, 4)  # int(10 * 0.7), as random_masking keeps
    restoring = transformer.TokenRestoring()
    full = restoring([kept, restore]).numpy()
    mask_token = restoring.mask_token.numpy()[0, 0]
    for sample in range(3):
        # vit.py: restore = argsort(shuffle), so shuffle = argsort(restore) and the kept
        # tokens are shuffle's first 7, each back at its own position.
        shuffle = np.argsort(restore[sample])
        np.testing.assert_array_equal(kept[sample], tokens[sample, shuffle[:7]])
        np.testing.assert_array_equal(full[sample, shuffle[:7]], tokens[sample, shuffle[:7]])
        np.testing.assert_array_equal(full[sample, shuffle[7:]],
                                      np.broadcast_to(mask_token, (3, 4)))
    assert len({tuple(np.argsort(r)[:7]) for r in restore}) > 1  # each sample its own draw
    same, order = transformer.TokenMasking(0.3)(tokens)
    np.testing.assert_array_equal(same.numpy(), tokens)
    np.testing.assert_array_equal(restoring([same, order]).numpy(), tokens)


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    keras.utils.set_random_seed(2)
    x = np.ones((4000, 3, 2), np.float32)
    y = transformer.DropPath(0.25)(x, training=True).numpy()
    per_sample = y.reshape(4000, -1)
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert float(np.mean(per_sample[:, 0] == 0)) == pytest.approx(0.25, abs=0.03)
    np.testing.assert_array_equal(transformer.DropPath(0.25)(x).numpy(), x)


def test_attention_is_vit_pys_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    layer = transformer.SelfAttention(4)
    y = layer(x).numpy()
    qkv = (x @ layer.qkv.kernel.numpy()).reshape(2, 5, 3, 4, 4).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = q @ k.transpose(0, 1, 3, 2) * 4 ** -0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 5, 16)
    expected = out @ layer.proj.kernel.numpy() + layer.proj.bias.numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _narrow(**kw):
    # 36x36: a 4x4 grid of tokens, each step the same network at a ninth of the cost.
    values = dict(data_dir="d", run_dir="r", model="vit_t", num_classes=6,
                  image_size=(36, 36), channels=3, batch_size=4, test_interval=2,
                  schedule={"max_iter": 2, "base_lr": 1e-3}, widths=(16,), embedding_dim=16,
                  norm="torch", head="combined", margins=(1.0, 0.0, 0.4),
                  solver_type="AdamW", weight_decay=0.1, clip_grad_norm=5.0)
    values.update(kw)
    return config.RunConfig(**values)


@pytest.mark.slow
def test_a_narrow_vit_trains_with_masking_and_drop_path_under_adamw():
    keras.utils.set_random_seed(0)
    model = network.build_and_compile(_narrow(drop_path=0.2, mask_ratio=0.25))
    assert model.get_layer("masking").ratio == 0.25
    assert model.get_layer("block11_drop2").rate == pytest.approx(0.2)
    assert model.get_layer("block0_drop1").rate == 0.0
    images = np.random.default_rng(0).normal(size=(4, 36, 36, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    before = [v.numpy().copy() for v in model.trainable_variables]
    losses = [float(model.train_on_batch(images, labels)) for _ in range(3)]
    assert all(np.isfinite(losses))
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before,
                                                                model.trainable_variables)]
    assert all(moved)  # the mask token and every block's weights among them
    # Inference neither masks nor drops: the same faces embed the same twice.
    first, second = model(images).numpy(), model(images).numpy()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kw, said", [
    (dict(model="iresnet18", widths=None, drop_path=0.1), "--drop_path is a setting of "
     "--model=vit_t or --model=vit_s or --model=vit_b, not of --model=iresnet18"),
    (dict(widths=(12,)), "--widths=12 for --model=vit_t must be a multiple of its 8 heads"),
    (dict(dropout=0.2), "--model=vit_t has no dropout"),
    (dict(image_size=(8, 8)), "takes images of at least 9x9"),
])
def test_what_a_vit_cannot_take_is_one_line(kw, said):
    with pytest.raises(config.ConfigError, match=said):
        _narrow(**kw)
