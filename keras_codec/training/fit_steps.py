"""Fit a bundle's per-level quantizer step multipliers (codec param "level_step_scale") on the train split.

The multipliers start neutral (all 1.0: the codec as without them) and are fitted by
coordinate descent, one entry at a time (LL, then the detail levels coarse to fine): each
candidate value (the current one times 0.8, 0.9, 1.1, 1.25) is measured by REAL coding,
encode and decode through the bundle's coder (its TFLite graphs on the edge path), of
centred crops of the train planes at several quality levels spanning about 40-55 dB, and
kept when it lowers the objective: the mean over planes of the BD-rate (40-55 dB, PSNR
over the dynamic range, keras_codec.evaluation.metrics.bd_rate) against the neutral codec. The test
split is never read. Multipliers are stored as dyadic rationals (edge_runtime.codec.dyadic_scale),
so every decoder rebuilds the same band steps.

    python -m keras_codec.training.fit_steps --bundle runs/default_pf --out runs/default_steps
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.bundle import load_bundle, model_id_of
from edge_runtime.codec import PlaneCoder, dyadic_scale, levels_for
from edge_runtime.runtime import load_codec
from keras_codec.evaluation.metrics import bd_rate, psnr
from keras_codec.training.fit_default import train_crops

FIT_QUALITIES = (12, 14, 16, 18, 20, 22)
"""About 36-56 dB nominal: the BD range 40-55 dB with room for the interpolation."""
FACTORS = (0.8, 0.9, 1.1, 1.25)
CROP = 256
SWEEPS = 2
MIN_GAIN = 0.02
"""A candidate must lower the objective by more than this (BD-rate percentage points) to be kept."""


def fit_planes(max_side: int = CROP, max_frames: int = 2) -> list:
    """(name, plane in stored integers from 0, its dynamic range R) for the train split: centred crops of
    at most max_side², every sample, up to max_frames frames (keras_codec.training.fit_default.train_crops)."""
    out = []
    for name, p in train_crops(max_side, max_frames):
        lo, hi = int(p.min()), int(p.max())
        out.append((name, p - lo, hi - lo))
    return out


def rd_curve(coder: PlaneCoder, plane: np.ndarray, rng: int, qualities) -> tuple[np.ndarray, np.ndarray]:
    """(bits, PSNR over the dynamic range) of one integer plane at each quality, by real encode + decode."""
    x = plane.astype(np.float64) / rng
    bits, db = [], []
    for q in qualities:
        data = coder.encode(x, q)
        y = np.clip(np.round(coder.decode(data, *x.shape, q).astype(np.float64) * rng), 0, rng)
        bits.append(8.0 * len(data))
        db.append(psnr(plane, y, data_range=rng))
    return np.array(bits), np.array(db)


def _with_scales(params: dict, scales) -> dict:
    return {**params, "level_step_scale": [float(s) for s in scales]}


def fit_step_scales(coder: PlaneCoder, planes, *, qualities=FIT_QUALITIES, factors=FACTORS, sweeps: int = SWEEPS,
                    min_gain: float = MIN_GAIN, aggregate: str = "mean", progress=print) -> dict:
    """Coordinate descent over [LL, level 1, ..., level L] multipliers (L = the deepest plane's levels).

    `planes`: (name, integer plane from 0, dynamic range) triples. Returns {"level_step_scale",
    "objective" (mean BD-rate in % against the neutral codec, negative = fewer bits), "history",
    "planes_in_objective"}. `aggregate`: "mean" of the planes' BD-rates, or "median" (robust to a
    few planes with a large gain hiding a small loss on most). The coder's params are restored when done.
    """
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")
    if not planes:
        raise ValueError("no planes to fit the step multipliers on")
    base = {k: v for k, v in coder.p.items() if k != "level_step_scale"}
    depth = max(levels_for(*p.shape, int(base["levels"])) for _n, p, _r in planes)
    t0 = time.time()

    def curves(scales):
        coder.p = _with_scales(base, scales)
        try:
            return [rd_curve(coder, p, r, qualities) for _n, p, r in planes]
        finally:
            coder.p = base

    ref = curves([1.0] * (depth + 1))
    usable = []
    for (name, _p, _r), (b, s) in zip(planes, ref):
        if math.isfinite(bd_rate(b, s, b, s)):
            usable.append(name)
        else:
            progress(f"fit-steps: {name} left out (its PSNRs {s.min():.1f}-{s.max():.1f} dB miss 40-55 dB)")
    if not usable:
        raise ValueError("no plane reaches 40-55 dB at the fitting qualities; choose other --qualities")

    per_plane = {}

    def objective(scales) -> float:
        vals = [bd_rate(rb, rs, b, s) for (rb, rs), (b, s) in zip(ref, curves(scales))]
        per_plane[tuple(scales)] = vals
        vals = [v for v in vals if math.isfinite(v)]
        return float(getattr(np, aggregate)(vals)) if vals else math.inf

    scales, best = [1.0] * (depth + 1), 0.0
    history = [{"sweep": 0, "entry": None, "level_step_scale": list(scales), "objective": best}]
    progress(f"fit-steps: {len(planes)} planes ({len(usable)} in the objective), qualities {list(qualities)}, "
             f"entries LL + levels 1..{depth}, neutral measured in {time.time() - t0:.1f} s")
    for sweep in range(1, sweeps + 1):
        changed = False
        for entry in [0] + list(range(depth, 0, -1)):
            label = "LL" if entry == 0 else f"level {entry}"
            tried = {}
            for f in factors:
                cand = list(scales)
                cand[entry] = dyadic_scale(scales[entry] * f)
                if cand[entry] == scales[entry] or cand[entry] in tried:
                    continue
                tried[cand[entry]] = objective(cand)
                progress(f"fit-steps: sweep {sweep} {label:8s} x{cand[entry]:.4f}  objective {tried[cand[entry]]:+.3f} % "
                         f"(best {best:+.3f} %, {time.time() - t0:.0f} s)")
            if tried:
                m, v = min(tried.items(), key=lambda kv: kv[1])
                if v < best - min_gain:
                    scales[entry], best, changed = m, v, True
                    history.append({"sweep": sweep, "entry": entry, "level_step_scale": list(scales),
                                    "objective": best})
        progress(f"fit-steps: after sweep {sweep}: {scales} objective {best:+.3f} %")
        if not changed:
            break
    # the mean can hide a loss on most planes behind a large gain on a few: report every plane
    by_plane = {n: round(v, 4) for (n, _p, _r), v in zip(planes, per_plane.get(tuple(scales), []))
                if math.isfinite(v)}
    if by_plane:
        worse = sum(v > 0 for v in by_plane.values())
        progress(f"fit-steps: per plane {by_plane}; {worse} of {len(by_plane)} planes need more bits")
    return {"level_step_scale": scales, "objective": best, "history": history, "planes_in_objective": usable,
            "bd_rate_by_plane": by_plane, "wall_seconds": round(time.time() - t0, 1)}


def write_bundle(src, out, scales, record: dict, force: bool = False) -> bytes:
    """Copy bundle `src` to `out` with codec["level_step_scale"] = scales and manifest["steps"] = record."""
    src, out = Path(src), Path(out)
    if out.exists():
        if not force:
            raise FileExistsError(f"{out}: already exists; choose another --out or pass --force")
        if out.resolve() == src.resolve():
            raise ValueError(f"{out}: is the input bundle; write the fitted bundle elsewhere")
        shutil.rmtree(out)
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["codec"]["level_step_scale"] = [dyadic_scale(s) for s in scales]
    manifest["steps"] = record
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    load_bundle(out)  # parses
    return model_id_of(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m keras_codec.training.fit_steps", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle to start from (with TFLite graphs for the edge path)")
    ap.add_argument("--out", required=True, help="folder of the fitted bundle (a copy of --bundle)")
    ap.add_argument("--crop", type=int, default=CROP, help="centred crop side of each train plane")
    ap.add_argument("--qualities", default=",".join(map(str, FIT_QUALITIES)))
    ap.add_argument("--factors", default=",".join(map(str, FACTORS)))
    ap.add_argument("--sweeps", type=int, default=SWEEPS)
    ap.add_argument("--max-frames", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--aggregate", choices=("mean", "median"), default="mean",
                    help="how the planes' BD-rates are combined into the objective")
    ap.add_argument("--seed", type=int, default=0, help="recorded (the crops are deterministic)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)

    qualities = tuple(int(q) for q in args.qualities.split(","))
    factors = tuple(float(f) for f in args.factors.split(","))
    bundle, coder = load_codec(args.bundle, num_threads=args.threads)
    if bundle.manifest["codec"].get("level_step_scale"):
        print(f"fit-steps: {args.bundle} already has level_step_scale; the fit starts again from 1.0",
              file=sys.stderr)
    planes = fit_planes(args.crop, args.max_frames)
    res = fit_step_scales(coder, planes, qualities=qualities, factors=factors, sweeps=args.sweeps,
                          aggregate=args.aggregate)
    record = {"level_step_scale": res["level_step_scale"], "convention": "[LL, level 1 (finest), ..., level L]",
              "objective_bd_rate_vs_neutral": round(res["objective"], 4),
              "aggregate": args.aggregate, "objective": f"{args.aggregate} over planes of the BD-rate (40-55 dB, PSNR over the dynamic range) against the same bundle "
                           "without multipliers, real encode/decode through the bundle's TFLite graphs",
              "split": "train", "seed": args.seed, "crop": args.crop, "qualities": list(qualities),
              "factors": list(factors), "sweeps": args.sweeps, "planes": [n for n, _p, _r in planes],
              "planes_in_objective": res["planes_in_objective"], "bd_rate_by_plane": res["bd_rate_by_plane"],
              "history": res["history"],
              "from_bundle": str(args.bundle), "from_model_id": bundle.model_id.hex(),
              "wall_seconds": res["wall_seconds"], "python": platform.python_version(),
              "command": "python -m keras_codec.training.fit_steps " + " ".join(sys.argv[1:] if argv is None else argv)}
    model_id = write_bundle(args.bundle, args.out, res["level_step_scale"], record, force=args.force)
    print(f"fit-steps: multipliers {res['level_step_scale']} objective {res['objective']:+.3f} %; "
          f"wrote {args.out} (model {model_id.hex()[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
