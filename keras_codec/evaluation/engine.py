"""The evaluation engine: measure our codec and the classical codecs on the same images and compare them.

The layer between :mod:`~keras_codec.evaluation.baselines` (below it, with
:mod:`~keras_codec.evaluation.metrics`) and the presets that use it: ``keras-codec bench``
(:mod:`~keras_codec.evaluation.bench`, with the near-lossless section of
:mod:`~keras_codec.evaluation.bounded`), ``keras-codec eval`` (:mod:`~keras_codec.evaluation.evaluate`),
``keras-codec demo`` (:mod:`~keras_codec.evaluation.demo`) and the paper model's evaluation
(:mod:`~keras_codec.evaluation.paper`).

- images: :func:`image_sources` / :func:`read_sources` (paths, then Images) and
  :func:`evaluation_images` ((name, Image) pairs) on the corpus test split or a folder;
- our codec: :class:`OurCodec` codes whole images in memory with a bundle, through the edge
  runtime's TFLite graphs (or the Keras transforms); :func:`our_points` measures it at given
  quality levels, or walks the levels outward from a start until the PSNR leaves a window;
- classical codecs: :func:`classical_points` searches each codec's quality knob toward our
  PSNRs (:func:`keras_codec.evaluation.baselines.psnr_sweep`, one shared search), so every setting it tried
  is a point of its rate-distortion curve;
- comparison: :func:`compare_image` (one image, every codec), :func:`pareto` (the settings worth
  using), :func:`bpp_at` (log bpp interpolated over PSNR with PCHIP, the interpolation BD-rate
  integrates) and :func:`bd_rate` (Bjontegaard over 40-55 dB, :func:`keras_codec.evaluation.metrics.bd_rate`;
  negative = fewer bits than the anchor);
- output: :func:`write_csv`, :func:`plot_rd` and :func:`image_panel`, and the table cells.

Metrics are :mod:`keras_codec.evaluation.metrics`' (stored integers, PSNR over the dynamic range, SSIM with
the Gaussian window; multi-frame and RGB images are measured over all their planes); bpp counts
the whole pixel bitstream, headers included, metadata excluded.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.interpolate import PchipInterpolator

from data.corpus import corpus, load
from data.readers import list_images, read_image
from edge_runtime.bitstream import parse
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import QUALITY_LEVELS, decode_image, encode_image
from edge_runtime.runtime import load_codec
from edge_runtime.tflite_runner import MissingTFLiteError
from keras_codec.evaluation import baselines, metrics

__all__ = ["BD_RANGE", "CLASSICAL", "LABELS", "PAPER", "ImageResult", "OurCodec", "bd_line",
           "bd_overlap", "bd_rate", "bpp_at", "classical_codecs", "classical_points", "compare_image",
           "evaluation_images", "fmt_num", "fmt_pct", "image_panel", "image_sources", "mean_cell", "our_point",
           "our_points", "our_row", "paper_point", "pareto", "plot_rd", "read_sources", "safe_name", "walk_levels",
           "write_csv"]

BD_RANGE = (40.0, 55.0)
"""PSNR interval (dB) of every BD-rate (DESIGN.md)."""
MIN_OVERLAP = 5.0
"""A BD-rate over fewer dB than this (one codec cannot reach most of BD_RANGE) is shown flagged, not averaged."""
CLASSICAL = ("jpeg2000", "jpegxl", "jpegls")
LABELS = {"jpeg2000": "JPEG 2000", "jpegxl": "JPEG XL", "jpegls": "JPEG-LS"}
STYLES = {"jpeg2000": ("C1", "s--"), "jpegxl": ("C2", "^-."), "jpegls": ("C3", "d:")}
OUR_COLORS = ("C0", "C4", "C5", "C6", "C9")


@dataclass(frozen=True)
class PaperClaim:
    """The seed paper's reported operating point: PSNR, size reduction against the stored size, SSIM."""

    psnr: float = 46.0
    reduction: float = 0.68
    ssim: float = 0.91


PAPER = PaperClaim()


def paper_point(bits_allocated: int) -> dict:
    """The paper's claim on an image stored at `bits_allocated` bits per sample (its container).

    A 68 % reduction keeps 32 % of the stored size (DESIGN.md: CR at BitsAllocated), so
    bpp = 0.32 x bits allocated: 5.12 bpp for a 12-bit image in 16-bit words, 2.56 for 8-bit.
    """
    if int(bits_allocated) not in (8, 16):
        raise ValueError(f"bits_allocated must be 8 or 16 (the container's bits per sample), got {bits_allocated}")
    return {"bpp": (1.0 - PAPER.reduction) * int(bits_allocated), "psnr": PAPER.psnr, "ssim": PAPER.ssim}


# ----------------------------------------------------------------------------- images


def image_sources(folder=None) -> list:
    """(name, path) of the corpus test split, or of every candidate image file under `folder`."""
    if folder is None:
        return [(it.name, Path(it.path)) for it in corpus("test")]
    folder = Path(folder)
    return [(str(p.relative_to(folder)), p) for p in list_images(folder)]


def read_sources(sources, progress=print):
    """Yield (name, path, Image) for each source that reads; a file that does not is reported and skipped."""
    for name, path in sources:
        try:
            yield name, Path(path), read_image(path)
        except (ValueError, OSError, RuntimeError) as exc:
            progress(f"{name}: failed to read, skipped ({exc})")


def evaluation_images(folder=None):
    """(name, Image) pairs: the corpus test split, or every readable image under `folder`."""
    if folder is None:
        return [(it.name, load(it)) for it in corpus("test")]
    return [(str(p.relative_to(folder)), read_image(p)) for p in list_images(folder)]


def geometry(image) -> str:
    """'rows x cols', with samples and frames when there are several."""
    text = f"{image.rows}x{image.cols}"
    if image.samples > 1:
        text += f"x{image.samples}"
    if image.frames > 1:
        text += f", {image.frames} frames"
    return text


# ----------------------------------------------------------------------------- our codec


class OurCodec:
    """A model bundle coding whole images in memory, as the edge runtime does (same bytes as a .kcd file).

    ``backend``: "edge" (the bundle's TFLite graphs, as on a device), "keras" (the Keras transform
    layers, needs TensorFlow) or "auto" (edge when the bundle has TFLite graphs, else Keras).
    """

    name = "keras_codec"

    def __init__(self, bundle=None, backend: str = "auto", label: str | None = None, num_threads: int = 2):
        if backend not in ("auto", "edge", "keras"):
            raise ValueError(f"backend must be 'auto', 'edge' or 'keras', got {backend!r}")
        self.path = Path(default_bundle_path() if bundle is None else bundle)
        self.bundle = load_bundle(self.path)
        self.label = label or self.path.name
        self.coder = None
        if backend in ("auto", "edge"):
            try:
                self.coder = load_codec(self.bundle, num_threads=num_threads)[1]
                backend = "edge"
            except MissingTFLiteError:
                if backend == "edge":
                    raise
        if self.coder is None:
            # imported here: the model pulls TensorFlow, which the edge venv (keras-codec demo) does not have
            from keras_codec.models.default import DefaultCodec

            self.coder = DefaultCodec.from_bundle(self.bundle).coder
            backend = "keras"
        self.backend = backend

    @property
    def model_id(self) -> bytes:
        return self.bundle.model_id

    @property
    def runtime_codec(self):
        """The (Bundle, PlaneCoder) pair the edge runtime's file functions accept as `bundle`."""
        return self.bundle, self.coder

    def encode(self, image, quality: int, stats: dict | None = None) -> bytes:
        return encode_image(image, coder=self.coder, model_id=self.model_id, quality=int(quality),
                            tile=int(self.bundle.manifest.get("tile", 2048)), stats=stats)

    def decode(self, data: bytes):
        return decode_image(data, coder=self.coder, model_ids=[self.model_id])[0]

    def __repr__(self):
        return f"OurCodec({str(self.path)!r}, backend={self.backend!r})"


def our_row(codec: OurCodec, image, quality: int, decoded, n_bytes: int, encode_s: float, decode_s: float,
            real_over_estimate: float = math.nan) -> dict:
    """Every protocol metric of one decoded image under the standard names, plus model and quality."""
    m = metrics.evaluate(image.pixels, decoded.pixels, n_bytes, image.bits_stored, image.bits_allocated)
    return {"codec": codec.name, "model": codec.label, "quality": int(quality), "n_bytes": int(n_bytes), **m,
            "real_over_estimate": real_over_estimate, "encode_s": encode_s, "decode_s": decode_s}


def our_point(codec: OurCodec, image, quality: int) -> dict:
    """Encode and decode in memory at one quality and measure (bpp from the real stream's bytes)."""
    stats = {}
    t0 = time.perf_counter()
    data = codec.encode(image, quality, stats)
    t1 = time.perf_counter()
    decoded = codec.decode(data)
    t2 = time.perf_counter()
    # the entropy-coded payload against the model's estimate of it (the container header is in bpp)
    payload = sum(len(t) for t in parse(data)[1])
    return our_row(codec, image, quality, decoded, len(data), t1 - t0, t2 - t1, 8 * payload / stats["estimated_bits"])


def walk_levels(measure: Callable[[int], dict], levels, start: int | None = None, window=None,
                spacing: float | None = None) -> list:
    """Rows of `measure(q)` over quality levels: all of them, or those a walk through `window` visits.

    With a window (lo, hi) in dB, the walk starts at `start` (default: the middle level), goes down
    until the PSNR falls below lo and up until it rises above hi, so the window is covered and
    bracketed (the first level beyond each end is kept). Without `spacing` every level is visited;
    with it the stride adapts to the PSNR slope measured so far, to land about `spacing` dB apart
    (at most 4 levels per step). Rows come sorted by quality.
    """
    levels = sorted(int(q) for q in levels)
    if window is None:
        return [measure(q) for q in levels]
    lo, hi = window
    done: dict = {}

    def psnr_at(i):  # the measured row's PSNR at levels[i], each level measured once
        q = levels[i]
        if q not in done:
            done[q] = measure(q)
        return done[q]["psnr"]

    i0 = levels.index(start) if start in levels else len(levels) // 2
    for d in (-1, 1):
        i, prev = i0, None
        while True:
            v = psnr_at(i)
            if (d < 0 and v < lo) or (d > 0 and v > hi):
                break
            step = 1
            if spacing is not None:
                slope = 1.25  # dB per level before anything is measured (about the nominal 2 dB, halved)
                if prev is not None:
                    dv = abs(v - psnr_at(prev)) / abs(levels[i] - levels[prev])
                    slope = dv if math.isfinite(dv) and dv > 0 else slope
                step = int(min(4, max(1, round(spacing / slope))))
            j = min(max(i + d * step, 0), len(levels) - 1)
            if j == i:
                break
            prev, i = i, j
    return [done[q] for q in sorted(done)]


def our_points(codec: OurCodec, image, levels=None, start=None, window=None, spacing=None, measure=None) -> list:
    """Our rows on one image (see :func:`walk_levels`); `measure(q)` overrides the in-memory round trip."""
    measure = measure or (lambda q: our_point(codec, image, q))
    return walk_levels(measure, levels or QUALITY_LEVELS, start, window, spacing)


# ----------------------------------------------------------------------------- classical codecs and comparison


def classical_codecs(names=CLASSICAL) -> list:
    """Instances of the named classical codecs (:data:`CLASSICAL` by default), in that order."""
    known = {"jpeg2000": baselines.JPEG2000, "jpegxl": baselines.JPEGXL, "jpegls": baselines.JPEGLS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown classical codec(s) {unknown}; choose from {sorted(known)}")
    return [known[n]() for n in names]


def classical_points(codec, image, targets, tol: float = 0.1, with_ssim: bool = False) -> list:
    """Rate-distortion rows of a classical codec on an Image, searched toward each PSNR target.

    Every setting tried is a row (fewest bytes first). JPEG-LS's NEAR is an integer, so a target
    usually falls between two NEAR values: the rows bracket it and :func:`bpp_at` interpolates.
    """
    rows = baselines.psnr_sweep(codec, image.pixels, targets, tol=tol, bits_stored=image.bits_stored,
                                with_ssim=with_ssim)
    bits = image.bits_allocated
    for r in rows:
        cr = metrics.compression_ratio(r["n_bytes"], image.rows, image.cols, image.frames, image.samples, bits)
        r.update(cr=cr, reduction=metrics.reduction(cr))
    return rows


def pareto(rows) -> list:
    """The rows no other row beats (as few bytes and as high a PSNR), fewest bytes first; lossless rows dropped.

    These are the settings a user of the codec would pick, so curves, interpolation and BD-rate use them.
    """
    finite = sorted((r for r in rows if math.isfinite(r["psnr"]) and r["bpp"] > 0),
                    key=lambda r: (r["bpp"], -r["psnr"]))
    front, best = [], -math.inf
    for r in finite:
        if r["psnr"] > best:
            front.append(r)
            best = r["psnr"]
    return front


def bpp_at(rows, psnr: float) -> float:
    """bpp of a curve at a PSNR: log bpp interpolated over PSNR (PCHIP) on its Pareto front; nan outside it."""
    front = pareto(rows)
    if not front or not math.isfinite(psnr):
        return math.nan
    p = np.array([r["psnr"] for r in front])
    b = np.log([r["bpp"] for r in front])
    if psnr < p[0] - 1e-9 or psnr > p[-1] + 1e-9:
        return math.nan
    if len(front) == 1:
        return float(np.exp(b[0]))
    return float(np.exp(PchipInterpolator(p, b)(min(max(psnr, p[0]), p[-1]))))


def bd_rate(test_rows, anchor_rows, psnr_range=BD_RANGE) -> float:
    """BD-rate (%) of the test curve against the anchor over `psnr_range`, on their Pareto fronts; nan if no overlap."""
    a, t = pareto(anchor_rows), pareto(test_rows)
    return metrics.bd_rate([r["bpp"] for r in a], [r["psnr"] for r in a], [r["bpp"] for r in t],
                           [r["psnr"] for r in t], *psnr_range)


def bd_overlap(test_rows, anchor_rows, psnr_range=BD_RANGE) -> float:
    """Width in dB of the PSNR interval a BD-rate integrates over (0 when the curves do not overlap)."""
    a, t = pareto(anchor_rows), pareto(test_rows)
    if len(a) < 2 or len(t) < 2:
        return 0.0
    lo = max(a[0]["psnr"], t[0]["psnr"], psnr_range[0])
    hi = min(a[-1]["psnr"], t[-1]["psnr"], psnr_range[1])
    return max(hi - lo, 0.0)


def in_window(rows, window) -> list:
    """Rows inside the PSNR window plus the nearest one beyond each end (what a plot of the window needs)."""
    lo, hi = window
    rows = sorted(rows, key=lambda r: r["psnr"])
    inside = [r for r in rows if lo <= r["psnr"] <= hi]
    below = [r for r in rows if r["psnr"] < lo][-1:]
    above = [r for r in rows if r["psnr"] > hi][:1]
    return below + inside + above


@dataclass
class ImageResult:
    """Everything measured on one image: our rows per model, each classical codec's rows, and notes."""

    name: str
    path: str
    modality: str
    geometry: str
    bits_stored: int
    bits_allocated: int
    ours: dict = field(default_factory=dict)  # model label -> rows
    classical: dict = field(default_factory=dict)  # codec name -> rows
    notes: list = field(default_factory=list)
    lossless: dict = field(default_factory=dict)  # codec name -> bpp

    def bd(self, model: str, codec: str) -> float:
        if model not in self.ours or codec not in self.classical:
            return math.nan
        return bd_rate(self.ours[model], self.classical[codec])

    def bd_cell(self, model: str, codec: str) -> str:
        """The BD-rate as text; flagged with † when the curves overlap less than MIN_OVERLAP dB."""
        v = self.bd(model, codec)
        if not math.isfinite(v):
            return "n/a"
        span = bd_overlap(self.ours[model], self.classical[codec])
        return fmt_pct(v) + (f" † ({span:.1f} dB)" if span < MIN_OVERLAP else "")

    def bd_for_mean(self, model: str, codec: str) -> float:
        """The BD-rate when its overlap is at least MIN_OVERLAP dB, else nan (left out of means)."""
        v = self.bd(model, codec)
        if not math.isfinite(v) or bd_overlap(self.ours[model], self.classical[codec]) < MIN_OVERLAP:
            return math.nan
        return v

    def rows(self) -> list:
        """Every row, ours then classical, with the image's name and modality first."""
        out = []
        for group in (self.ours, self.classical):
            for rows in group.values():
                out += [{"image": self.name, "modality": self.modality, **r} for r in rows]
        return out


def compare_image(name, image, models, classical, *, levels=None, start=None, window=None, spacing=None,
                  tol: float = 0.1, with_ssim: bool = True, targets_window=None, target_spacing: float = 0.0,
                  measure=None, path="", progress=print) -> ImageResult:
    """Our rows for each model, then each classical codec searched toward our PSNRs, on one Image.

    Classical targets: our finite PSNRs (those inside `targets_window` when given) and the ends
    of BD_RANGE, so every curve covers the BD interval where the codec can; targets closer than
    `target_spacing` dB to the previous one are dropped (the curve is interpolated between its
    points anyway, and each target costs a few encodes). A classical codec
    that cannot take this image (sample type, bit depth) is left out with a note. `measure(codec,
    q)` overrides our in-memory round trip (the demo codes one level through files).
    """
    res = ImageResult(name=name, path=str(path), modality=image.modality, geometry=geometry(image),
                      bits_stored=image.bits_stored, bits_allocated=image.bits_allocated)
    psnrs = set()
    for codec in models:
        t0 = time.perf_counter()
        hook = (lambda q, c=codec: measure(c, q)) if measure else None
        rows = our_points(codec, image, levels, start, window, spacing, measure=hook)
        res.ours[codec.label] = rows
        finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
        psnrs.update(finite)
        span = f"{min(finite):.1f}-{max(finite):.1f} dB" if finite else "no finite PSNR"
        progress(f"{name:36s} {codec.label:>14s}: {len(rows)} levels, {span}, {time.perf_counter() - t0:.1f} s")
    if targets_window is not None:
        psnrs = {p for p in psnrs if targets_window[0] <= p <= targets_window[1]}
    targets = thin(sorted(psnrs | set(BD_RANGE)), target_spacing)
    for codec in classical:
        t0 = time.perf_counter()
        try:
            rows = classical_points(codec, image, targets, tol=tol, with_ssim=with_ssim)
        except Exception as exc:  # noqa: BLE001 - an external codec refusing this input is a note, not a stop
            note = f"{LABELS.get(codec.name, codec.name)} left out: {exc}"
            res.notes.append(note)
            progress(f"{name:36s} {codec.name:>14s}: {note}")
            continue
        front = pareto(rows)
        if not front:
            note = f"{LABELS.get(codec.name, codec.name)} left out: no lossy setting reached {targets[0]:.1f} dB"
            res.notes.append(note)
            progress(f"{name:36s} {codec.name:>14s}: {note}")
            continue
        res.classical[codec.name] = rows
        span = f"{front[0]['psnr']:.1f}-{front[-1]['psnr']:.1f} dB" if front else "no lossy point"
        progress(f"{name:36s} {codec.name:>14s}: {len(rows)} settings, {span}, {time.perf_counter() - t0:.1f} s")
    return res


def thin(values, spacing: float) -> list:
    """Sorted values, each at least `spacing` above the previous one kept (the first and last always kept)."""
    values = sorted(values)
    if spacing <= 0 or len(values) < 3:
        return values
    kept = [values[0]]
    for v in values[1:-1]:
        if v - kept[-1] >= spacing and values[-1] - v >= spacing:
            kept.append(v)
    return kept + [values[-1]]


def bd_line(res: ImageResult, model: str) -> str:
    parts = [f"vs {LABELS[c]} {res.bd_cell(model, c)}" for c in res.classical]
    return f"{res.name} [{model}]: BD-rate ({BD_RANGE[0]:.0f}-{BD_RANGE[1]:.0f} dB) " + ", ".join(parts)


def fmt_pct(v: float) -> str:
    return f"{v:+.1f} %" if math.isfinite(v) else "n/a"


def fmt_num(v, spec: str) -> str:
    """format(v, spec), or a dash (padded to the spec's width) for None, nan and inf."""
    if v is not None and math.isfinite(v):
        return format(v, spec)
    width = spec.split(".")[0]
    return "—".rjust(int(width)) if width.isdigit() else "—"


def mean_finite(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


# ----------------------------------------------------------------------------- files


def write_csv(path: Path, rows: list) -> None:
    """Rows (dicts) to a CSV with the union of their keys, written atomically."""
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def safe_name(name: str) -> str:
    """A file-name stem from an image name (folders and extension dropped, odd characters replaced)."""
    stem = Path(name).name.rsplit(".", 1)[0] if "." in Path(name).name else Path(name).name
    prefix = "_".join(Path(name).parent.parts)
    stem = f"{prefix}_{stem}" if prefix else stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def plot_rd(path: Path, panels: list, window=None, ncols: int | None = None) -> None:
    """Rate-distortion panels in one PNG (log bpp against dynamic-range PSNR).

    Each panel is (title, curves, markers): curves are (label, rows, codec name, color index);
    markers are (label, bpp, psnr), drawn as black stars (the seed paper's claim).
    """
    import matplotlib  # plots only: loaded when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    n = max(len(panels), 1)
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, curves, markers) in zip(axes.flat, panels):
        for label, rows, codec, k in curves:
            pts = pareto(rows) if codec in STYLES else sorted(
                (r for r in rows if math.isfinite(r["psnr"])), key=lambda r: r["quality"])
            if window is not None:
                pts = in_window(pts, window)
                pts = sorted(pts, key=lambda r: r["bpp"])
            if not pts:
                continue
            color, style = STYLES.get(codec, (OUR_COLORS[k % len(OUR_COLORS)], "o-"))
            ax.plot([r["bpp"] for r in pts], [r["psnr"] for r in pts], style, color=color, ms=3.5, lw=1.2,
                    label=label)
        for label, bpp, psnr in markers:
            ax.plot([bpp], [psnr], "*", color="black", ms=13, label=label)
        ax.axhspan(*BD_RANGE, color="0.92", zorder=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.set_xlabel("bpp (log scale)")
        ax.set_ylabel("PSNR (dB, dynamic range)")
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _minor_label(v, _) -> str:
    """Label the 2x and 5x minor ticks of a log axis (a curve often spans less than a decade)."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def image_panel(res: ImageResult, window=None, with_paper: bool = True, title_extra: str = ""):
    """The plot_rd panel of one image: our curve per model, each classical curve, the paper's point."""
    curves = [(f"ours ({m})" if len(res.ours) > 1 else "keras_codec (ours)", rows, "ours", k)
              for k, (m, rows) in enumerate(res.ours.items())]
    curves += [(LABELS[c], rows, c, 0) for c, rows in res.classical.items()]
    markers = []
    if with_paper:
        pp = paper_point(res.bits_allocated)
        markers.append((f"seed paper claim ({PAPER.psnr:.0f} dB, {100 * PAPER.reduction:.0f} % smaller, "
                        f"SSIM {PAPER.ssim})", pp["bpp"], pp["psnr"]))
    bds = "; ".join(f"{LABELS[c]} {res.bd_cell(m, c)}" for m in res.ours for c in res.classical)
    title = f"{res.name} ({res.modality}, {res.geometry}){title_extra}\nBD-rate vs {bds}" if bds else \
        f"{res.name} ({res.modality}, {res.geometry}){title_extra}"
    return title, curves, markers


def mean_cell(results, model: str, codec: str) -> str:
    values = [res.bd_for_mean(model, codec) for res in results]
    n = sum(math.isfinite(v) for v in values)
    text = fmt_pct(mean_finite(values))
    return text + (f" ({n} of {len(values)})" if 0 < n < len(values) else "")
