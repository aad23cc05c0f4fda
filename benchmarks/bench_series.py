"""Cine loops and volumes: inter-frame coding against frame-by-frame coding, JPEG 2000, JPEG XL and HEVC.

Sequences (frames, rows, cols, samples), none of them in the corpus's train split:

  cine      pydicom-data's color3d_jpeg_baseline.dcm: 120 frames of 480 x 640 RGB ultrasound (--cine-frames)
  cine30    pydicom-data's examples_ybr_color.dcm: 30 frames of 240 x 320 RGB ultrasound
  CT, MR    the corpus's test volumes (data.corpus.volumes("test"): a chest CT and a brain MR of the
            pyradiomics 3.0.1 sdist, 5-6.5 mm slices), --slices central slices of each

Ours is the shipped bundle through edge_runtime.codec: "inter" (frame groups, each frame predicted from the
previous decoded one where that pays) and "frames" (inter=False: every frame on its own, the stream of
earlier releases), at each --qualities level, then losslessly (max error 0) and with max error --bound.
JPEG 2000 (OpenJPEG) and JPEG XL (libjxl, effort 7) code every frame on its own, through imagecodecs (RGB
frames interleaved, JPEG 2000 with its colour transform); their quality knob is swept, the same value for
every frame. HEVC is x265 through ffmpeg at constant QP (keras_codec.evaluation.baselines.HEVC), for the RGB cines only:
4:4:4 GBR (the best HEVC does on RGB) and 4:2:0 (the Main profile of DICOM's HEVC transfer syntaxes), with
x265's default intra period (250 frames), so it gets more inter-frame redundancy than our groups allow.

bpp = 8 x bytes / samples (our pixel streams without metadata; codestreams for the others); PSNR over the
whole sequence (one MSE, the sequence's dynamic range: keras_codec.evaluation.metrics.psnr). BD-rate (PCHIP) over
40-55 dB, negative = fewer bits than the anchor.

    .venv/bin/python benchmarks/bench_series.py [--only cine,CT] [--cine-frames 120] [--slices 32] [--lossy-only]

Prints the tables and writes out/bench/series.csv (every point), series_bd.csv and series.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_colour import BD_RANGE, _parse_range, bd, rd_figure, write_tables  # noqa: E402
from keras_codec.evaluation import baselines, metrics  # noqa: E402

CINES = (("cine", "color3d_jpeg_baseline.dcm"), ("cine30", "examples_ybr_color.dcm"))
J2K_TARGETS = (34, 38, 42, 46, 50, 54, 58, 62)
JXL_DISTANCES = (0.05, 0.1, 0.2, 0.35, 0.6, 1.0, 1.6, 2.5)
HEVC_QPS = (2, 6, 10, 14, 18, 22, 26, 30)


def sequences(only, cine_frames: int, slices: int) -> list:
    """[(name, Image)] of the sequences asked for (module docstring)."""
    from pydicom.data import get_testdata_file

    from data.image import Image
    from data.readers import read_image

    out = []
    for name, file in CINES:
        if name in only:
            image = read_image(get_testdata_file(file))
            px = image.pixels[:cine_frames] if name == "cine" else image.pixels
            out.append((name, Image(pixels=np.ascontiguousarray(px), bits_stored=image.bits_stored,
                                    signed=image.signed, photometric=image.photometric, modality=image.modality)))
    if {"CT", "MR"} & set(only):
        from data import corpus

        for item in corpus.volumes("test"):
            if item.modality in only and item.modality in ("CT", "MR"):
                image = corpus.load_volume(item)
                mid, half = image.frames // 2, slices // 2
                px = image.pixels[max(0, mid - half):max(0, mid - half) + slices]
                out.append((item.modality, Image(pixels=np.ascontiguousarray(px), bits_stored=image.bits_stored,
                                                 signed=image.signed, photometric=image.photometric,
                                                 modality=image.modality)))
    return out


def _row(name, codec, mode, param, n_bytes, original, decoded, encode_s=None, decode_s=None) -> dict:
    return {"sequence": name, "codec": codec, "mode": mode, "param": param, "bytes": int(n_bytes),
            "bpp": 8.0 * n_bytes / original.size, "psnr": metrics.psnr(original, decoded),
            "max_abs_err": metrics.max_abs_error(original, decoded), "encode_s": encode_s, "decode_s": decode_s}


def ours(name, image, coder, model_id, inter: bool, quality=None, max_error=None) -> dict:
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import pixel_stream_bytes

    t0 = time.perf_counter()
    data = encode_image(image, coder=coder, model_id=model_id, quality=quality, max_error=max_error, inter=inter)
    t1 = time.perf_counter()
    out, _ = decode_image(data, coder=coder)
    t2 = time.perf_counter()
    mode = "lossy" if max_error is None else f"D={max_error}"
    return _row(name, "ours inter" if inter else "ours frames", mode, quality if max_error is None else max_error,
                pixel_stream_bytes(data), image.pixels, out.pixels, t1 - t0, t2 - t1)


def _frame_codec(codec: str, frame: np.ndarray, param, precision: int):
    """(bytes, decoded) of one (rows, cols, samples) unsigned frame of `precision` bits; param None = lossless."""
    import imagecodecs

    plane = frame[:, :, 0] if frame.shape[2] == 1 else frame
    if codec == "jpeg2000":
        opts = {"codecformat": "J2K", "bitspersample": precision, **({"mct": True} if frame.shape[2] == 3 else {})}
        data = (imagecodecs.jpeg2k_encode(plane, reversible=True, **opts) if param is None else
                imagecodecs.jpeg2k_encode(plane, float(param), reversible=False, **opts))
        out = imagecodecs.jpeg2k_decode(data)
    elif codec == "jpegxl":
        bits = precision if plane.dtype == np.uint8 else min(max(precision, 9), 16)
        data = (imagecodecs.jpegxl_encode(plane, lossless=True, effort=7, bitspersample=bits) if param is None else
                imagecodecs.jpegxl_encode(plane, distance=float(param), effort=7, bitspersample=bits))
        out = imagecodecs.jpegxl_decode(data)
    elif codec == "jpegls":
        data = imagecodecs.jpegls_encode(plane, level=int(param or 0))
        out = imagecodecs.jpegls_decode(data)
    else:
        raise ValueError(codec)
    return len(data), out.reshape(frame.shape)


def frame_by_frame(name, image, codec: str, param, mode: str) -> dict:
    """A classical image codec on every frame, bytes summed. The sequence is first shifted to start at 0 and
    declared with the bits its range needs (a CT volume's 12 bits, not its int16's 16), as a DICOM encoder
    would with Bits Stored: JPEG 2000's quality target and JPEG XL's distance are relative to that range."""
    px = image.pixels.astype(np.int64)
    shifted = px - px.min()
    precision = max(int(shifted.max()).bit_length(), 1)
    unsigned = shifted.astype(np.uint8 if precision <= 8 else np.uint16)
    decoded = np.empty_like(unsigned)
    n_bytes = 0
    t0 = time.perf_counter()
    for f in range(px.shape[0]):
        n, decoded[f] = _frame_codec(codec, unsigned[f], param, precision)
        n_bytes += n
    return _row(name, codec, mode, param, n_bytes, unsigned, decoded, time.perf_counter() - t0)


def hevc(name, image, chroma: str, qp: int) -> dict:
    row = baselines.HEVC(chroma).measure(image.pixels, qp)
    return {"sequence": name, "codec": row["codec"], "mode": "lossy", "param": qp, "bytes": row["n_bytes"],
            "bpp": 8.0 * row["n_bytes"] / image.pixels.size, "psnr": row["psnr"], "max_abs_err": row["max_abs_err"],
            "encode_s": row["encode_s"], "decode_s": row["decode_s"]}


def run(args) -> tuple[list, list]:
    from edge_runtime import runtime

    bundle, coder = runtime.load_codec(None)
    rows, bd_rows = [], []
    has_hevc = baselines.HEVC.available()
    for name, image in sequences(args.only, args.cine_frames, args.slices):
        shape = "x".join(str(v) for v in image.pixels.shape)
        print(f"\n== {name}: {shape} {image.pixels.dtype}, {image.photometric}", flush=True)

        def add(row):
            rows.append(row)
            print(f"  {row['codec']:12s} {row['mode']:6s} {str(row['param']):>6s}: {row['bytes']:>10d} B "
                  f"{row['bpp']:.3f} bpp {row['psnr']:.2f} dB", flush=True)

        for inter in (True, False):
            for q in args.qualities:
                add(ours(name, image, coder, bundle.model_id, inter, quality=q))
            for d in (0, args.bound) if args.bounded else ():
                add(ours(name, image, coder, bundle.model_id, inter, max_error=d))
        for p in J2K_TARGETS:
            add(frame_by_frame(name, image, "jpeg2000", p, "lossy"))
        for p in JXL_DISTANCES:
            add(frame_by_frame(name, image, "jpegxl", p, "lossy"))
        if args.bounded:
            for codec in ("jpeg2000", "jpegxl", "jpegls"):
                add(frame_by_frame(name, image, codec, None, "D=0"))
            add(frame_by_frame(name, image, "jpegls", args.bound, f"D={args.bound}"))
        if has_hevc and image.samples == 3 and image.pixels.dtype == np.uint8:
            for chroma in ("444", "420"):
                for qp in HEVC_QPS:
                    add(hevc(name, image, chroma, qp))
        lossy = {}
        for r in rows:
            if r["sequence"] == name and r["mode"] == "lossy":
                lossy.setdefault(r["codec"], []).append(r)
        for anchor in ("ours frames", "jpeg2000", "jpegxl", "hevc-444", "hevc-420"):
            if anchor in lossy:
                bd_rows.append({"sequence": name, "test": "ours inter", "anchor": anchor,
                                "bd_rate_percent": bd(lossy["ours inter"], lossy[anchor])})
    return rows, bd_rows


def report(rows: list, bd_rows: list, bound: int) -> None:
    print(f"\nBD-rate of ours (inter) over {BD_RANGE[0]:.0f}-{BD_RANGE[1]:.0f} dB (negative = fewer bits)\n")
    print("| sequence | anchor | BD-rate |\n|---|---|---:|")
    for r in bd_rows:
        print(f"| {r['sequence']} | {r['anchor']} | {r['bd_rate_percent']:+.1f} % |")
    print(f"\nLossless and max error {bound}: bytes, and ours inter as a ratio to each\n")
    print("| sequence | mode | ours inter | ours frames | JPEG-LS | JPEG XL | JPEG 2000 |\n|---|---|---:|---:|---:|---:|---:|")
    for name in dict.fromkeys(r["sequence"] for r in rows):
        for mode in ("D=0", f"D={bound}"):
            got = {r["codec"]: r["bytes"] for r in rows if r["sequence"] == name and r["mode"] == mode}
            if "ours inter" not in got:
                continue
            ref = got["ours inter"]
            cells = [f"{got[c]} ({ref / got[c]:.3f})" if c in got else "-"
                     for c in ("ours frames", "jpegls", "jpegxl", "jpeg2000")]
            print(f"| {name} | {mode} | {ref} | " + " | ".join(cells) + " |")


def write(rows: list, bd_rows: list, out_dir: Path) -> None:
    write_tables(out_dir, "series", rows, list(rows[0]), bd_rows, "sequence")
    panels = []
    for name in dict.fromkeys(r["sequence"] for r in rows):
        lossy = [r for r in rows if r["sequence"] == name and r["mode"] == "lossy"]
        panels.append((name, {codec: [r for r in lossy if r["codec"] == codec]
                              for codec in dict.fromkeys(r["codec"] for r in lossy)}))
    rd_figure(panels, out_dir / "series.png", "bpp (per sample)", log_rate=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="cine,cine30,CT,MR", help="comma-separated sequences (module docstring)")
    ap.add_argument("--cine-frames", type=int, default=120)
    ap.add_argument("--slices", type=int, default=32, help="central slices of each test volume")
    ap.add_argument("--qualities", type=_parse_range, default=_parse_range("8-24"))
    ap.add_argument("--bound", type=int, default=2, help="the max error D of the near-lossless rows")
    ap.add_argument("--lossy-only", dest="bounded", action="store_false",
                    help="skip the lossless and max-error rows (they take most of the time on long cines)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench"))
    args = ap.parse_args(argv)
    args.only = set(args.only.split(","))
    rows, bd_rows = run(args)
    report(rows, bd_rows, args.bound)
    write(rows, bd_rows, Path(args.out))
    print(f"\nwrote {args.out}/series.csv, series_bd.csv, series.png")


if __name__ == "__main__":
    main()
