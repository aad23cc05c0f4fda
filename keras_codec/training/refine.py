"""Train the learned transform refinement jointly with the context entropy model, by rate + distortion.

    python -m keras_codec.training.refine --bundle edge_runtime/models/default \\
        --out runs/refine --steps 4000 [--bundle-out runs/default_refined]

The graph is the codec of one plane, on clean [0, 1] patches of the train split
(`data.pipeline.make_dataset`) at a random quality level per patch:

    lifting DWT with the refinement's predict steps (keras_codec.models.refine, zero at start)
    -> divide by the step -> deadzone quantizer (straight-through) -> dequantize (recon_bias)
    -> refined inverse DWT (its predictors see the decoder's quantized low bands)

and the rate of every detail coefficient comes from tensorflow-compression's
`LocationScaleIndexedEntropyModel` (a noisy Laplacian per scale index, the family of the
coder's tables) whose index is the context model computed in the graph exactly as
edge_runtime.context computes it: magnitude codes of the parent, its 3x3 neighbourhood, the
sibling subbands and the decoded spatial neighbours of the polyphase pass, weighted per
(level, orientation, phase). Those weights start from the bundle's fitted integer weights
and are trained too. The loss, per patch, is

    bits / pixels + LAMBDA · MSE / step²

the codec's own rate-distortion trade-off at every quality (the encoder's RDO weighs
D / step² + 0.12 · bits, so LAMBDA = 1 / 0.12), mean over the batch. The LL band's bits are
left out (it is a few hundred coefficients coded around a prediction, untouched by the
refinement).

At the end (`--bundle-out`) a copy of the bundle gets `refine.npz` and a `refine` manifest
entry; its context weights are then refitted on the refined coefficients by maximum
likelihood and its tables relearned (the stage-1 fit of keras_codec.training.fit_default, started
from the refined transform), since the coder's quantizer and per-pass offsets are what the
in-graph model only approximates; the refit gives each (level, orientation, phase) group
of the context model CONTEXT_HIDDEN ReLU units on top of its linear weights
(keras_codec.training.context_fit.fit_group_mlp; integer-exact on the edge). The post-filter and the
TFLite graphs follow as in checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from data.pipeline import make_dataset
from edge_runtime import context as ctx
from edge_runtime.bundle import load_bundle, save_bundle
from edge_runtime.codec import levels_for, quantizer_step
from edge_runtime.entropy import scale_grid
from edge_runtime.refine import REFINE_FILE
from keras_codec.config import CodecConfig, bundle_training_config
from keras_codec.models.refine import build_refinement, load_refinement, refine_arch, save_refinement
from keras_codec.models.wavelet import tf_deadzone, tf_dequantize
from keras_codec.training.fit_default import refit_context
from keras_codec.training.loop import copy_bundle, last_logged_row, train
from keras_codec.training.recipe import Refine

__all__ = ["RefineTrainer", "train_refine", "LAMBDA"]

LAMBDA = 1.0 / 0.12
CONTEXT_HIDDEN = Refine.context_hidden
BATCH_SIZE = 8
"""Batch of the single-stage commands (this module's `python -m`, `keras-codec train --stage refine`), half
the recipe's `Refine.batch_size`: a recipe run passes its own."""
TRAIN_QUALITIES = tuple(range(6, 23))  # about 24-56 dB: the range the codec is used at


def _shift(a, dr: int, dc: int):
    """a[:, i+dr, j+dc] with reflected borders (edge_runtime.context.shifted), a (B, h, w)."""
    p = tf.pad(a, [[0, 0], [1, 1], [1, 1]], mode="REFLECT")
    h, w = tf.shape(a)[1], tf.shape(a)[2]
    return p[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]


def _codes(q):
    """edge_runtime.context.mag_code in float: round(16·log2(1 + |q|))."""
    return tf.round(16.0 * tf.math.log(1.0 + tf.abs(q)) / np.log(2.0))


def _phase_masks(shape):
    r = tf.math.floormod(tf.range(shape[1]), 2)[:, None]
    c = tf.math.floormod(tf.range(shape[2]), 2)[None, :]
    p0 = tf.logical_and(r == 0, c == 0)
    p1 = tf.logical_and(r == 1, c == 1)
    return p0[None], p1[None]


def context_features(codes, parent_codes, sibling_codes):
    """The 7 features of edge_runtime.context.detail_features for every position, per phase.

    Returns (features (B, h, w, 7) as phase 1 and 2 see them, phase-0 mask, phase-1 mask);
    phase 0 positions have zero spatial features.
    """
    shape = tf.shape(codes)
    zeros = tf.zeros_like(codes)
    if parent_codes is None:
        par = par_nb = zeros
    else:
        nb = tf.add_n([_shift(parent_codes, dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        nb = tf.floor(nb / 9.0)
        up = lambda a: tf.repeat(tf.repeat(a, 2, axis=1), 2, axis=2)
        par, par_nb = up(parent_codes), up(nb)
    sib = list(sibling_codes) + [zeros] * (2 - len(sibling_codes))
    diag = tf.stack([_shift(codes, dr, dc) for dr, dc in ctx.DIAG])
    direct = tf.stack([_shift(codes, dr, dc) for dr, dc in ctx.DIRECT])
    p0, p1 = _phase_masks(shape)
    sp_sum = tf.where(p0, zeros, tf.where(p1, tf.reduce_sum(diag, 0), tf.reduce_sum(direct, 0)))
    sp_max = tf.where(p0, zeros, tf.where(p1, tf.reduce_max(diag, 0), tf.reduce_max(direct, 0)))
    f = tf.stack([tf.ones_like(codes), par, par_nb, sib[0], sib[1], sp_sum, sp_max], axis=-1)
    return f, p0, p1


class RefineTrainer(tf.keras.Model):
    """Refinement + in-graph context entropy model, honouring keras_codec.training.loop's rd_terms contract."""

    def __init__(self, config: CodecConfig, arch: dict, context_detail: np.ndarray, deadzone: float,
                 recon_bias: float, levels: int):
        super().__init__(name="refine_trainer")
        w = config.wavelet
        self.levels = levels_for(config.train.patch_size, config.train.patch_size, levels)
        self.refine = build_refinement(w.wavelet, arch["max_levels"], w.mode, arch["channels"], arch["layers"])
        self.deadzone, self.recon_bias = float(deadzone), float(recon_bias)
        self.steps_table = tf.constant([quantizer_step(q) for q in TRAIN_QUALITIES], tf.float32)
        self.num_scales = int(w.num_scales)
        init = np.asarray(context_detail, np.float64) / float(1 << ctx.SHIFT)
        self.theta = tf.Variable(init.astype(np.float32), name="context_theta")
        grid = np.log(scale_grid(w.num_scales, w.scale_min, w.scale_max))
        log_min, delta = float(grid[0]), float(grid[1] - grid[0])
        self.entropy_model = tfc.LocationScaleIndexedEntropyModel(
            tfc.NoisyLaplace, w.num_scales, lambda i: tf.exp(log_min + delta * i), coding_rank=1)

    def stage_variables(self, stage):
        return self.refine.trainable_variables + [self.theta]

    def _band_bits(self, y, q, parent_q, sibling_q, level: int, o: int):
        """Bits of one detail band y (B, h, w) in step units, with its deadzone symbols q."""
        f, p0, p1 = context_features(_codes(q), None if parent_q is None else _codes(parent_q),
                                     [_codes(s) for s in sibling_q])
        theta = self.theta[min(level, self.theta.shape[0]) - 1, o]      # (3 phases, 7)
        idx = tf.einsum("bhwf,pf->bhwp", tf.stop_gradient(f), theta)
        idx = tf.where(p0, idx[..., 0], tf.where(p1, idx[..., 1], idx[..., 2]))
        idx = tf.clip_by_value(idx, 0.0, float(self.num_scales - 1))
        n = tf.shape(y)[0]
        _, bits = self.entropy_model(tf.reshape(y, [n, -1]), tf.reshape(idx, [n, -1]), training=True)
        return bits

    def rd_terms(self, x, training=False):
        n = tf.shape(x)[0]
        if training:
            qi = tf.random.uniform([n], 0, len(TRAIN_QUALITIES), dtype=tf.int32)
        else:
            qi = tf.math.floormod(tf.range(n), len(TRAIN_QUALITIES))
        step = tf.gather(self.steps_table, qi)
        s = tf.reshape(step, [-1, 1, 1, 1])
        bands = self.refine.analysis(x, self.levels)
        ll = bands[0] / s
        deq = [(ll + tf.stop_gradient(tf.round(ll) - ll)) * s]
        ys, qs = [], []
        for b in bands[1:]:
            y = b / s
            q = tf.stop_gradient(tf_deadzone(y, self.deadzone))
            yq = tf_dequantize(q, self.recon_bias)
            deq.append((y + tf.stop_gradient(yq - y)) * s)
            ys.append(y)
            qs.append(q)
        bits = tf.zeros([n])
        for k in range(self.levels):
            level = self.levels - k
            for o in range(3):
                parent = qs[k - 1][..., o] if k > 0 else None
                bits += self._band_bits(ys[k][..., o], qs[k][..., o], parent, [qs[k][..., j] for j in range(o)],
                                        level, o)
        x_hat = self.refine.synthesis(deq, self.levels)
        pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
        bpp = bits / pixels
        mse = tf.reduce_mean(tf.square(x_hat - x), axis=[1, 2, 3])
        floor = 1e-10
        return {"loss": tf.reduce_mean(bpp + LAMBDA * mse / tf.square(step)), "bpp": tf.reduce_mean(bpp),
                "mse": tf.reduce_mean(mse),
                "psnr": tf.reduce_mean(-10.0 * tf.math.log(mse + floor) / tf.math.log(10.0)),
                "d_steps": tf.reduce_mean(mse / tf.square(step))}

    def call(self, x, training=False):
        return self.rd_terms(x, training)["loss"]


def _training_config(manifest: dict, seed: int, batch_size: int, learning_rate: float, patch_size: int,
                     channels: int) -> CodecConfig:
    return bundle_training_config(manifest, seed=seed, batch_size=batch_size, learning_rate=learning_rate,
                                  patch_size=patch_size, lmbda=1.0 / LAMBDA, wavelet={"refine_channels": channels})


def _trainer(config: CodecConfig, arch: dict, detail: np.ndarray, init=None) -> RefineTrainer:
    w = config.wavelet
    model = RefineTrainer(config, arch, detail, w.deadzone, w.recon_bias, w.levels)
    if init is not None:  # start from these refinement weights (a checkpoint, when there is one, overrides them)
        model.refine.set_weights(init)
    return model


def restore_trainer(config: CodecConfig, arch: dict, detail: np.ndarray, out_dir: Path) -> RefineTrainer:
    model = _trainer(config, arch, detail)
    model.rd_terms(tf.zeros((1, config.train.patch_size, config.train.patch_size, 1)))
    latest = tf.train.latest_checkpoint(str(out_dir / "ckpt"))
    if latest is None:
        raise FileNotFoundError(f"{out_dir}: no checkpoint to take the refinement from")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return model


def write_refined_bundle(bundle_dir, bundle_out, weights_path, entry: dict, refit: bool = True,
                         context_hidden: int = CONTEXT_HIDDEN, progress=print, refit_options=None) -> Path:
    """Copy the bundle with the refinement; refit its context weights and tables on the refined transform
    (`refit_options`: keyword arguments of keras_codec.training.fit_default.refit_context, e.g. images)."""
    def update(manifest):
        manifest["refine"] = entry
        manifest["config"]["wavelet"]["refine_channels"] = entry["channels"]

    dst = copy_bundle(bundle_dir, bundle_out, {REFINE_FILE: weights_path}, update)
    if refit:
        bundle = load_bundle(dst)
        weights, tables, info = refit_context(bundle, hidden=context_hidden, progress=progress,
                                              **(refit_options or {}))
        manifest = dict(bundle.manifest)
        manifest["training"] = {**manifest.get("training", {}), "refit_after_refine": info}
        save_bundle(dst, {k: v for k, v in manifest.items() if k != "format"}, weights, tables)
    return dst


def _run_wall_seconds(out_dir: Path, summary: dict) -> float:
    """Training wall time of the whole run (log.csv is cumulative across resumes), not of this call."""
    return round(float(last_logged_row(out_dir).get("wall_s", summary.get("wall_s", 0.0))), 1)


def train_refine(bundle_dir, out_dir, steps: int, seed: int = 0, *, bundle_out=None, channels: int = Refine.channels,
                 layers: int = Refine.layers, batch_size: int = BATCH_SIZE, learning_rate: float = Refine.learning_rate,
                 patch_size: int = Refine.patch_size,
                 log_every: int = 100, ckpt_every: int = 500, progress: bool = True,
                 context_hidden: int = CONTEXT_HIDDEN, images=None, strategy=None, init_from_bundle: bool = False,
                 refit_options=None, refit: bool = True) -> dict:
    """Train (or resume) the refinement in `out_dir`, save `<out_dir>/refine.npz`, optionally a refined bundle.

    `images`: Image records to draw the patches from instead of the corpus train split (pass the same
    pairs to the refit through `refit_options={"images": ...}`); `strategy`: a tf.distribute strategy
    (`batch_size` is then the global batch); `init_from_bundle`: start from the bundle's own refinement;
    `refit`: refit the context model and tables of the refined bundle (else it keeps the bundle's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    codec = manifest["codec"]
    arch = refine_arch(channels, layers, codec.get("wavelet", "cdf97"), int(codec["levels"]))
    arch_path = out_dir / "refine_arch.json"
    if arch_path.exists() and json.loads(arch_path.read_text()) != arch:
        raise ValueError(f"{arch_path} holds another architecture ({arch_path.read_text().strip()}); "
                         f"resume with the same one or train into a new out_dir")
    arch_path.write_text(json.dumps(arch, sort_keys=True) + "\n")
    config = _training_config(manifest, seed, batch_size, learning_rate, patch_size, channels)
    detail = bundle.coding.weights.detail
    init = None
    if init_from_bundle:
        r0 = load_refinement(bundle, codec.get("wavelet", "cdf97"))
        if r0 is None or {k: manifest["refine"].get(k) for k in arch} != arch:
            raise ValueError(f"{bundle_dir}: init_from_bundle needs a refinement of the same architecture {arch}")
        init = r0.get_weights()

    def dataset_fn(ctx):
        return make_dataset(images, split="train", patch_size=patch_size, batch_size=batch_size, seed=seed,
                            scale=None, input_context=ctx)

    summary = train(lambda c: _trainer(c, arch, detail, init), config, dataset_fn, str(out_dir), steps,
                    log_every=log_every, ckpt_every=ckpt_every, progress=progress, strategy=strategy)
    model = restore_trainer(config, arch, detail, out_dir)
    weights = out_dir / REFINE_FILE
    save_refinement(model.refine, weights)
    entry = {**arch, "file": REFINE_FILE, "steps": int(summary["step"]), "seed": seed, "batch_size": batch_size,
             "patch_size": patch_size, "learning_rate": learning_rate, "lambda": LAMBDA,
             "train_qualities": [TRAIN_QUALITIES[0], TRAIN_QUALITIES[-1]], "split": "train",
             "wall_seconds": _run_wall_seconds(out_dir, summary),
             "command": f"python -m keras_codec.training.refine --bundle {bundle_dir} --out {out_dir} --steps {steps} "
                        f"--seed {seed} --batch-size {batch_size} --channels {_channels_text(channels)} --layers {layers} "
                        f"--lr {learning_rate} --patch-size {patch_size} --context-hidden {context_hidden}",
             "context_hidden": context_hidden}
    (out_dir / "refine_entry.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    if bundle_out is not None:
        write_refined_bundle(bundle_dir, bundle_out, weights, entry, refit=refit, context_hidden=context_hidden,
                             progress=print if progress else (lambda *_: 0), refit_options=refit_options)
    return {"summary": summary, "entry": entry, "weights": str(weights)}


def _channels_text(channels) -> str:
    return str(channels) if isinstance(channels, int) else ",".join(map(str, channels))


def _channels_arg(text: str):
    """--channels: "8" (every level) or "4,8,8,8,8,8,8" (per level, finest first)."""
    try:
        widths = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a width (8) or one per level (4,8,8,8,8,8,8)") from None
    return widths[0] if len(widths) == 1 else widths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m keras_codec.training.refine", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="edge_runtime/models/default")
    ap.add_argument("--out", default="runs/refine")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle-out", default=None, help="copy of the bundle with the refinement (e.g. runs/refined)")
    ap.add_argument("--channels", type=_channels_arg, default=Refine.channels,
                    help="the predictors' width: one for every level, or one per level finest first (4,8,8,8,8,8,8)")
    ap.add_argument("--layers", type=int, default=Refine.layers)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--patch-size", type=int, default=Refine.patch_size)
    ap.add_argument("--lr", type=float, default=Refine.learning_rate)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--context-hidden", type=int, default=CONTEXT_HIDDEN,
                    help="ReLU units per group of the refitted context model (0 = linear)")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = train_refine(a.bundle, a.out, a.steps, a.seed, bundle_out=a.bundle_out, channels=a.channels,
                       layers=a.layers, batch_size=a.batch_size, learning_rate=a.lr, patch_size=a.patch_size,
                       log_every=a.log_every, context_hidden=a.context_hidden)
    print(json.dumps(res["entry"], indent=2, sort_keys=True))
    print(f"done in {time.time() - t0:.0f} s; weights {res['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
