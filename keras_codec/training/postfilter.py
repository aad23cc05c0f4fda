"""Train the decoder post-filter of the `default` model on the CPU, behind the real wavelet codec.

    python -m keras_codec.training.postfilter --bundle edge_runtime/models/default \\
        --out runs/postfilter --steps 6000 [--bundle-out runs/default_pf]

Training pairs come from the codec's own path, without entropy coding: clean [0, 1] patches of
the train split (`data.pipeline.make_dataset`, rotations and mirrors, no resampling so the
patches keep the sensor's own texture), a random quality level per patch, the forward DWT
(the same DWT2D layer the coder uses, levels = levels_for(P, P, bundle levels)), division by
the step, deadzone rounding with the bundle's `codec` parameters (plain rounding for LL, as
the encoder does), dequantization with `recon_bias`, inverse DWT. The encoder's
rate-distortion optimization (which lowers a few coefficients toward zero) is skipped, so
training sees slightly less distortion than real streams carry.

The loss is the MSE in quantizer-step units, mean over patches of MSE_i / step_i², so every
quality weighs the same in decibels (a plain MSE would be dominated by quality 1, whose step
is 12.6x that of quality 12). `mse` and `psnr` are logged in normalized units; `gain_db` is
the mean PSNR gain over the unfiltered decode. The rate is untouched (`bpp` = 0).

The run is resumable (`keras_codec.training.loop.train`). At the end the weights go to
`<out>/postfilter.npz`, the gain is measured through the real codec on train images, and
with `--bundle-out` a copy of the bundle gets the weights and a `postfilter` manifest entry.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from data.corpus import corpus, load
from data.pipeline import make_dataset
from edge_runtime.bundle import load_bundle
from edge_runtime.codec import QUALITY_LEVELS, decode_image, encode_image, levels_for, quantizer_step
from keras_codec.config import CodecConfig, bundle_training_config
from keras_codec.evaluation import metrics
from keras_codec.layers import DWT2D, IDWT2D
from keras_codec.models.default import DefaultCodec
from keras_codec.models.refine import load_refinement
from keras_codec.models.wavelet import (POSTFILTER_FILE, build_postfilter, load_postfilter, postfilter_arch,
                                        save_postfilter, tf_deadzone, tf_dequantize)
from keras_codec.training.loop import copy_bundle, last_logged_row, train
from keras_codec.training.recipe import PostFilter

__all__ = ["PostFilterTrainer", "train_postfilter", "measure_gain", "GAIN_IMAGES", "GAIN_QUALITIES"]

GAIN_IMAGES = ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm")
GAIN_QUALITIES = (2, 6, 10)
BATCH_SIZE = 8
"""Batch of this module's `python -m` when --batch-size is not given, half the recipe's `PostFilter.batch_size`:
a recipe run passes its own."""


class PostFilterTrainer(tf.keras.Model):
    """The post-filter behind a simulated codec, honouring `keras_codec.training.loop`'s rd_terms contract."""

    def __init__(self, config: CodecConfig, arch: dict, deadzone: float, recon_bias: float, levels: int,
                 refine=None):
        super().__init__(name="postfilter_trainer")
        w = config.wavelet
        self.levels = levels_for(config.train.patch_size, config.train.patch_size, levels)
        if refine is not None:  # the bundle's learned lifting refinement, frozen
            refine.trainable = False
            self.dwt = lambda x: refine.analysis(x, self.levels)
            self.idwt = lambda bands: refine.synthesis(bands, self.levels)
        else:
            self.dwt = DWT2D(w.wavelet, self.levels, w.mode)
            self.idwt = IDWT2D(w.wavelet, self.levels, w.mode)
        self.refine = refine
        self.deadzone, self.recon_bias = float(deadzone), float(recon_bias)
        self.steps_table = tf.constant([quantizer_step(q) for q in QUALITY_LEVELS], tf.float32)
        self.postfilter = build_postfilter(w, arch=arch)

    def decoded(self, x, step):
        """The codec's reconstruction of x (B, P, P, 1) at per-patch steps (B,), entropy coding aside."""
        s = tf.reshape(step, [-1, 1, 1, 1])
        bands = self.dwt(x)
        out = [tf.round(bands[0] / s) * s]
        for b in bands[1:]:
            out.append(tf_dequantize(tf_deadzone(b / s, self.deadzone), self.recon_bias) * s)
        return tf.stop_gradient(self.idwt(out))

    def rd_terms(self, x, training=False):
        n = tf.shape(x)[0]
        if training:
            qi = tf.random.uniform([n], 0, len(QUALITY_LEVELS), dtype=tf.int32)
        else:
            qi = tf.math.floormod(tf.range(n), len(QUALITY_LEVELS))
        step = tf.gather(self.steps_table, qi)
        y = self.decoded(x, step)
        out = self.postfilter([y, tf.math.log(step[:, None]) / tf.math.log(10.0)], training=training)
        mse = tf.reduce_mean(tf.square(out - x), axis=[1, 2, 3])
        mse_in = tf.reduce_mean(tf.square(y - x), axis=[1, 2, 3])
        floor = 1e-10
        return {"loss": tf.reduce_mean(mse / tf.square(step)), "bpp": tf.constant(0.0),
                "mse": tf.reduce_mean(mse),
                "psnr": tf.reduce_mean(-10.0 * tf.math.log(mse + floor) / tf.math.log(10.0)),
                "gain_db": tf.reduce_mean(10.0 * (tf.math.log(mse_in + floor) - tf.math.log(mse + floor))
                                          / tf.math.log(10.0))}

    def call(self, x, training=False):
        return self.rd_terms(x, training)["loss"]


def _training_config(manifest: dict, arch: dict, seed: int, batch_size: int, learning_rate: float,
                     patch_size: int) -> CodecConfig:
    return bundle_training_config(manifest, seed=seed, batch_size=batch_size, learning_rate=learning_rate,
                                  patch_size=patch_size, lmbda=0.0,
                                  wavelet={"postfilter_channels": arch["channels"], "postfilter_layers": arch["layers"]})


def _trainer_for(config: CodecConfig, arch: dict, refine=None, init=None) -> PostFilterTrainer:
    w = config.wavelet
    model = PostFilterTrainer(config, arch, w.deadzone, w.recon_bias, w.levels, refine)
    if init is not None:  # start from these post-filter weights (a checkpoint, when there is one, overrides them)
        model.postfilter.set_weights(init)
    return model


def _restore_postfilter(config: CodecConfig, arch: dict, out_dir: Path, refine=None) -> tf.keras.Model:
    model = _trainer_for(config, arch, refine)
    model.rd_terms(tf.zeros((1, config.train.patch_size, config.train.patch_size, 1)))
    latest = tf.train.latest_checkpoint(str(out_dir / "ckpt"))
    if latest is None:
        raise FileNotFoundError(f"{out_dir}: no checkpoint to take the post-filter from")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return model.postfilter


def measure_gain(bundle_dir, postfilter, images=GAIN_IMAGES, qualities=GAIN_QUALITIES,
                 progress=print, sources=None) -> dict:
    """PSNR with and without the post-filter through the real coder (same bytes), on train images only:
    the corpus train images named in `images`, or `sources` ((name, Image) pairs) when given."""
    bundle = load_bundle(bundle_dir)
    plain = DefaultCodec.from_bundle(bundle, postfilter=None).coder
    filtered = DefaultCodec.from_bundle(bundle, postfilter=postfilter).coder
    if sources is None:
        items = {it.name: it for it in corpus("train")}
        sources = [(name, load(items[name])) for name in images if name in items]
    images = [name for name, _ in sources]
    rows = []
    for name, img in sources:
        bits = 8 * img.pixels.dtype.itemsize
        for q in qualities:
            data = encode_image(img, coder=plain, model_id=bundle.model_id, quality=q)
            a, _ = decode_image(data, coder=plain, model_ids=[bundle.model_id])
            b, _ = decode_image(data, coder=filtered, model_ids=[bundle.model_id])
            ma = metrics.evaluate(img.pixels, a.pixels, len(data), img.bits_stored, bits)
            mb = metrics.evaluate(img.pixels, b.pixels, len(data), img.bits_stored, bits)
            row = {"image": name, "quality": q, "bpp": ma["bpp"], "psnr": ma["psnr"], "psnr_pf": mb["psnr"],
                   "gain_db": mb["psnr"] - ma["psnr"]}
            rows.append(row)
            progress(f"{name:22s} q{q:<2d} {row['bpp']:6.3f} bpp  {row['psnr']:6.2f} -> {row['psnr_pf']:6.2f} dB "
                     f"({row['gain_db']:+.2f})")
    by_q = {int(q): float(np.mean([r["gain_db"] for r in rows if r["quality"] == q])) for q in qualities}
    return {"images": list(images), "qualities": list(qualities), "mean_gain_db": by_q, "rows": rows}


def write_bundle_copy(bundle_dir, bundle_out, weights_path, entry: dict) -> Path:
    """Copy `bundle_dir` to `bundle_out` with the post-filter weights and its manifest entry (train.copy_bundle)."""
    def update(manifest):
        manifest["postfilter"] = entry
        manifest["config"]["wavelet"]["postfilter_channels"] = entry["architecture"]["channels"]
        manifest["config"]["wavelet"]["postfilter_layers"] = entry["architecture"]["layers"]

    return copy_bundle(bundle_dir, bundle_out, {POSTFILTER_FILE: weights_path}, update)


def train_postfilter(bundle_dir, out_dir, steps: int, seed: int = 0, *, bundle_out=None,
                     channels: int = PostFilter.channels, layers: int = PostFilter.layers,
                     input_scaling: str = PostFilter.input_scaling, batch_size: int = BATCH_SIZE,
                     learning_rate: float = PostFilter.learning_rate, patch_size: int = PostFilter.patch_size,
                     log_every: int = 100,
                     ckpt_every: int = 500, measure: bool = True, progress: bool = True,
                     init_from_bundle: bool = False, images=None, gain_sources=None, strategy=None) -> dict:
    """Train (or resume) the post-filter in `out_dir`, save `<out_dir>/postfilter.npz`, optionally a bundle copy.

    `images`: Image records to draw the patches from instead of the corpus train split; `gain_sources`:
    (name, Image) pairs to measure the gain on (measure_gain); `strategy`: a tf.distribute strategy
    (keras_codec.training.loop.train; `batch_size` is then the global batch)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    cfg0 = CodecConfig.from_dict(manifest["config"])
    arch = postfilter_arch(cfg0.wavelet, channels, layers, input_scaling)
    arch_path = out_dir / "postfilter_arch.json"
    if arch_path.exists() and json.loads(arch_path.read_text()) != arch:
        raise ValueError(f"{arch_path} holds another architecture ({arch_path.read_text().strip()}); "
                         f"resume with the same one or train into a new out_dir")
    arch_path.write_text(json.dumps(arch, sort_keys=True) + "\n")
    config = _training_config(manifest, arch, seed, batch_size, learning_rate, patch_size)
    refine = load_refinement(bundle, config.wavelet.wavelet)
    init = None
    if init_from_bundle:
        pf0 = load_postfilter(bundle, config.wavelet.wavelet)
        if pf0 is None or manifest["postfilter"]["architecture"] != arch:
            raise ValueError(f"{bundle_dir}: --init-from-bundle needs a post-filter of the same architecture {arch}")
        init = pf0.get_weights()

    def dataset_fn(ctx):
        return make_dataset(images, split="train", patch_size=patch_size, batch_size=batch_size, seed=seed,
                            scale=None, input_context=ctx)

    summary = train(lambda c: _trainer_for(c, arch, refine, init), config, dataset_fn, str(out_dir), steps,
                    log_every=log_every, ckpt_every=ckpt_every, progress=progress, strategy=strategy)
    pf = _restore_postfilter(config, arch, out_dir, refine)
    weights = out_dir / POSTFILTER_FILE
    save_postfilter(pf, weights)
    last = last_logged_row(out_dir)
    entry = {"file": POSTFILTER_FILE, "architecture": arch, "wavelet": config.wavelet.wavelet,
             "steps": int(summary["step"]), "seed": seed, "batch_size": batch_size, "patch_size": patch_size,
             "learning_rate": learning_rate, "wall_seconds": float(last.get("wall_s", summary["wall_s"])),
             "trained_with": {"deadzone": config.wavelet.deadzone, "recon_bias": config.wavelet.recon_bias,
                              "rdo": False, "split": "train"},
             "train_psnr": float(last.get("psnr", "nan")) if last else None,
             "command": f"python -m keras_codec.training.postfilter --bundle {bundle_dir} --out {out_dir} "
                        f"--steps {steps} --seed {seed} --batch-size {batch_size} --channels {arch['channels']} "
                        f"--layers {arch['layers']} --input-scaling {arch['input_scaling']} --lr {learning_rate}"
                        + (" --init-from-bundle" if init_from_bundle else "")}
    if init_from_bundle:
        entry["initialized_from"] = manifest["postfilter"].get("command", str(bundle_dir))
    if measure:
        gain = measure_gain(bundle_dir, pf, progress=print if progress else (lambda *_: None), sources=gain_sources)
        entry["measured_gain_db"] = {"images": gain["images"], "by_quality": gain["mean_gain_db"]}
        (out_dir / "gain.json").write_text(json.dumps(gain, indent=2) + "\n")
    (out_dir / "postfilter_entry.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    if bundle_out is not None:
        write_bundle_copy(bundle_dir, bundle_out, weights, entry)
    return {"summary": summary, "entry": entry, "weights": str(weights)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m keras_codec.training.postfilter", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="edge_runtime/models/default")
    ap.add_argument("--out", default="runs/postfilter")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle-out", default=None, help="copy of the bundle with the post-filter (e.g. runs/default_pf)")
    ap.add_argument("--channels", type=int, default=PostFilter.channels)
    ap.add_argument("--layers", type=int, default=PostFilter.layers)
    ap.add_argument("--input-scaling", choices=("step", "none"), default=PostFilter.input_scaling)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--lr", type=float, default=PostFilter.learning_rate)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--init-from-bundle", action="store_true",
                    help="start from the bundle's own post-filter (fine-tuning after a transform change)")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = train_postfilter(a.bundle, a.out, a.steps, a.seed, bundle_out=a.bundle_out, channels=a.channels,
                           layers=a.layers, input_scaling=a.input_scaling, batch_size=a.batch_size,
                           learning_rate=a.lr, log_every=a.log_every, measure=not a.no_measure,
                           init_from_bundle=a.init_from_bundle)
    print(json.dumps(res["entry"], indent=2, sort_keys=True))
    print(f"done in {time.time() - t0:.0f} s; weights {res['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
