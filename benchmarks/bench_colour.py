"""Colour images: our codec with and without the colour transform (edge_runtime.colour) against JPEG 2000 with
its colour transform, JPEG-LS and JPEG XL, on RGB ultrasound frames (the target: BD-rate against
JPEG 2000 <= -10 %).

Images: pydicom-data's US1_UNCR.dcm (RGB, train split) and pydicom's examples_palette.dcm (PALETTE COLOR, test
split; read as 8-bit RGB since its table holds 8-bit colours; a lossless encode_file keeps PALETTE COLOR and
codes its indices, a row of its own). "before" is the codec coding R, G and B as
independent planes (encode_image(colour=False), the stream of earlier releases) on what the reader gave before
(examples_palette: 16-bit RGB through its 16-bit table); "after" is the colour transform on today's reader
output. bpp = 8 x pixel stream bytes (metadata excluded) / (rows x cols x 3); PSNR over the original's dynamic
range on all RGB samples (DESIGN.md). JPEG 2000 is OpenJPEG through imagecodecs on the interleaved RGB image
(multiple component transform on: the ICT for lossy, the RCT for lossless), its PSNR target swept to a curve;
JPEG-LS is CharLS (interleaved RGB, NEAR = D); JPEG XL is libjxl at effort 7. BD-rate (keras_codec.evaluation.metrics,
PCHIP) over 40-55 dB.

    .venv/bin/python benchmarks/bench_colour.py [--qualities 8-22] [--bounds 0,1,2,5] [--out out/bench]

Prints the tables and writes out/bench/colour.csv (every point), colour_bd.csv and colour.png.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

IMAGES = (("US1_UNCR.dcm", "train"), ("examples_palette.dcm", "test"))
BD_RANGE = (40.0, 55.0)


def _sources(name: str):
    """(today's Image, the Image the codec saw before the colour work) of one file."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    from data.image import Image
    from data.readers import read_image

    path = get_testdata_file(name)
    after = read_image(path)
    ds = pydicom.dcmread(path)
    if str(ds.PhotometricInterpretation) == "PALETTE COLOR":
        rgb16 = apply_color_lut(ds.pixel_array, ds).astype(np.uint16)[None]
        before = Image(pixels=rgb16, bits_stored=16, signed=False, photometric="RGB", modality=after.modality)
    else:
        before = after
    return path, after, before


def _bpp(n_bytes: int, image) -> float:
    return 8.0 * n_bytes / image.pixels.size


def _ours(image, coder, model_id, colour: bool, quality=None, max_error=None) -> dict:
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import psnr

    t0 = time.perf_counter()
    data = encode_image(image, coder=coder, model_id=model_id, quality=quality, max_error=max_error, colour=colour)
    t1 = time.perf_counter()
    out, _ = decode_image(data, coder=coder)
    err = int(np.abs(out.pixels.astype(np.int64) - image.pixels.astype(np.int64)).max())
    return {"bytes": len(data), "bpp": _bpp(len(data), image), "psnr": psnr(image.pixels, out.pixels),
            "max_abs_err": err, "encode_s": t1 - t0}


def _classical(codec: str, rgb: np.ndarray, param) -> dict:
    """One point of a classical codec on the interleaved (rows, cols, 3) image."""
    import imagecodecs

    from edge_runtime.runtime import psnr

    if codec == "jpeg2000":
        data = (imagecodecs.jpeg2k_encode(rgb, codecformat="J2K", reversible=True, mct=True) if param is None else
                imagecodecs.jpeg2k_encode(rgb, float(param), codecformat="J2K", reversible=False, mct=True))
        out = imagecodecs.jpeg2k_decode(data)
    elif codec == "jpegls":
        data = imagecodecs.jpegls_encode(rgb, level=int(param or 0))
        out = imagecodecs.jpegls_decode(data)
    elif codec == "jpegxl":
        data = (imagecodecs.jpegxl_encode(rgb, lossless=True, effort=7) if param is None else
                imagecodecs.jpegxl_encode(rgb, distance=float(param), effort=7))
        out = imagecodecs.jpegxl_decode(data)
    else:
        raise ValueError(codec)
    out = np.asarray(out).reshape(rgb.shape)
    err = int(np.abs(out.astype(np.int64) - rgb.astype(np.int64)).max())
    return {"bytes": len(data), "bpp": 8.0 * len(data) / rgb.size, "psnr": psnr(rgb, out), "max_abs_err": err}


def _curve(points: list) -> tuple:
    rows = sorted((p for p in points if np.isfinite(p["psnr"])), key=lambda p: p["psnr"])
    return [p["bpp"] for p in rows], [p["psnr"] for p in rows]


def bpp_at(points: list, psnr: float) -> float:
    """A curve's bpp at `psnr` (log-bpp interpolated linearly in PSNR; nan outside the curve)."""
    rates, psnrs = _curve(points)
    if not psnrs or not psnrs[0] <= psnr <= psnrs[-1]:
        return float("nan")
    return float(np.exp(np.interp(psnr, psnrs, np.log(rates))))


def bd(test: list, anchor: list) -> float:
    from keras_codec.evaluation.metrics import bd_rate

    (ra, pa), (rt, pt) = _curve(anchor), _curve(test)
    return bd_rate(ra, pa, rt, pt, *BD_RANGE)


def _parse_range(text: str) -> list:
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1, 2))
    return [int(v) for v in text.split(",")]


def run(qualities, bounds, out_dir: Path) -> tuple[list, list]:
    from edge_runtime import runtime

    bundle, coder = runtime.load_codec(None)
    rows, bd_rows = [], []
    for name, split in IMAGES:
        path, after, before = _sources(name)
        rgb = np.ascontiguousarray(after.pixels[0])
        grey = float(np.mean((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])))
        print(f"\n{name} ({split} split): {after.rows}x{after.cols} RGB, {after.pixels.dtype}, "
              f"{100 * grey:.1f} % of pixels grey (R = G = B); before: {before.pixels.dtype} RGB planes", flush=True)
        pts = {"ours before": [], "ours after": [], "jpeg2000": []}
        for q in qualities:
            for label, image, colour in (("ours before", before, False), ("ours after", after, True)):
                p = {"image": name, "codec": label, "mode": "lossy", "setting": f"q{q}",
                     **_ours(image, coder, bundle.model_id, colour, quality=q)}
                pts[label].append(p)
                rows.append(p)
        for level in np.arange(30.0, 66.0, 1.0):
            p = {"image": name, "codec": "jpeg2000", "mode": "lossy", "setting": f"target {level:.0f} dB",
                 **_classical("jpeg2000", rgb, level)}
            pts["jpeg2000"].append(p)
            rows.append(p)
        print(f"{'quality':>8} | {'before bpp':>10} {'dB':>6} | {'after bpp':>9} {'dB':>6} | "
              f"{'JPEG 2000 bpp at after dB':>25} | after / J2K")
        for b, a in zip(pts["ours before"], pts["ours after"]):
            j = bpp_at(pts["jpeg2000"], a["psnr"])
            print(f"{a['setting']:>8} | {b['bpp']:10.4f} {b['psnr']:6.2f} | {a['bpp']:9.4f} {a['psnr']:6.2f} | "
                  f"{j:25.4f} | {a['bpp'] / j:6.3f}")
        for test, anchor in (("ours after", "jpeg2000"), ("ours before", "jpeg2000"), ("ours after", "ours before")):
            value = bd(pts[test], pts[anchor])
            bd_rows.append({"image": name, "test": test, "anchor": anchor, "bd_rate_percent": value})
            print(f"BD-rate {test} vs {anchor} ({BD_RANGE[0]:.0f}-{BD_RANGE[1]:.0f} dB): {value:+.1f} %")

        print(f"\n{'bounded':>10} | {'ours before bpp':>15} | {'ours after bpp':>14} | {'JPEG-LS bpp':>11} | "
              f"{'JPEG XL bpp':>11} | {'JPEG 2000 bpp':>13} | max err (after)")
        for d in bounds:
            b = _ours(before, coder, bundle.model_id, False, max_error=_before_bound(d, before, after))
            a = _ours(after, coder, bundle.model_id, True, max_error=d)
            ls = _classical("jpegls", rgb, d)
            xl = _classical("jpegxl", rgb, None) if d == 0 else None
            j2 = _classical("jpeg2000", rgb, None) if d == 0 else None
            for label, p in (("ours before", b), ("ours after", a), ("jpegls", ls), ("jpegxl", xl), ("jpeg2000", j2)):
                if p is not None:
                    rows.append({"image": name, "codec": label, "mode": "lossless" if d == 0 else f"max error {d}",
                                 "setting": f"D={d}", **p})
            print(f"{('lossless' if d == 0 else f'D = {d}'):>10} | {b['bpp']:15.4f} | {a['bpp']:14.4f} | "
                  f"{ls['bpp']:11.4f} | {xl['bpp'] if xl else float('nan'):11.4f} | "
                  f"{j2['bpp'] if j2 else float('nan'):13.4f} | {a['max_abs_err']}")
        if before is not after:  # the indices a PALETTE COLOR stream would code instead
            from data.readers import read_image

            indices = read_image(path, palette="indices")
            p = _ours(indices, coder, bundle.model_id, True, max_error=0)
            p["bpp"] = 8.0 * p["bytes"] / rgb.size  # per RGB sample, comparable with the rows above
            rows.append({"image": name, "codec": "ours, PALETTE COLOR indices", "mode": "lossless",
                         "setting": "D=0", **p})
            print(f"{'':>10}   lossless as edge-codec writes it (PALETTE COLOR kept, indices): {p['bytes']} bytes, "
                  f"{p['bpp']:.4f} bpp (per RGB sample)")
    _write(out_dir, rows, bd_rows)
    return rows, bd_rows


def _before_bound(d: int, before, after) -> int:
    """The bound in the before image's units: 16-bit RGB of a c x 256 palette is 256 x the 8-bit bound."""
    if before is after:
        return d
    scale = int(round(float(before.pixels.max()) / max(float(after.pixels.max()), 1.0)))
    return d * scale


def write_tables(out_dir: Path, stem: str, rows: list, fields: list, bd_rows: list, key: str) -> None:
    """out_dir/STEM.csv (every point, `fields`) and STEM_bd.csv (BD-rates of `key`, test, anchor)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(out_dir / f"{stem}_bd.csv", "w", newline="") as f:
        w = csv.DictWriter(f, [key, "test", "anchor", "bd_rate_percent"])
        w.writeheader()
        w.writerows(bd_rows)


def rd_figure(panels: list, path: Path, xlabel: str, log_rate: bool = False) -> None:
    """One rate-distortion panel per (title, {curve label: points}); nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for label, points in curves.items():
            rates, psnrs = _curve(points)
            ax.plot(rates, psnrs, marker="o", ms=3, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel="PSNR (dB, dynamic range)", ylim=(35, 60))
        if log_rate:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write(out_dir: Path, rows: list, bd_rows: list) -> None:
    fields = ["image", "codec", "mode", "setting", "bytes", "bpp", "psnr", "max_abs_err", "encode_s"]
    write_tables(out_dir, "colour", rows, fields, bd_rows, "image")
    panels = [(image, {codec: [r for r in rows if r["image"] == image and r["codec"] == codec and r["mode"] == "lossy"]
                       for codec in ("ours before", "ours after", "jpeg2000")})
              for image in sorted({r["image"] for r in rows})]
    rd_figure(panels, out_dir / "colour.png", "bpp (per RGB sample)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qualities", default="8-22", help="our quality levels: 'lo-hi' (every second) or a list")
    ap.add_argument("--bounds", default="0,1,2,5", help="max errors of the bounded rows (0 = lossless)")
    ap.add_argument("--out", default="out/bench", type=Path)
    args = ap.parse_args(argv)
    run(_parse_range(args.qualities), [int(v) for v in args.bounds.split(",")], args.out)
    print(f"\nwrote {args.out / 'colour.csv'}, {args.out / 'colour_bd.csv'}, {args.out / 'colour.png'}")


if __name__ == "__main__":
    main()
