"""Lossless and near-lossless bench: our codec against JPEG-LS, JPEG 2000, HTJ2K and JPEG XL on unseen images.

    .venv/bin/python benchmarks/bench_lossless.py [--sets test,volumes,cv] [--bounds 1,2,4]
        [--volume-stride 1] [--cv-side 256] [--out out/bench_lossless]

(the cv set refits the residual model, which needs TensorFlow: the workstation venv; test and volumes also run
in the edge venv)

Three sets, none of which the residual model was fitted on:

  test     the corpus test split, whole images through the engine (encode_image / decode_image);
  volumes  every --volume-stride-th slice of the NRRD test volumes (pyradiomics 3.0.1 lung2: chest CT,
           brain2: brain MR; data.corpus.volumes), one slice per image (the corpus' other test volume,
           a cine that came through lossy JPEG, is left out);
  cv       leave-one-modality-out over the whole corpus (CT, MR, CR, US, OT: 5 folds): the residual
           model is fitted (keras_codec.training.fit_residual, on centred crops of at most --cv-side², base
           qualities CV_QUALITIES) on every other modality, then codes the held-out modality's
           images (first frame, centred crop of at most --cv-side²).

Per image: bytes of ours (real pixel-stream bytes of the .kcd; also ours --fast, every tile without a
base) and of JPEG-LS (CharLS), JPEG 2000
(OpenJPEG, reversible 5/3), HTJ2K (OpenJPH, reversible) and JPEG XL (libjxl effort 7 and 9) lossless,
each checked exact on decode; with max error D in --bounds, ours and JPEG-LS NEAR = D (checked within
D). Encode and decode times are one warm run each (ours: in process, the bundle loaded once; the
classical codecs single-threaded through imagecodecs). Writes lossless.csv, lossless.md and
lossless.png under --out.
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOSSLESS = ("jpegls", "jpeg2000", "htj2k", "jpegxl7", "jpegxl9")
NAMES = {"ours": "ours", "ours_fast": "ours --fast", "jpegls": "JPEG-LS", "jpeg2000": "JPEG 2000", "htj2k": "HTJ2K",
         "jpegxl7": "JPEG XL e7", "jpegxl9": "JPEG XL e9"}
VOLUMES = ("lung2_image.nrrd", "brain2_image.nrrd")
CV_QUALITIES = (14, 20, 26)
FIELDS = ("set", "image", "modality", "D", "codec", "n_bytes", "bpp", "encode_s", "decode_s", "max_abs_err")


def classical(name: str):
    from keras_codec.evaluation import baselines
    from keras_codec.evaluation.speed import baseline

    if name.startswith("jpegxl"):
        return baselines.JPEGXL(effort=int(name[len("jpegxl"):]))
    return baseline(name)


def _classical_row(codec, pixels: np.ndarray, bits_stored: int, near) -> dict:
    """Bytes and times of one classical codec over every plane of `pixels` (frames, rows, cols, samples)."""
    planes = [pixels[f, :, :, s] for f in range(pixels.shape[0]) for s in range(pixels.shape[3])]
    t0 = time.perf_counter()
    streams = [codec.encode(p, near, bits_stored) for p in planes]
    t1 = time.perf_counter()
    decoded = [codec.decode(s, p.dtype, bits_stored) for s, p in zip(streams, planes)]
    t2 = time.perf_counter()
    err = max(int(np.abs(d.astype(np.int64) - p.astype(np.int64)).max()) for d, p in zip(decoded, planes))
    return {"n_bytes": sum(map(len, streams)), "encode_s": t1 - t0, "decode_s": t2 - t1, "max_abs_err": err}


def _ours_row(coder, model_id: bytes, image, d: int, tile: int, fast: bool = False) -> dict:
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import pixel_stream_bytes

    t0 = time.perf_counter()
    data = encode_image(image, coder=coder, model_id=model_id, quality=0 if fast else None, max_error=d, tile=tile)
    t1 = time.perf_counter()
    decoded, _ = decode_image(data, coder=coder, model_ids=[model_id])
    t2 = time.perf_counter()
    err = int(np.abs(decoded.pixels.astype(np.int64) - image.pixels.astype(np.int64)).max())
    return {"n_bytes": pixel_stream_bytes(data), "encode_s": t1 - t0, "decode_s": t2 - t1, "max_abs_err": err}


def measure(set_name: str, name: str, image, coder, model_id: bytes, bounds, tile: int, progress=print) -> list:
    """Rows of one image: ours and the classical codecs lossless, ours and JPEG-LS at each D of `bounds`."""
    base = {"set": set_name, "image": name, "modality": image.modality}
    npx = image.pixels.size
    rows = []

    def add(codec, d, r):
        if r["max_abs_err"] > d:
            raise RuntimeError(f"{name}: {codec} at D = {d} reached max error {r['max_abs_err']}: the bound is broken")
        rows.append({**base, "D": d, "codec": codec, **r, "bpp": 8.0 * r["n_bytes"] / npx})

    for d in (0,) + tuple(bounds):
        add("ours", d, _ours_row(coder, model_id, image, d, tile))
        add("ours_fast", d, _ours_row(coder, model_id, image, d, tile, fast=True))
        add("jpegls", d, _classical_row(classical("jpegls"), image.pixels, image.bits_stored, d or None))
    for codec in LOSSLESS[1:]:
        try:
            add(codec, 0, _classical_row(classical(codec), image.pixels, image.bits_stored, None))
        except RuntimeError:
            raise
        except Exception as exc:  # noqa: BLE001 - an external codec refusing an input is a note, not a failure
            progress(f"  {name}: {codec} left out ({exc})")
    got = {r["codec"]: r["n_bytes"] for r in rows if r["D"] == 0}
    progress(f"  {set_name:7s} {name[:40]:40s} " + " ".join(f"{NAMES[c]} {got[c]}" for c in ("ours",) + LOSSLESS
                                                             if c in got) +
             f"  ours/JPEG-LS {got['ours'] / got['jpegls']:.3f}")
    return rows


# ------------------------------------------------------------------------------------------------ image sets

def test_images():
    from data.corpus import corpus, load

    for item in corpus("test"):
        yield item.name, load(item)


def _volume_source(name: str):
    """(slices, rows, cols) volume: data.corpus's reader when this checkout has it, else benchmarks/_volumes."""
    try:
        from data.corpus import load_volume, volumes
    except ImportError:
        volumes = None
    if volumes is not None:
        item = next((v for v in volumes("test") if v.name == name), None)
        if item is not None:
            try:
                return load_volume(item).pixels[..., 0]
            except FileNotFoundError:
                pass  # not fetched by the set-up here: read it from the sdist below
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _volumes

    return _volumes.sdist_volume(_volumes.fetch_sdist(ROOT / "out" / "cache" / "pyradiomics"), name)[0]


def volume_images(stride: int):
    from data.image import Image

    for name in VOLUMES:
        vol = _volume_source(name)
        modality = "CT" if name.startswith("lung") else "MR"
        for k in range(0, vol.shape[0], stride):
            px = np.ascontiguousarray(vol[k][None, :, :, None].astype(np.int16))
            yield f"{name.split('_')[0]}[{k}]", Image(pixels=px, bits_stored=16, signed=True, modality=modality)


def _crop_image(image, side: int):
    from data.image import Image

    px = image.pixels[:1]
    r0, c0 = max(0, (px.shape[1] - side) // 2), max(0, (px.shape[2] - side) // 2)
    px = np.ascontiguousarray(px[:, r0:r0 + side, c0:c0 + side])
    return Image(pixels=px, bits_stored=image.bits_stored, signed=image.signed, photometric=image.photometric,
                 modality=image.modality)


def cv_folds(coder, side: int, progress=print):
    """(modality, residual model fitted without it, [(name, cropped image)]) per modality of the corpus."""
    from data.corpus import corpus, load
    from keras_codec.training import fit_residual as fr

    images = []
    for item in corpus(None):
        img = _crop_image(load(item), side)
        images.append((item.name, img))
    params = coder.p
    for modality in sorted({img.modality for _, img in images}):
        planes = []
        for name, img in images:
            if img.modality == modality:
                continue
            for s in range(img.samples):
                p = img.pixels[0, :, :, s].astype(np.int64)
                if p.max() > p.min():
                    planes.append((f"{name}[{s}]", p))
        t0 = time.time()
        groups = fr.collect_samples(coder, planes, fr.initial_model(params), qualities=CV_QUALITIES,
                                    progress=lambda *_: None)
        model = fr.fit_model(groups, params)
        progress(f"cv: residual model without {modality} fitted on {len(planes)} planes in {time.time() - t0:.0f} s")
        yield modality, model, [(n, img) for n, img in images if img.modality == modality]


# ------------------------------------------------------------------------------------------------ report

def _total(rows, set_name, codec, d, images=None) -> float:
    sel = [r["n_bytes"] for r in rows if r["set"] == set_name and r["codec"] == codec and r["D"] == d
           and (images is None or r["image"] in images)]
    return float(sum(sel)) if sel else math.nan


def _get(rows, set_name, image, codec, d):
    return next((r for r in rows if r["set"] == set_name and r["image"] == image and r["codec"] == codec
                 and r["D"] == d), None)


def markdown(rows, bounds) -> str:
    out = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        images = list(dict.fromkeys(r["image"] for r in rows if r["set"] == set_name))
        # totals over the images every lossless codec coded, so each ratio compares the same pixels
        full = [im for im in images if all(_get(rows, set_name, im, c, 0) for c in ("ours",) + LOSSLESS)]
        out += [f"### {set_name}: lossless bytes ({len(images)} images)", "",
                "| image | " + " | ".join(NAMES[c] for c in ("ours",) + LOSSLESS) +
                " | ours / JPEG-LS | ours / JPEG XL e7 | ours enc / dec ms | JPEG-LS enc / dec ms |",
                "|---|" + "---|" * (len(LOSSLESS) + 5)]
        smallest = 0
        for im in images:
            cells = [_get(rows, set_name, im, c, 0) for c in ("ours",) + LOSSLESS]
            o, j, x = cells[0], cells[1], cells[4]
            present = [c["n_bytes"] for c in cells if c]
            smallest += int(o["n_bytes"] == min(present))
            out.append(f"| {im} | " + " | ".join(str(c["n_bytes"]) if c else "-" for c in cells) +
                       f" | {o['n_bytes'] / j['n_bytes']:.3f} | " +
                       (f"{o['n_bytes'] / x['n_bytes']:.3f}" if x else "-") +
                       f" | {1e3 * o['encode_s']:.0f} / {1e3 * o['decode_s']:.0f} | "
                       f"{1e3 * j['encode_s']:.1f} / {1e3 * j['decode_s']:.1f} |")
        tot = {c: _total(rows, set_name, c, 0, full) for c in ("ours",) + LOSSLESS}
        ratios = [_get(rows, set_name, im, "ours", 0)["n_bytes"] / _get(rows, set_name, im, "jpegls", 0)["n_bytes"]
                  for im in images]
        out.append(f"| **total** ({len(full)} images) | " + " | ".join(f"**{tot[c]:.0f}**" for c in tot) +
                   f" | **{tot['ours'] / tot['jpegls']:.3f}** | **{tot['ours'] / tot['jpegxl7']:.3f}** | | |")
        out += ["", f"ours smallest on {smallest} of {len(images)} images; mean per-image ours / JPEG-LS "
                f"{np.mean(ratios):.3f}; total ours / JPEG XL e9 {tot['ours'] / tot['jpegxl9']:.3f}, "
                f"/ JPEG 2000 {tot['ours'] / tot['jpeg2000']:.3f}, / HTJ2K {tot['ours'] / tot['htj2k']:.3f}", ""]
        fast = _total(rows, set_name, "ours_fast", 0, full)
        enc = {c: sum(_get(rows, set_name, im, c, 0)["encode_s"] for im in images) for c in ("ours", "ours_fast")}
        out += [f"ours --fast (every tile without a base): total {fast:.0f}, {fast / tot['ours']:.4f} x ours, "
                f"/ JPEG-LS {fast / tot['jpegls']:.3f}, / JPEG XL e7 {fast / tot['jpegxl7']:.3f}; encode "
                f"{1e3 * enc['ours_fast']:.0f} ms against {1e3 * enc['ours']:.0f} ms (sum over the images)", ""]
        if bounds:
            out += [f"### {set_name}: near-lossless, total bytes ours / JPEG-LS NEAR = D", "",
                    "| D | ours | JPEG-LS | ours / JPEG-LS | per-image range | ours --fast / JPEG-LS |",
                    "|---|---|---|---|---|---|"]
            for d in bounds:
                a, b = _total(rows, set_name, "ours", d), _total(rows, set_name, "jpegls", d)
                per = [_get(rows, set_name, im, "ours", d)["n_bytes"] / _get(rows, set_name, im, "jpegls", d)["n_bytes"]
                       for im in images]
                f = _total(rows, set_name, "ours_fast", d)
                out.append(f"| {d} | {a:.0f} | {b:.0f} | {a / b:.3f} | {min(per):.3f}-{max(per):.3f} | {f / b:.3f} |")
            out.append("")
    return "\n".join(out)


def plot(rows, bounds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(sets)
    codecs = ("ours",) + LOSSLESS
    for i, s in enumerate(sets):
        ref = _total(rows, s, "jpegls", 0)
        axes[0].bar(np.arange(len(codecs)) + i * width, [_total(rows, s, c, 0) / ref for c in codecs], width, label=s)
        if bounds:
            axes[1].plot((0,) + tuple(bounds), [_total(rows, s, "ours", d) / _total(rows, s, "jpegls", d)
                                                for d in (0,) + tuple(bounds)], "o-", label=s)
    axes[0].set_xticks(np.arange(len(codecs)) + 0.4 - width / 2, [NAMES[c] for c in codecs], fontsize=8)
    axes[0].axhline(1.0, color="k", lw=0.5)
    axes[0].set_ylabel("lossless total bytes / JPEG-LS")
    axes[0].legend(fontsize=8)
    axes[1].axhline(1.0, color="k", lw=0.5)
    axes[1].axhline(0.85, color="r", lw=0.5, ls=":")
    axes[1].set_xlabel("max error D")
    axes[1].set_ylabel("ours / JPEG-LS NEAR = D (total bytes)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows, bounds, out: Path, header: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lossless.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows({k: r[k] for k in FIELDS} for r in rows)
    text = header + "\n\n" + markdown(rows, bounds)
    (out / "lossless.md").write_text(text + "\n")
    plot(rows, bounds, out / "lossless.png")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="test,volumes,cv", help="comma-separated: test, volumes, cv")
    ap.add_argument("--bounds", default="1,2,4", help="max errors D > 0 coded beside lossless ('' for none)")
    ap.add_argument("--volume-stride", type=int, default=1, help="code every n-th slice of the test volumes")
    ap.add_argument("--cv-side", type=int, default=256, help="centred crop side of the cross-validation images")
    ap.add_argument("--bundle", default=None, help="model bundle (default: the shipped one)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_lossless"))
    args = ap.parse_args(argv)
    bounds = tuple(int(b) for b in args.bounds.split(",") if b.strip())
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(sets) - {"test", "volumes", "cv"}
    if unknown:
        ap.error(f"unknown set(s) {sorted(unknown)}: expected test, volumes, cv")

    from edge_runtime.runtime import load_codec

    bundle, coder = load_codec(args.bundle)
    tile = int(bundle.manifest.get("tile", 2048))
    out = Path(args.out)
    rows = []
    t_start = time.time()
    commit = _git("rev-parse", "--short", "HEAD")
    header = (f"bench_lossless: sets {', '.join(sets)}; D = 0 and {bounds}; code at commit {commit}"
              f"{' + uncommitted changes' if _git('status', '--porcelain', 'edge_runtime') else ''}; "
              f"volume stride {args.volume_stride}; cross-validation crops {args.cv_side}², base qualities "
              f"{CV_QUALITIES} in the fit; times are single warm runs on a shared machine (rough)")
    for s in sets:
        if s == "test":
            items = [("test", n, im, coder) for n, im in test_images()]
        elif s == "volumes":
            items = [("volumes", n, im, coder) for n, im in volume_images(args.volume_stride)]
        else:
            items = []
            for modality, model, imgs in cv_folds(coder, args.cv_side):
                fold = copy.copy(coder)
                fold.residual = model
                items += [("cv", f"{n} ({modality})", im, fold) for n, im in imgs]
        for set_name, name, image, c in items:
            rows += measure(set_name, name, image, c, bundle.model_id, bounds, tile)
        write(rows, bounds, out, header)  # after each set: a long run leaves what it has
    text = write(rows, bounds, out, header + f"; {time.time() - t_start:.0f} s in all")
    print(text)
    print(f"wrote {out / 'lossless.csv'}, lossless.md, lossless.png")
    return 0


def _git(*args) -> str:
    import subprocess

    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
