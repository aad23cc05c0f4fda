"""Fit the residual model of the error-bounded / lossless mode and add it to a bundle.

    python -m keras_codec.training.fit_residual --bundle B [--seed 0]

For every train plane (a centred crop of at most MAX_SIDE²), every bound D in FIT_BOUNDS
and base qualities spanning those the encoder picks (FIT_QUALITIES), the base is coded
and reconstructed exactly as the codec does (PlaneCoder.exact_base), and the residual
symbols with their features are collected (edge_runtime.residual.collect). Per pass,
log σ = θ·f of a Laplacian through a uniform quantizer is fitted by maximum likelihood
(keras_codec.training.context_fit.fit_group) and mapped onto integer weights. The tables are the
bundle's scale grid with no deadzone. Writes `residual.npz` into the bundle (its model id
changes) and records the fit in the manifest's "residual" entry.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_runtime import residual as res
from edge_runtime.bundle import load_bundle, model_id_of
from edge_runtime.entropy import laplace_tables
from edge_runtime.runtime import load_codec
from keras_codec.training.context_fit import fit_group, theta_to_int
from keras_codec.training.fit_default import train_crops
from keras_codec.training.recipe import Residual

FIT_BOUNDS = (0, 1, 2, 4, 8)
FIT_QUALITIES = (12, 16, 20, 24, 28)
MAX_SIDE = Residual.max_side
_CODE_UNITS = 16.0 / np.log(2.0)  # magnitude codes -> natural-log units


def residual_tables(params: dict):
    return laplace_tables(int(params["num_scales"]), float(params["scale_min"]), float(params["scale_max"]),
                          deadzone=0.0)


def initial_model(params: dict) -> res.ResidualModel:
    """Before fitting: σ ≈ 1 step everywhere, growing with the base's activity."""
    theta = np.array([0.0, 0.0, 0.5, 0.0, 0.3, 0.0]) / np.array([1.0] + [_CODE_UNITS] * 5)
    w = theta_to_int(theta, int(params["num_scales"]), float(params["scale_min"]), float(params["scale_max"]))
    return res.ResidualModel(np.stack([w] * res.NUM_PASSES), residual_tables(params))


def train_integer_planes(max_side: int = MAX_SIDE, images=None):
    """(name, integer plane) of the train split (or of `images`, (name, Image) pairs): first frame, every
    sample, centred crop."""
    return train_crops(max_side, max_frames=1, images=images)


def collect_samples(coder, planes, model, bounds=FIT_BOUNDS, progress=print, qualities=FIT_QUALITIES) -> dict:
    """{phase: (features list, symbols list)} over planes × bounds × base `qualities`."""
    groups = {p: ([], []) for p in range(res.NUM_PASSES)}
    for i, (name, x) in enumerate(planes):
        u = x - x.min()
        for q in qualities:
            _, base = coder.exact_base(u, int(u.max()), q)
            for d in bounds:
                e = res.quantize(u - base, d)
                for phase, f, sym in res.collect(e, base, d, model):
                    groups[phase][0].append(f)
                    groups[phase][1].append(sym)
        progress(f"  [{i + 1}/{len(planes)}] {name} {x.shape[0]}x{x.shape[1]}")
    return groups


def fit_model(groups: dict, params: dict, seed: int = 0) -> res.ResidualModel:
    weights = []
    for phase in range(res.NUM_PASSES):
        f = np.concatenate(groups[phase][0]).astype(np.float64)
        s = np.concatenate(groups[phase][1])
        f[:, 1:] /= _CODE_UNITS
        theta = fit_group(f, s, deadzone=0.0, seed=seed)
        theta[1:] /= _CODE_UNITS
        weights.append(theta_to_int(theta, int(params["num_scales"]), float(params["scale_min"]),
                                    float(params["scale_max"])))
    return res.ResidualModel(np.stack(weights), residual_tables(params))


def bits_per_pixel(coder, planes, model, bounds=FIT_BOUNDS) -> dict:
    """Mean residual bits per pixel per bound (base at the middle quality), for the fit's record."""
    out = {}
    for d in bounds:
        q = FIT_QUALITIES[len(FIT_QUALITIES) // 2]
        bits = npx = 0
        for _name, x in planes:
            u = x - x.min()
            _, base = coder.exact_base(u, int(u.max()), q)
            bits += 8 * len(res.encode_residual(res.quantize(u - base, d), base, d, model))
            npx += x.size
        out[str(d)] = round(bits / npx, 4)
    return out


def fit_residual(bundle_dir, seed: int = 0, progress=print, images=None, max_side: int = MAX_SIDE) -> dict:
    """Fit on the train split (or on `images`, (name, Image) pairs; centred crops of at most `max_side`²)
    with the bundle's own coder and write residual.npz into it."""
    t0 = time.time()
    bundle_dir = Path(bundle_dir)
    bundle, coder = load_codec(load_bundle(bundle_dir))
    params = bundle.manifest["codec"]
    planes = train_integer_planes(max_side, images)
    if not planes:
        raise ValueError("fit_residual: no train plane with more than one value to fit the residual model on")
    progress(f"fitting the residual model on {len(planes)} train planes, bounds {FIT_BOUNDS}")
    model0 = initial_model(params)
    model = fit_model(collect_samples(coder, planes, model0, progress=progress), params, seed=seed)
    record = {"seed": seed, "bounds": list(FIT_BOUNDS), "max_side": max_side, "split": "train",
              "planes": [n for n, _ in planes], "train_bits_per_pixel": bits_per_pixel(coder, planes, model),
              "initial_train_bits_per_pixel": bits_per_pixel(coder, planes, model0),
              "wall_seconds": round(time.time() - t0, 1)}
    np.savez_compressed(bundle_dir / res.RESIDUAL_FILE, **model.to_arrays())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["residual"] = record
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    record["model_id"] = model_id_of(bundle_dir).hex()
    progress(f"residual bits/pixel on the train planes: fitted {record['train_bits_per_pixel']}, "
             f"initial {record['initial_train_bits_per_pixel']}")
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle directory to add residual.npz to (in place)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rec = fit_residual(args.bundle, seed=args.seed)
    print(f"wrote {args.bundle}/{res.RESIDUAL_FILE}: model id {rec['model_id'][:16]}..., {rec['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
