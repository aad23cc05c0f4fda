"""The `paper` configuration: the seed paper's CNN + DCT + fully connected autoencoder.

Every tile (``config.paper.tile`` square, one channel, values in [0, 1]) is coded
on its own into a fixed-size latent ``y`` of ``latent_dim`` values:

    analysis:  [Conv2D 3x3 + BatchNorm + ReLU + MaxPool 2x2] per entry of `filters`
               -> DCT2D(dct_block) -> Flatten -> Dense(dense_units, ReLU) -> Dense(latent_dim)
    synthesis: Dense(dense_units, ReLU) -> Dense(feature-map size) -> Reshape -> IDCT2D
               -> [Conv2DTranspose 3x3 stride 2 + BatchNorm + ReLU] per entry of
                  reversed(`filters`) -> Conv2D 3x3 to 1 channel -> sigmoid

``y`` goes through a factorized entropy bottleneck (tensorflow-compression's
``NoisyDeepFactorized`` prior, one density per latent dimension). Training uses
additive uniform noise; after training, `PaperCodec.build_tables` fixes integer
range-coding tables once, and coding uses them (and their quantization offsets)
from then on.

The architecture is reproduced to be measured, not tuned: a fixed-size latent per
tile cannot adapt its rate to the content.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from keras_codec.config import CodecConfig, PaperConfig
from keras_codec.layers.dct import DCT2D, IDCT2D

__all__ = ["PaperCodec", "build_paper", "analysis_transform", "synthesis_transform", "ms_ssim", "MSE_SCALE"]

# The loss is MSE_SCALE * mse + ssim_weight * (1 - MS-SSIM) + lmbda * bpp, with mse
# on [0, 1] data. At the usual slope of 6 dB per bit, the optimum sits where
# mse ~ lmbda / (2 ln 2 * MSE_SCALE): lmbda = 0.01 aims near 41 dB PSNR and every
# factor of 10 in lmbda moves the target by about 10 dB (0.001 -> 51 dB).
MSE_SCALE = 100.0

# MS-SSIM on small tiles: three scales (64 -> 32 -> 16 px) with the first three of
# the standard five weights (Wang et al. 2003), renormalized to sum to one.
MS_SSIM_WEIGHTS = tuple(w / sum((0.0448, 0.2856, 0.3001)) for w in (0.0448, 0.2856, 0.3001))
MS_SSIM_FILTER_SIZE = 11
MS_SSIM_SIGMA = 1.5

# Tiles per call of the coding graphs, to bound memory on large images.
_CODING_BATCH = 128


def _feature_shape(p: PaperConfig) -> tuple:
    """(H, W, C) of the encoder's last feature maps, after validating the config."""
    if not p.filters:
        raise ValueError("paper config: `filters` must list at least one convolution width.")
    multiple = 2 ** len(p.filters) * p.dct_block
    if p.tile % multiple or p.tile % 4:
        raise ValueError(
            f"paper config: tile {p.tile} must be a multiple of 2**len(filters) * dct_block = {multiple} "
            f"(each level halves the tile, then the DCT needs whole blocks) and of 4 (MS-SSIM scales)."
        )
    side = p.tile // 2 ** len(p.filters)
    return side, side, p.filters[-1]


def analysis_transform(p: PaperConfig) -> tf.keras.Model:
    """Functional encoder: (N, tile, tile, 1) in [0, 1] -> latent y (N, latent_dim)."""
    _feature_shape(p)
    x = inputs = tf.keras.Input((p.tile, p.tile, 1), name="tile")
    for i, f in enumerate(p.filters):
        # BatchNorm's beta is the bias.
        x = tf.keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = tf.keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = tf.keras.layers.ReLU(name=f"relu_{i}")(x)
        x = tf.keras.layers.MaxPool2D(2, name=f"pool_{i}")(x)
    x = DCT2D(p.dct_block, name="dct")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(p.dense_units, activation="relu", name="dense_0")(x)
    y = tf.keras.layers.Dense(p.latent_dim, name="latent")(x)
    return tf.keras.Model(inputs, y, name="analysis")


def synthesis_transform(p: PaperConfig) -> tf.keras.Model:
    """Functional decoder: quantized latent (N, latent_dim) -> tile (N, tile, tile, 1) in [0, 1]."""
    shape = _feature_shape(p)
    x = inputs = tf.keras.Input((p.latent_dim,), name="latent")
    x = tf.keras.layers.Dense(p.dense_units, activation="relu", name="dense_0")(x)
    x = tf.keras.layers.Dense(int(np.prod(shape)), name="dense_1")(x)
    x = tf.keras.layers.Reshape(shape, name="reshape")(x)
    x = IDCT2D(p.dct_block, name="idct")(x)
    for i, f in enumerate(reversed(p.filters)):
        x = tf.keras.layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", use_bias=False, name=f"deconv_{i}")(x)
        x = tf.keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = tf.keras.layers.ReLU(name=f"relu_{i}")(x)
    x = tf.keras.layers.Conv2D(1, 3, padding="same", name="conv_out")(x)
    x = tf.keras.layers.Activation("sigmoid", name="sigmoid")(x)
    return tf.keras.Model(inputs, x, name="synthesis")


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * coords**2 / sigma**2)
    g = np.outer(g, g)
    return (g / g.sum()).astype(np.float32).reshape(size, size, 1, 1)


def ms_ssim(x, y, filter_size: int = MS_SSIM_FILTER_SIZE, weights=MS_SSIM_WEIGHTS,
            sigma: float = MS_SSIM_SIGMA) -> tf.Tensor:
    """Per-image MS-SSIM of single-channel images in [0, 1] (data range 1).

    The same formula, window and constants as `tf.image.ssim_multiscale` (which it
    matches wherever every term is positive), but each scale's term is floored at
    1e-6 instead of clamped to 0 by a ReLU: the ReLU version has NaN gradients
    whenever a contrast-structure term is negative, as it is early in training.
    The window shrinks to fit the coarsest scale of small tiles.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.float32)
    coarsest = min(x.shape[1], x.shape[2]) // 2 ** (len(weights) - 1)
    window = tf.constant(_gaussian_window(min(filter_size, coarsest), sigma))
    c1, c2 = 0.01**2, 0.03**2

    def blur(t):
        return tf.nn.conv2d(t, window, strides=1, padding="VALID")

    terms = []
    for k in range(len(weights)):
        if k:
            x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
            y = tf.nn.avg_pool2d(y, 2, 2, "VALID")
        mx, my = blur(x), blur(y)
        mxy2 = 2.0 * mx * my
        luminance = (mxy2 + c1) / (mx**2 + my**2 + c1)
        cs_map = (2.0 * blur(x * y) - mxy2 + c2) / (blur(x**2 + y**2) - mx**2 - my**2 + c2)
        cs = tf.reduce_mean(cs_map, axis=(1, 2, 3))
        terms.append(cs if k < len(weights) - 1 else tf.reduce_mean(luminance * cs_map, axis=(1, 2, 3)))
    terms = tf.maximum(tf.stack(terms, axis=-1), 1e-6)
    return tf.reduce_prod(terms ** tf.constant(weights, tf.float32), axis=-1)


def to_tiles(x, tile: int) -> tf.Tensor:
    """Cut (B, H, W, 1) patches into (B * H//tile * W//tile, tile, tile, 1) tiles.

    Rows and columns beyond the last whole tile are dropped (bottom and right), so
    training patches should be tile multiples; patches already tile-sized pass through.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected patches of shape (batch, H, W, 1); got {tuple(x.shape)}.")
    h, w = x.shape[1], x.shape[2]
    if h == tile and w == tile:
        return x
    if (h is not None and h < tile) or (w is not None and w < tile):
        raise ValueError(f"patches of {h}x{w} are smaller than one {tile}x{tile} tile; use larger patches.")
    shape = tf.shape(x)
    rows, cols = shape[1] // tile, shape[2] // tile
    x = x[:, : rows * tile, : cols * tile, :]
    x = tf.reshape(x, (-1, rows, tile, cols, tile, 1))
    x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
    return tf.reshape(x, (-1, tile, tile, 1))


class PaperCodec(tf.keras.Model):
    """The seed paper's tile autoencoder with a factorized entropy bottleneck.

    Training: `rd_terms` (also `call`) gives rate and distortion. Coding:
    `build_tables` once after training, then `compress_tiles` / `decompress_tiles`
    (integer symbols, one row of `latent_dim` per tile) and `entropy_tables` for
    the range coder, or `encode_image` / `decode_image` for whole planes.
    """

    def __init__(self, config: CodecConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        p = config.paper
        self.tile = p.tile
        self.latent_dim = p.latent_dim
        self.analysis = analysis_transform(p)
        self.synthesis = synthesis_transform(p)
        self.prior = tfc.NoisyDeepFactorized(batch_shape=(p.latent_dim,))
        self.entropy_model = tfc.ContinuousBatchedEntropyModel(self.prior, coding_rank=1, compression=False)
        self._coder = None

    # -- training ---------------------------------------------------------------

    def rd_terms(self, x, training: bool = False) -> dict:
        """Rate and distortion of patches x (B, H, W, 1) in [0, 1], cut into tiles first.

        With training=True the latent gets uniform noise (differentiable rate bound);
        otherwise it is quantized like the coder does (with the fixed tables' offsets
        once `build_tables` has run). Returns scalars `loss`, `bpp`, `mse`, `psnr`, `ms_ssim`.
        """
        x = to_tiles(x, self.tile)
        y = self.analysis(x, training=training)
        if training:
            y_hat, bits = self.entropy_model(y, training=True)
        elif self._coder is None:
            y_hat, bits = self.entropy_model(y, training=False)
        else:
            y_hat = self._coder.quantize(y)
            bits = -tf.reduce_sum(self.prior.log_prob(y_hat), axis=-1) / tf.math.log(2.0)
        x_hat = self.synthesis(y_hat, training=training)

        num_pixels = tf.cast(tf.shape(x)[0] * self.tile * self.tile, tf.float32)
        bpp = tf.reduce_sum(bits) / num_pixels
        mse = tf.reduce_mean(tf.math.squared_difference(x, x_hat))
        # PSNR of the batch's mean squared error, peak 1.
        psnr = -10.0 * tf.math.log(mse) / tf.math.log(10.0)
        msssim = tf.reduce_mean(ms_ssim(x, x_hat))
        t = self.config.train
        loss = MSE_SCALE * mse + t.ssim_weight * (1.0 - msssim) + t.lmbda * bpp
        return {"loss": loss, "bpp": bpp, "mse": mse, "psnr": psnr, "ms_ssim": msssim}

    def call(self, x, training=None):
        return self.rd_terms(x, training=bool(training))

    def stage_variables(self, stage: str) -> list:
        """Trainable variables of a training stage: "entropy" (the prior only) or "joint" (all)."""
        if stage == "entropy":
            return list(self.prior.trainable_variables)
        if stage == "joint":
            return list(self.trainable_variables)
        raise ValueError(f"unknown training stage {stage!r}; choose 'entropy' or 'joint'.")

    # -- coding -------------------------------------------------------------------

    @property
    def tables_built(self) -> bool:
        return self._coder is not None

    def build_tables(self) -> None:
        """Fix the integer range-coding tables and quantization offsets from the current prior.

        Call once after training; coding uses these tables from then on. To restore a
        checkpoint that holds tables, call this on the fresh model first (it creates
        the table variables), then restore.
        """
        # The library estimates the prior's tails and median with an iterative
        # search; traced as a graph it takes a fraction of its eager time.
        @tf.function
        def tables():
            model = tfc.ContinuousBatchedEntropyModel(
                self.prior, coding_rank=1, compression=True, stateless=True)
            return model.cdf, model.cdf_offset, model.quantization_offset

        cdf, cdf_offset, offset = tables()
        self._coder = tfc.ContinuousBatchedEntropyModel(
            prior_shape=(self.latent_dim,), coding_rank=1, compression=True,
            cdf=cdf, cdf_offset=cdf_offset, quantization_offset=offset)
        spec = tf.TensorSpec((None, self.tile, self.tile, 1), tf.float32)
        self._compress_fn = tf.function(self._compress_graph, input_signature=[spec])
        self._decompress_fn = tf.function(
            self._decompress_graph, input_signature=[tf.TensorSpec((None, self.latent_dim), tf.int32)])
        self._reconstruct_fn = tf.function(self._reconstruct_graph, input_signature=[spec])

    def _require_tables(self):
        if self._coder is None:
            raise RuntimeError("the entropy tables are not built; call build_tables() after training first.")

    def _offset(self) -> tf.Tensor:
        offset = self._coder.quantization_offset
        return tf.zeros((self.latent_dim,), tf.float32) if offset is None else offset

    def _compress_graph(self, tiles):
        y = self.analysis(tiles, training=False)
        return tf.cast(tf.round(y - self._offset()), tf.int32)

    def _decompress_graph(self, symbols):
        y_hat = tf.cast(symbols, tf.float32) + self._offset()
        return self.synthesis(y_hat, training=False)

    def _reconstruct_graph(self, tiles):
        y = self.analysis(tiles, training=False)
        return self.synthesis(self._coder.quantize(y), training=False)

    def _check_tiles(self, tiles) -> np.ndarray:
        tiles = np.asarray(tiles, np.float32)
        if tiles.ndim != 4 or tiles.shape[1:] != (self.tile, self.tile, 1):
            raise ValueError(f"expected tiles of shape (N, {self.tile}, {self.tile}, 1); got {tiles.shape}.")
        return tiles

    def _batched(self, fn, array: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [fn(array[i:i + _CODING_BATCH]).numpy() for i in range(0, max(len(array), 1), _CODING_BATCH)])

    def compress_tiles(self, tiles) -> np.ndarray:
        """Integer symbols (N, latent_dim) int32 of tiles (N, tile, tile, 1): round(y - offset)."""
        self._require_tables()
        return self._batched(self._compress_fn, self._check_tiles(tiles))

    def decompress_tiles(self, symbols) -> np.ndarray:
        """Tiles (N, tile, tile, 1) float32 from the symbols of `compress_tiles`."""
        self._require_tables()
        symbols = np.asarray(symbols)
        if symbols.ndim != 2 or symbols.shape[1] != self.latent_dim or not np.issubdtype(symbols.dtype, np.integer):
            raise ValueError(f"expected integer symbols of shape (N, {self.latent_dim}); "
                             f"got {symbols.dtype} {symbols.shape}.")
        return self._batched(self._decompress_fn, symbols.astype(np.int32))

    def reconstruct(self, tiles) -> np.ndarray:
        """Deterministic forward pass with the coder's quantization (what a decoder will see)."""
        self._require_tables()
        return self._batched(self._reconstruct_fn, self._check_tiles(tiles))

    def entropy_tables(self) -> dict:
        """The coder's tables as numpy arrays, for a range coder outside TensorFlow.

        `cdf` (latent_dim, max_length) int32: row i holds `cdf_length[i]` entries of
        latent dimension i's quantized CDF, from 0 to 2**precision, padded with
        2**precision; its last interval is the overflow (escape) symbol. A symbol s
        of dimension i has table index s - `cdf_offset[i]`. `offset` (latent_dim,)
        float32 is the quantization offset: y_hat = s + offset.
        """
        self._require_tables()
        flat = self._coder.cdf.numpy()
        # The library's flat layout: per dimension, [-precision, cdf_0, ..., cdf_last].
        starts = np.flatnonzero(flat < 0)
        ends = np.append(starts[1:], flat.size)
        lengths = (ends - starts - 1).astype(np.int32)
        precision = int(-flat[0])
        cdf = np.full((starts.size, lengths.max()), 1 << precision, np.int32)
        for i, (s, e) in enumerate(zip(starts, ends)):
            cdf[i, : e - s - 1] = flat[s + 1:e]
        return {
            "cdf": cdf,
            "cdf_length": lengths,
            "cdf_offset": self._coder.cdf_offset.numpy().astype(np.int32),
            "offset": self._offset().numpy().astype(np.float32),
            "precision": np.int32(precision),
        }

    def estimated_bits(self, symbols) -> np.ndarray:
        """Bits per tile (N,) of coding `symbols` with `entropy_tables()`.

        In-range symbols cost -log2 of their table probability. An out-of-range
        symbol costs the escape symbol plus a variable-length code of its distance,
        modelled on tensorflow-compression's range coder: zigzag-mapped distance
        z, sent as a count of 4-bit digits (4 bits per 15) then the digits.
        """
        t = self.entropy_tables()
        symbols = np.asarray(symbols, np.int64)
        index = symbols - t["cdf_offset"]
        escape = (t["cdf_length"] - 2).astype(np.int64)
        low, high = index < 0, index >= escape
        clipped = np.where(low | high, escape, index)
        dims = np.arange(symbols.shape[1])
        freq = t["cdf"][dims, clipped + 1].astype(np.int64) - t["cdf"][dims, clipped]
        bits = float(t["precision"]) - np.log2(freq)
        z = np.where(low, -2 * index - 1, np.where(high, 2 * (index - escape), 0))
        digits = np.where(z > 0, np.floor(np.log2(np.maximum(z, 1)) / 4) + 1, 0)
        bits = bits + np.where(low | high, 4 * (digits // 15 + 1) + 4 * digits, 0)
        return bits.sum(axis=1)

    # -- whole images ---------------------------------------------------------------

    def encode_image(self, plane) -> tuple:
        """Symbols of a 2-D plane in [0, 1]: (symbols (N, latent_dim), grid (rows, cols), pad (bottom, right)).

        The plane is padded by reflection at the bottom and right to whole tiles;
        tiles are in row-major order.
        """
        plane = np.asarray(plane, np.float32)
        if plane.ndim != 2 or plane.size == 0:
            raise ValueError(f"expected a non-empty 2-D plane; got shape {plane.shape}.")
        t = self.tile
        rows, cols = math.ceil(plane.shape[0] / t), math.ceil(plane.shape[1] / t)
        pad = (rows * t - plane.shape[0], cols * t - plane.shape[1])
        padded = np.pad(plane, ((0, pad[0]), (0, pad[1])), mode="reflect")
        tiles = padded.reshape(rows, t, cols, t).transpose(0, 2, 1, 3).reshape(-1, t, t, 1)
        return self.compress_tiles(tiles), (rows, cols), pad

    def decode_image(self, symbols, grid, pad) -> np.ndarray:
        """The 2-D float32 plane of `encode_image`'s outputs, cropped back to its size."""
        rows, cols = map(int, grid)
        if len(symbols) != rows * cols:
            raise ValueError(f"a {rows}x{cols} tile grid needs {rows * cols} rows of symbols; got {len(symbols)}.")
        t = self.tile
        tiles = self.decompress_tiles(symbols)
        plane = tiles.reshape(rows, cols, t, t).transpose(0, 2, 1, 3).reshape(rows * t, cols * t)
        return plane[: rows * t - int(pad[0]), : cols * t - int(pad[1])]


def build_paper(config: CodecConfig) -> PaperCodec:
    """The `paper` model for a config (its `paper` and `train` parts are used)."""
    return PaperCodec(config, name="paper_codec")
