"""The layers of arcface_torch's Vision Transformer (backbones/vit.py) that Keras lacks in
the form it defines them: learned position embeddings added to the patch tokens, its random
token masking (MAE's per-sample shuffle; the masked tokens come back after the last norm as a
learned mask token), self-attention with one fused qkv projection computed in float32 (as
arcface_torch computes it under autocast), and stochastic depth (timm's DropPath).

Each keeps PyTorch's weight layout where it has one (qkv's kernel holds q, k and v in that
order, heads contiguous), so arcface_torch's state dicts map weight for weight.
"""

import keras
from keras import ops

# timm's trunc_normal_(std=0.02) cuts at +-2 (absolute), 100 standard deviations: a Gaussian.
TOKEN_INIT = keras.initializers.RandomNormal(0.0, 0.02)


class _LearnedTokens(keras.layers.Layer):
    """A layer holding learned token values, drawn by `initializer` and decayed by
    `regularizer`."""

    def __init__(self, initializer=TOKEN_INIT, regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)
        self.regularizer = keras.regularizers.get(regularizer)

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer),
                "regularizer": keras.regularizers.serialize(self.regularizer)}


@keras.saving.register_keras_serializable(package="kerasbn")
class PositionEmbedding(_LearnedTokens):
    """Adds a learned embedding per token position ([N, tokens, dim] in and out)."""

    def build(self, input_shape):
        self.position = self.add_weight(name="position", shape=(1, *input_shape[1:]),
                                        initializer=self.initializer,
                                        regularizer=self.regularizer)

    def call(self, x):
        return x + ops.cast(self.position, x.dtype)


class _Seeded(keras.layers.Layer):
    """A layer drawing random numbers in training from its own `seed` (None: Keras's global
    seed)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="kerasbn")
class TokenMasking(_Seeded):
    """In training, keeps int(tokens * (1 - ratio)) tokens of each sample, chosen at random,
    and returns them with each position's place in the shuffle (what `TokenRestoring` undoes);
    otherwise every token in order. arcface_torch's random_masking."""

    def __init__(self, ratio, **kwargs):
        super().__init__(**kwargs)
        self.ratio = float(ratio)

    def call(self, x, training=False):
        tokens = x.shape[1]
        order = ops.broadcast_to(ops.arange(tokens, dtype="int32"), ops.shape(x)[:2])
        if not training or not self.ratio:
            return x, order
        kept = int(tokens * (1 - self.ratio))
        noise = keras.random.uniform(ops.shape(x)[:2], seed=self.generator)
        shuffle = ops.cast(ops.argsort(noise, axis=1), "int32")
        restore = ops.cast(ops.argsort(shuffle, axis=1), "int32")
        keep = shuffle[:, :kept]
        return ops.take_along_axis(x, keep[..., None], axis=1), restore

    def compute_output_spec(self, x, training=False):
        order = keras.KerasTensor(x.shape[:2], "int32")
        return keras.KerasTensor(x.shape, x.dtype), order

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio}


@keras.saving.register_keras_serializable(package="kerasbn")
class TokenRestoring(_LearnedTokens):
    """Puts the tokens `TokenMasking` kept back in their places, a learned mask token in the
    others: [kept tokens, restore] in, [N, tokens, dim] out."""

    def build(self, input_shape):
        self.mask_token = self.add_weight(name="mask_token", shape=(1, 1, input_shape[0][-1]),
                                          initializer=self.initializer,
                                          regularizer=self.regularizer)

    def call(self, inputs):
        x, restore = inputs
        tokens = restore.shape[1]
        if x.shape[1] == tokens:
            return ops.take_along_axis(x, restore[..., None], axis=1)
        masked = ops.broadcast_to(ops.cast(self.mask_token, x.dtype),
                                  (ops.shape(x)[0], tokens - x.shape[1], x.shape[2]))
        full = ops.concatenate([x, masked], axis=1)
        return ops.take_along_axis(full, restore[..., None], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[1][1], input_shape[0][-1])


@keras.saving.register_keras_serializable(package="kerasbn")
class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention as arcface_torch's Attention: one qkv projection without
    bias, softmax(q k^T / sqrt(head_dim)) v computed in float32, an output projection with
    bias."""

    def __init__(self, heads, kernel_initializer=TOKEN_INIT, kernel_regularizer=None,
                 bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(heads)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        dim = input_shape[-1]
        args = {"kernel_initializer": self.kernel_initializer,
                "kernel_regularizer": self.kernel_regularizer, "dtype": self.dtype_policy}
        self.qkv = keras.layers.Dense(3 * dim, use_bias=False, name="qkv", **args)
        self.proj = keras.layers.Dense(dim, bias_regularizer=self.bias_regularizer,
                                       name="proj", **args)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x):
        dim = x.shape[-1]
        head_dim = dim // self.heads
        qkv = ops.reshape(self.qkv(x), (ops.shape(x)[0], -1, 3, self.heads, head_dim))
        q, k, v = (ops.transpose(ops.cast(qkv[:, :, i], "float32"), (0, 2, 1, 3))
                   for i in range(3))
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * head_dim ** -0.5)
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)),
                          (ops.shape(x)[0], -1, dim))
        return self.proj(ops.cast(out, x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer)}


@keras.saving.register_keras_serializable(package="kerasbn")
class DropPath(_Seeded):
    """Stochastic depth: in training, a residual branch is dropped for a whole sample with
    probability `rate` and scaled by 1 / (1 - rate) where kept (timm's drop_path)."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)

    def call(self, x, training=False):
        if not training or not self.rate:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        kept = ops.floor(keep + keras.random.uniform(shape, seed=self.generator))
        return x / keep * ops.cast(kept, x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
