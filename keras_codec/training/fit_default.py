"""Fit the `default` model's context model on the train split and write its bundle.

Stage 1 of training the default model: the integer context weights are fitted by
maximum likelihood (keras_codec.training.context_fit) on the quantized wavelet coefficients of
every train plane at several quality levels, then refitted once on the coefficients
the rate-distortion optimized quantizer actually produces with the first fit.
"""
from __future__ import annotations

import platform
import time

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.bundle import save_bundle
from edge_runtime.codec import QUALITY_LEVELS, levels_for, pad_plane, quantize_bands, quantizer_step
from edge_runtime.entropy import EntropyTables, laplace_tables, quantize_pmf
from data.corpus import corpus, load
from edge_runtime.subband_coder import CodingModel, coded_indices, collect, encode_subbands
from keras_codec.config import CodecConfig
from keras_codec.models.default import DefaultCodec, bundle_transforms
from keras_codec.models.wavelet import WaveletTransforms
from keras_codec.training.context_fit import default_ll_weights, fit_weights, theta_to_int
from keras_codec.training.recipe import FIT_QUALITIES, ContextFit

MAX_SIDE = ContextFit.max_side
MAX_FRAMES = ContextFit.max_frames


def train_crops(max_side: int = MAX_SIDE, max_frames: int = MAX_FRAMES, images=None):
    """(name, plane in stored integers (int64)) for the train split: every sample of up to `max_frames`
    frames, a centred crop of at most max_side × max_side; constant crops left out.

    `images`: (name, Image) pairs to take the planes from instead of the corpus train split."""
    if images is None:
        images = ((item.name, load(item)) for item in corpus("train"))
    out = []
    for name, img in images:
        for f in range(min(img.frames, max_frames)):
            for s in range(img.samples):
                p = img.pixels[f, :, :, s].astype(np.int64)
                r0, c0 = max(0, (p.shape[0] - max_side) // 2), max(0, (p.shape[1] - max_side) // 2)
                p = p[r0:r0 + max_side, c0:c0 + max_side]
                if p.max() > p.min():
                    out.append((f"{name}[{f},{s}]", p))
    return out


def train_planes(seed: int = 0, max_side: int = MAX_SIDE, images=None, max_frames: int = MAX_FRAMES):
    """(name, normalized float plane) of train_crops: [0, 1] over each crop's own range."""
    out = []
    for name, p in train_crops(max_side, max_frames, images):
        p = p.astype(np.float64)
        lo, hi = p.min(), p.max()
        out.append((name, ((p - lo) / (hi - lo)).astype(np.float32)))
    return out


def _samples(planes, transforms, params, coding, rdo: bool, qualities=FIT_QUALITIES):
    rows_all = []
    for _name, x in planes:
        levels = levels_for(*x.shape, params["levels"])
        bands = transforms.analysis(pad_plane(x, levels), levels)
        for q in qualities:
            scaled, qb = quantize_bands(bands, quantizer_step(q), params["deadzone"])
            if rdo:
                fin = []
                encode_subbands(qb, coding, coeffs=scaled, lam=params["rdo_lambda"],
                                bias=params["recon_bias"], rdo_out=fin)
                qb = fin
            rows_all.append(collect(qb, coding))
    return rows_all


def learn_tables(samples, coding: CodingModel, prior_weight: float = 0.02) -> EntropyTables:
    """Tables from the train data: per table index, the symmetrized histogram of the symbols coded
    with it, mixed with the Laplace table (weight `prior_weight`, so unseen values keep a sane cost)."""
    base = coding.tables
    hists = [np.zeros(len(f), np.float64) for f in base.freqs]
    for rows in samples:
        for key, f, sym, idx in rows:
            if f is not None:  # indices under the final weights
                idx = coding.detail_index(f, *key)
            k_adj = coded_indices(sym, idx, f, coding)
            for k in np.unique(k_adj):
                pos, _esc = base.positions(k, sym[k_adj == k])
                hists[k] += np.bincount(pos, minlength=len(hists[k]))
    freqs = []
    for k, h in enumerate(hists):
        t = int(base.tails[k])
        core = h[:2 * t + 1]
        core = 0.5 * (core + core[::-1])
        h = np.concatenate([core, h[2 * t + 1:]])
        prior = base.freqs[k] / float(base.freqs[k].sum())
        n = h.sum()
        p = prior if n == 0 else (h + prior_weight * n * prior + 1e-3 * prior) / (n * (1 + prior_weight))
        freqs.append(quantize_pmf(p))
    return EntropyTables(freqs, base.tails)


def initial_weights(config: CodecConfig, levels_max: int = 8) -> ctx.ContextWeights:
    """The untrained context rule, set by hand: log σ = ln 0.4 + ½·ln(1+|parent|) + mean ln(1+|neighbour|).

    With Laplace tables this is the classical wavelet codec the default model starts from.
    """
    w = config.wavelet
    detail = np.zeros((levels_max, 3, 3, ctx.NUM_FEATURES), np.int64)
    unit = np.log(2.0) / 16.0  # one magnitude-code step in natural-log units
    for phase in range(3):
        theta = np.zeros(ctx.NUM_FEATURES)
        theta[0] = np.log(0.4)
        theta[1] = 0.5 * unit if phase == 0 else 0.25 * unit
        theta[5] = 0.0 if phase == 0 else unit / 4.0
        detail[:, :, phase] = theta_to_int(theta, w.num_scales, w.scale_min, w.scale_max)
    return ctx.ContextWeights(detail, default_ll_weights(w.num_scales, w.scale_min, w.scale_max))


def write_initial_bundle(config: CodecConfig, out_dir) -> dict:
    """Bundle of the untrained model (step 0): hand-set context rule, Laplace tables."""
    w = config.wavelet
    tables = laplace_tables(w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    manifest = {"config": config.to_dict(), "codec": DefaultCodec.params_for(config),
                "quality_levels": list(QUALITY_LEVELS), "tile": 2048, "training": {"stage": "initial (untrained)", "seed": 0,
                                           "command": "keras-codec train --config default --init-only --out <dir>"}}
    model_id = save_bundle(out_dir, manifest, initial_weights(config), tables)
    return {"model_id": model_id.hex(), "wall_seconds": 0.0, "planes": 0}


def fit_default(config: CodecConfig, out_dir, *, seed: int = 0, learned_tables: bool = True,
                progress=print, images=None, max_side: int = MAX_SIDE, max_frames: int = MAX_FRAMES,
                qualities=FIT_QUALITIES) -> dict:
    """Fit the context model on the train split (or on `images`, (name, Image) pairs) and write the bundle
    to out_dir; `max_side`, `max_frames` and `qualities` choose the planes and quality levels fitted on."""
    t0 = time.time()
    params = DefaultCodec.params_for(config)
    w = config.wavelet
    tables = laplace_tables(w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    levels_max = 8
    init = ctx.ContextWeights(np.zeros((levels_max, 3, 3, ctx.NUM_FEATURES), np.int64),
                              default_ll_weights(w.num_scales, w.scale_min, w.scale_max))
    init.detail[..., 0] = (w.num_scales // 2) << ctx.SHIFT
    transforms = WaveletTransforms(config.wavelet, postfilter=None)
    planes = train_planes(seed, max_side, images, max_frames)
    if not planes:
        raise ValueError("fit: no train plane with more than one value to fit the context model on")
    progress(f"fit: {len(planes)} train planes, qualities {tuple(qualities)}")
    weights = fit_weights(_samples(planes, transforms, params, CodingModel(init, tables), rdo=False,
                                   qualities=qualities),
                          levels_max, w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    progress(f"fit: first pass done in {time.time() - t0:.1f} s; refitting on RDO-quantized coefficients")
    samples = _samples(planes, transforms, params, CodingModel(weights, tables), rdo=True, qualities=qualities)
    weights = fit_weights(samples, levels_max, w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    if learned_tables:
        progress("fit: learning the tables from the train symbols")
        tables = learn_tables(samples, CodingModel(weights, tables))
    wall = time.time() - t0
    progress(f"fit: done in {wall:.1f} s")
    manifest = {
        "config": config.to_dict(),
        "codec": params,
        "quality_levels": list(QUALITY_LEVELS),
        "tile": 2048,
        "training": {"stage": "context-fit", "learned_tables": learned_tables, "seed": seed, "split": "train",
                     "planes": [n for n, _ in planes], "fit_qualities": list(qualities),
                     "wall_seconds": round(wall, 1), "python": platform.python_version(),
                     "command": "keras-codec train --config default --out <dir>"},
    }
    model_id = save_bundle(out_dir, manifest, weights, tables)
    return {"model_id": model_id.hex(), "wall_seconds": wall, "planes": len(planes)}


def refit_context(bundle, *, seed: int = 0, hidden: int = 0, progress=print, images=None,
                  max_side: int = MAX_SIDE, max_frames: int = MAX_FRAMES, qualities=FIT_QUALITIES) -> tuple:
    """Context weights and tables refitted on the bundle's own (possibly refined) transform.

    One maximum-likelihood pass on the RDO-quantized coefficients of every train plane at
    FIT_QUALITIES (quantized with the bundle's own context model), then tables learned from
    the symbols: the second pass of fit_default. `hidden` > 0 adds that many ReLU units per
    group to the context model. `images`, `max_side`, `max_frames`, `qualities` as in fit_default.
    Returns (weights, tables, info).
    """
    t0 = time.time()
    cfg = CodecConfig.from_dict(bundle.manifest["config"])
    params = bundle.manifest["codec"]
    w = cfg.wavelet
    transforms = bundle_transforms(bundle, params.get("wavelet", w.wavelet))
    tables = laplace_tables(w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    planes = train_planes(seed, max_side, images, max_frames)
    progress(f"refit: {len(planes)} train planes, qualities {tuple(qualities)}")
    samples = _samples(planes, transforms, params, CodingModel(bundle.coding.weights, tables), rdo=True,
                       qualities=qualities)
    weights = fit_weights(samples, bundle.coding.weights.levels, w.num_scales, w.scale_min, w.scale_max,
                          w.deadzone, hidden=hidden, progress=progress)
    tables = learn_tables(samples, CodingModel(weights, tables))
    wall = time.time() - t0
    progress(f"refit: done in {wall:.1f} s")
    return weights, tables, {"seed": seed, "split": "train", "planes": len(planes), "hidden": hidden,
                             "fit_qualities": list(qualities), "wall_seconds": round(wall, 1)}
