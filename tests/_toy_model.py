"""A tiny codec that honours the training contract, and smooth random patches to train it on."""
import math

import numpy as np
import tensorflow as tf

from keras_codec.training.loop import per_replica_batch_size


class ToyCodec(tf.keras.Model):
    """Two-layer conv autoencoder with a discretized-Gaussian rate on its latent.

    `nan_steps`: training calls (counted from 1) whose loss is NaN, to exercise the guard.
    """

    def __init__(self, config, channels=4, nan_steps=()):
        super().__init__()
        self.lmbda = config.train.lmbda
        self.nan_steps = tuple(nan_steps)
        self.encoder = tf.keras.Sequential([
            tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.Conv2D(channels, 3, padding="same"),
        ], name="encoder")
        self.decoder = tf.keras.Sequential([
            tf.keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.Conv2D(1, 3, padding="same"),
        ], name="decoder")
        self.log_scale = self.add_weight(name="log_scale", shape=(channels,), initializer="zeros",
                                         dtype=tf.float32)
        self.calls = tf.Variable(0, trainable=False, dtype=tf.int32, name="calls")

    def stage_variables(self, stage):
        if stage == "entropy":
            return [self.log_scale]
        return list(self.trainable_variables)

    def rd_terms(self, x, training):
        y = self.encoder(x)
        if training:
            y = y + tf.random.uniform(tf.shape(y), -0.5, 0.5, dtype=y.dtype)
        else:
            y = tf.round(y)
        x_hat = tf.cast(self.decoder(y), tf.float32)
        y = tf.cast(y, tf.float32)
        scale = tf.exp(self.log_scale) * math.sqrt(2.0)
        p = 0.5 * (tf.math.erf((y + 0.5) / scale) - tf.math.erf((y - 0.5) / scale))
        bits = tf.reduce_sum(-tf.math.log(tf.maximum(p, 1e-9))) / math.log(2.0)
        bpp = bits / tf.cast(tf.reduce_prod(tf.shape(x)), tf.float32)
        mse = tf.reduce_mean(tf.square(x - x_hat))
        loss = mse + self.lmbda * bpp
        if training and self.nan_steps:
            n = self.calls.assign_add(1)
            hit = tf.reduce_any(tf.equal(n, tf.constant(self.nan_steps, tf.int32)))
            loss = tf.where(hit, tf.constant(float("nan")), loss)
        psnr = -10.0 * tf.math.log(mse) / math.log(10.0)
        return {"loss": loss, "bpp": bpp, "mse": mse, "psnr": psnr}


def smooth_patches(n, size, seed):
    """`n` smooth random patches (n, size, size, 1) in [0, 1]: bilinear upsampling of 4x4 noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, (n, 4, 4, 1)).astype(np.float32)
    return tf.image.resize(coarse, (size, size), method="bilinear").numpy()


def dataset_fn_for(config, n=64):
    """A `dataset_fn` over `n` fixed patches, sharded per input pipeline, endless and seeded."""
    tc = config.train

    def dataset_fn(ctx):
        shard = ctx.input_pipeline_id if ctx is not None else 0
        data = smooth_patches(n, tc.patch_size, tc.seed * 1000 + shard)
        ds = tf.data.Dataset.from_tensor_slices(data).repeat()
        ds = ds.shuffle(n, seed=tc.seed + shard)
        return ds.batch(per_replica_batch_size(config, ctx), drop_remainder=True)

    return dataset_fn
