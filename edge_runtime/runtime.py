"""File-level encode / decode / info / verify for the edge (what `edge-codec` runs), TensorFlow-free.

    encode_file  DICOM / PNG / TIFF -> .kcd (the DICOM header, without pixel data, rides along)
    decode_file  .kcd -> .dcm (identity kept, new SOP Instance UID, marked lossy) / .png / .tif
    info         what a .kcd holds, from its header (no model needed)
    verify       CRC, model id held by the bundle, and a full decode

Outputs are written atomically (temporary file, fsync, move), never over an existing file
unless `force`, and never over the input. A folder of single-slice files of one series is coded
into one stream and decoded back to one file per slice by edge_runtime.series.

A decode imports only what it runs (the image readers, colour, padding and series modules when the
stream needs them) and loads the bundle without walking the encoder graph (bundle.DECODE_GRAPHS): start-up
is most of a one-image `edge-codec decode`.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from data.image import InvalidImageError
from data.writers import DEFAULT_LOSSY_METHOD, note_source_compression, write_dicom, write_png, write_tiff
from edge_runtime import DEFAULT_QUALITY
from edge_runtime import bitstream as bs
from edge_runtime.bundle import DECODE_GRAPHS, Bundle, default_bundle_path, load_bundle, shipped_bundle_for
from edge_runtime.codec import QUALITY_LEVELS, PlaneCoder, decode_frames, decode_image, encode_image
from edge_runtime.threads import keep_freed_memory
from edge_runtime.tflite_runner import transforms_for_bundle

__all__ = ["DEFAULT_QUALITY", "LOSSY_METHOD", "choose_operating_point", "decode_file", "encode_file", "info",
           "load_codec", "pixel_stream_bytes", "psnr", "verify"]

LOSSY_METHOD = DEFAULT_LOSSY_METHOD
DECODE_SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff")

# DICOM elements left out of the metadata block: the pixels themselves (and their float forms).
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)


def load_codec(bundle_path=None, kernels: str = "xnnpack", num_threads: int = 2) -> tuple[Bundle, PlaneCoder]:
    """The bundle (default: the one shipped in edge_runtime/models/default) and a coder over its TFLite graphs.

    `bundle_path` may also be an already loaded Bundle.
    """
    if isinstance(bundle_path, Bundle):
        bundle = bundle_path
    else:
        bundle = load_bundle(default_bundle_path() if bundle_path is None else bundle_path)
    transforms = transforms_for_bundle(bundle, kernels=kernels, num_threads=num_threads)
    keep_freed_memory()
    coder = PlaneCoder(bundle.manifest["codec"], bundle.coding, transforms, bundle.residual, bundle.refine,
                       max_tile=int(bundle.manifest.get("tile", 2048)))
    coder.loaded_with = (kernels, int(num_threads))  # how an earlier shipped bundle is loaded beside it (_codec)
    return bundle, coder


def load_worker_codec(bundle_path=None, kernels: str = "xnnpack") -> tuple[Bundle, PlaneCoder]:
    """load_codec for a worker process or thread that shares the CPUs with others (batch, cluster, plane pools):
    one TFLite thread, lossless JPEG 2000 sources decoded on one thread (data.j2k_decoder), and no refinement helper
    process (edge_runtime.overlap): the other CPUs are busy with other files or frames."""
    from data import j2k_decoder
    from edge_runtime import overlap

    j2k_decoder.set_threads(1)
    overlap.disable()
    return load_codec(bundle_path, kernels=kernels, num_threads=1)


def _codec(bundle, kernels: str, data: bytes | None = None, source=None) -> tuple[Bundle, PlaneCoder]:
    """Accept a loaded (Bundle, PlaneCoder) pair, a bundle path, or None (default bundle).

    With a stream (`data`), its model id is checked against the bundle before the TFLite graphs
    are loaded, so a stream from another model says so (not that the bundle lacks graphs); the
    bundle is then loaded to decode, its encoder graph unchecked (bundle.DECODE_GRAPHS).

    The default bundle, by None or loaded, also decodes the streams of the earlier defaults shipped beside it
    (bundle.MODELS_DIR): a stream carrying one of their ids gets that bundle, loaded once per process with the
    kernels and threads of the default's coder (_earlier_shipped). A bundle given by its path decodes its own
    streams only.
    """
    if isinstance(bundle, tuple):
        if data is not None and bs.stream_model_id(data) not in bundle[0].model_ids and _is_default(bundle[0]):
            kernels_, threads = getattr(bundle[1], "loaded_with", (kernels, 2))
            return _earlier_shipped(data, kernels_, threads) or bundle  # none: decode_image says whose it is
        return bundle
    path = default_bundle_path() if bundle is None else bundle
    if data is None:
        return load_codec(load_bundle(path), kernels=kernels)
    b = load_bundle(path, graphs=DECODE_GRAPHS)
    try:
        bs.parse(data, source=source, expected_model_ids=b.model_ids)
    except bs.InvalidBitstreamError:
        earlier = _earlier_shipped(data, kernels, 2) if bundle is None else None
        if earlier is not None:
            return earlier
        b.check_graphs()  # a damaged graph changes the model id: name that file, as a full load would
        raise
    return load_codec(b, kernels=kernels)


_EARLIER = {}
"""{(bundle folder, kernels, TFLite threads): (Bundle, PlaneCoder)}: the earlier shipped bundles this process decoded
with (_codec), each loaded once, as a batch worker loads its default once."""


def _is_default(bundle: Bundle) -> bool:
    try:
        return bundle.path.resolve() == default_bundle_path().resolve()
    except OSError:
        return False


def _earlier_shipped(data: bytes, kernels: str, num_threads: int):
    """The (Bundle, PlaneCoder) of the earlier shipped default that made the stream `data`, or None (no stream id,
    the default's own, or a model not shipped)."""
    model_id = bs.stream_model_id(data)
    path = shipped_bundle_for(model_id) if model_id is not None else None
    if path is None or path == default_bundle_path():
        return None
    key = (path, kernels, int(num_threads))
    if key not in _EARLIER:
        _EARLIER[key] = load_codec(load_bundle(path, graphs=DECODE_GRAPHS), kernels=kernels, num_threads=num_threads)
    return _EARLIER[key]


@contextlib.contextmanager
def _plane_pool(bundle: Bundle, kernels: str, planes: int, jobs: int | None):
    """The `plane_map` of worker processes for an image of `planes` planes, or None (this process)."""
    if planes < 2 or jobs == 1:  # nothing to share out: spare the import of multiprocessing
        yield None
        return
    from edge_runtime import pool

    n = pool.default_jobs(planes) if jobs is None else min(int(jobs), planes)
    if n <= 1:
        yield None
        return
    with pool.PlanePool(bundle.path, kernels, n) as workers:
        yield workers.map


def _check_output(in_path: Path, out_path: Path, force: bool) -> None:
    """Refuse to write over the input (even with force) or over an existing file without force."""
    if out_path.exists() and (out_path.resolve() == in_path.resolve() or os.path.samefile(in_path, out_path)):
        raise ValueError(f"{out_path}: is the input file; choose another output name")
    if out_path.is_dir():
        raise IsADirectoryError(f"{out_path}: is a folder; give a file name to write to")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: already exists; use --force (force=True) to replace it")


def dicom_metadata(dataset) -> bytes:
    """The data set without pixel data and without file meta, as DICOM bytes (Explicit VR Little Endian)."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = Dataset()
    for elem in dataset:
        if int(elem.tag) not in _PIXEL_TAGS and elem.tag.group != 0x0002:
            ds.add(elem)
    note_source_compression(ds, dataset)  # the transfer syntax (file meta) is not kept: its lossy step is
    last = None
    for implicit in (False, True):
        buf = io.BytesIO()
        try:
            pydicom.dcmwrite(buf, ds, implicit_vr=implicit, little_endian=True)
            return buf.getvalue()
        except Exception as exc:  # pydicom raises many kinds for odd elements
            last = exc
    raise InvalidImageError(getattr(dataset, "filename", None),
                            f"its DICOM header cannot be re-encoded to keep it in the stream ({last})")


def encode_file(in_path, out_path, quality: int | None = None, bundle=None, force: bool = False,
                kernels: str = "xnnpack", max_error: int | None = None, target_psnr: float | None = None,
                target_bpp: float | None = None, jobs: int | None = None, group: int | None = None,
                fast: bool = False) -> dict:
    """Encode one image file to a .kcd file; returns a summary (bytes, bpp, ratio, what was chosen).

    At most one of: `quality` (lossy, default DEFAULT_QUALITY), `max_error` (every pixel within
    D stored units; 0 = lossless), `target_psnr` / `target_bpp` (rate control: see
    choose_operating_point). An error-bounded stream is decoded and checked pixel by pixel
    before it is written (a lossless tile without a base is read with the contexts its encoder computed:
    edge_runtime.direct.LosslessCheck). `bundle`: a bundle folder, a loaded (Bundle, PlaneCoder) pair, or
    None for the default. `jobs`: worker processes for the planes of a multi-frame image
    (edge_runtime.pool; None: one per CPU when the image has pool.MIN_PLANES planes or more).
    A PALETTE COLOR image is coded as its indices when lossless, and whatever was asked when its tables
    hold 16-bit colours ("palette_kept" in the summary; edge_runtime.colour says why).
    `group`: frames per group of a multi-frame image (codec.encode_image; None: codec.DEFAULT_GROUP),
    the most frames a viewer decodes to reach any one; 1 codes every frame on its own.
    `fast`: error-bounded tiles (a max error, or a target beyond the finest quality) are coded without a base only
    (codec.encode_image's base quality 0: no base-quality search), several times faster to encode, a few per cent
    more bytes on noisy images; the same format.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    check_encode_request(out_path, quality=quality, max_error=max_error, target_psnr=target_psnr,
                         target_bpp=target_bpp, fast=fast)
    if not in_path.exists():
        raise FileNotFoundError(f"{in_path}: no such file")
    _check_output(in_path, out_path, force)
    from edge_runtime import colour
    from edge_runtime.frames import read_for_encode

    image = read_for_encode(in_path)  # a multi-frame DICOM's frames decoded group by group (edge_runtime.frames)
    indices = colour.palette_indices(image, lossless=max_error == 0)
    if indices is not None:  # PALETTE COLOR kept: its indices, losslessly (edge_runtime.colour says when)
        image, quality, max_error, target_psnr, target_bpp = indices, None, 0, None, None
    metadata = dicom_metadata(image.dataset) if image.dataset is not None else None
    options = group_options(group)
    padding = pixel_padding(image)
    if padding is not None:
        options["padding"] = padding
    return encode_loaded(image, metadata, in_path, out_path, quality=quality, bundle=bundle, force=force,
                         kernels=kernels, max_error=max_error, target_psnr=target_psnr, target_bpp=target_bpp,
                         jobs=jobs, codec_options=options, fast=fast)


def pixel_padding(image):
    """(Pixel Padding Value, Range Limit) of a grey DICOM image, in stored units, or None (edge_runtime.padding)."""
    from edge_runtime import padding

    return padding.from_dataset(image.dataset, image.samples)


def group_options(group: int | None, series: bool = False) -> dict:
    """encode_image keywords for a group length asked for (1: every frame on its own)."""
    if group is None:
        return {"series": True} if series else {}
    if isinstance(group, bool) or int(group) != group or group < 1:
        raise ValueError(f"group must be a whole number of frames >= 1, got {group!r}")
    options = {"inter": False} if group == 1 else {"group": int(group)}
    return {**options, "series": True} if series else options


def check_encode_request(out_path, *, quality=None, max_error=None, target_psnr=None, target_bpp=None,
                         fast: bool = False) -> None:
    """At most one setting, `fast` only with one that may code error-bounded tiles, and a .kcd output name
    (ValueError otherwise)."""
    given = [n for n, v in (("quality", quality), ("max error", max_error), ("target PSNR", target_psnr),
                            ("target bpp", target_bpp)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"choose one of quality, max error, target PSNR and target bpp (got {', '.join(given)})")
    if fast and max_error is None and target_psnr is None and target_bpp is None:
        raise ValueError("fast codes error-bounded tiles without a base: give a max error (or a target PSNR or bpp); "
                         "a lossy quality has no base search to skip")
    if Path(out_path).suffix.lower() != ".kcd":
        raise ValueError(f"{out_path}: a keras_codec stream is written as .kcd; name the output *.kcd")


def encode_loaded(image, metadata, in_path, out_path, *, quality=None, bundle=None, force: bool = False,
                  kernels: str = "xnnpack", max_error=None, target_psnr=None, target_bpp=None, jobs=None,
                  codec_options: dict | None = None, fast: bool = False) -> dict:
    """encode_file's work on an image already read (`in_path` names its source in messages and the summary):
    `metadata` is the block to carry, `codec_options` more encode_image keywords (a series: series=True)."""
    in_path, out_path = Path(in_path), Path(out_path)
    codec_options = dict(codec_options or {})
    b, coder = _codec(bundle, kernels)
    b.check_graphs()  # a bundle loaded to decode (bundle.DECODE_GRAPHS) has its encoder graph checked now
    tile = int(b.manifest.get("tile", 2048))

    with _plane_pool(b, kernels, image.frames * image.samples, jobs) as plane_map:
        def encode(q, d):
            q = 0 if fast and d is not None else q  # error-bounded tiles without a base only
            return encode_image(image, coder=coder, model_id=b.model_id, quality=q, tile=tile, metadata=metadata,
                                max_error=d, plane_map=plane_map, **codec_options)

        if target_psnr is not None or target_bpp is not None:  # every bounded point is checked as it is tried
            point = choose_operating_point(image, encode, coder, target_psnr=target_psnr, target_bpp=target_bpp,
                                           source=in_path, plane_map=plane_map)
            data = point.pop("data")
        else:
            if max_error is None and quality is None:
                quality = DEFAULT_QUALITY
            data = encode(None if max_error is not None else int(quality), max_error)
            point = {}
            if max_error is not None:
                err, _ = compare_stream(image, data, coder, plane_map=plane_map, model_ids=[b.model_id])
                _raise_over_bound(err, max_error, in_path)
    bs.atomic_write_bytes(out_path, data, overwrite=force)
    header, tiles, _ = bs.parse(data)
    pixel_bytes = pixel_stream_bytes(data, header, tiles)
    samples = image.rows * image.cols * image.frames * image.samples
    return {"input": str(in_path), "output": str(out_path), "bytes": len(data), "pixel_bytes": pixel_bytes,
            "bpp": 8.0 * pixel_bytes / samples, "ratio": _stored_bytes(image.pixels.dtype.itemsize, samples) / pixel_bytes,
            "has_metadata": metadata is not None, "mode": _mode(header),
            "quality": header.quality if not header.error_bounded else None,
            "max_error": header.max_error if header.error_bounded else None,
            "palette_kept": header.photometric == bs.PALETTE, **point}


def _mode(header) -> str:
    if header.lossless:
        return "lossless"
    return f"max error {header.max_error}" if header.error_bounded else "lossy"


def _raise_over_bound(err: int, max_error: int, source) -> None:
    """Refuse a stream that decodes beyond its bound before it is written (never write a broken promise)."""
    if err > max_error:
        raise RuntimeError(f"{source}: the coded stream decodes with max error {err} > {max_error}; "
                           "nothing was written")


def compare_stream(image, data: bytes, coder, plane_map=None, model_ids=None) -> tuple[int, float]:
    """(max abs error, PSNR as :func:`psnr`) of a stream against `image`, decoded and compared group by group,
    so memory is bounded by a group (a series' slices are read again as they are compared)."""
    err, sse, lo, hi = 0, 0, None, None
    for first, frames in decode_frames(data, coder=coder, model_ids=model_ids, plane_map=plane_map):
        orig = np.asarray(image.pixels[first:first + len(frames)]).astype(np.int64)
        diff = np.asarray(frames).astype(np.int64) - orig
        err = max(err, int(np.abs(diff).max()))
        sse += int(np.einsum("i,i->", diff.ravel(), diff.ravel()))
        lo = int(orig.min()) if lo is None else min(lo, int(orig.min()))
        hi = int(orig.max()) if hi is None else max(hi, int(orig.max()))
    return err, _range_psnr(sse / image.pixels.size, hi - lo)


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR over the original's dynamic range (DESIGN.md's protocol), inf when exact."""
    a, b = original.astype(np.float64), decoded.astype(np.float64)
    return _range_psnr(float(np.mean((a - b) ** 2)), float(a.max() - a.min()))


def _range_psnr(mse: float, dynamic_range: float) -> float:
    """10 log10(R² / MSE) with R the original's dynamic range (at least 1), inf when exact."""
    r = max(float(dynamic_range), 1.0)
    return float("inf") if mse == 0 else float(10.0 * np.log10(r * r / mse))


BOUND_STEPS = (0, 1, 2, 4, 8, 16, 32, 64)
"""Error bounds rate control tries beyond the finest lossy quality (largest bound first for a PSNR target)."""


def choose_operating_point(image, encode, coder, target_psnr: float | None = None,
                           target_bpp: float | None = None, source=None, plane_map=None) -> dict:
    """Rate control: the quality level, or beyond the finest one the error bound, that meets the target.

    target PSNR P: the lowest quality whose decoded PSNR is >= P (bisection over the levels);
    if even the finest falls short, the largest bound D in BOUND_STEPS whose PSNR is >= P
    (D = 0, lossless, always is). target bpp B: the highest quality whose bpp is <= B; if
    even the finest is below B, the smallest bound that fits in B bits per sample. Returns
    {"data", "quality", "max_error", "psnr", "bpp", "target"}; ValueError when unreachable.
    `encode(quality, max_error)` gives the stream; every error-bounded one is checked against
    its bound on the decode that measures it.
    """
    if (target_psnr is None) == (target_bpp is None):
        raise ValueError("give exactly one of target PSNR and target bpp")
    samples = image.pixels.size
    tried = {}

    def point(q, d):
        if (q, d) not in tried:
            data = encode(q, d)
            err, value = compare_stream(image, data, coder, plane_map=plane_map)
            if d is not None:
                _raise_over_bound(err, d, source)
            tried[(q, d)] = {"data": data, "quality": q, "max_error": d, "psnr": value,
                             "bpp": 8.0 * pixel_stream_bytes(data) / samples}
        return tried[(q, d)]

    if target_psnr is not None:
        ok = lambda r: r["psnr"] >= target_psnr
        target = {"psnr": float(target_psnr)}
    else:
        if target_bpp <= 0:
            raise ValueError(f"target bpp must be > 0, got {target_bpp}")
        ok = lambda r: r["bpp"] <= target_bpp
        target = {"bpp": float(target_bpp)}
    levels = list(QUALITY_LEVELS)
    if target_psnr is not None:
        if ok(point(levels[-1], None)):  # lowest level meeting the PSNR
            lo, hi = 0, len(levels) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if ok(point(levels[mid], None)) else (mid + 1, hi)
            return {**point(levels[lo], None), "target": target}
        for d in sorted(BOUND_STEPS, reverse=True):
            if ok(point(None, d)):
                return {**point(None, d), "target": target}
    else:
        if not ok(point(levels[0], None)):
            raise ValueError(f"cannot reach {target_bpp} bpp: the lowest quality needs {point(levels[0], None)['bpp']:.3f}")
        if not ok(point(levels[-1], None)):  # highest level within the budget
            lo, hi = 0, len(levels) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if ok(point(levels[mid], None)) else (lo, mid - 1)
            return {**point(levels[lo], None), "target": target}
        for d in sorted(BOUND_STEPS):
            if ok(point(None, d)):
                return {**point(None, d), "target": target}
        return {**point(levels[-1], None), "target": target}
    raise ValueError(f"cannot reach {target_psnr} dB")  # unreachable: D = 0 is lossless


def _stored_bytes(itemsize: int, samples: int) -> int:
    return itemsize * samples


def pixel_stream_bytes(data: bytes, header=None, tiles=None) -> int:
    """Bytes of the stream without its metadata block (DESIGN.md: bpp and CR exclude metadata)."""
    if tiles is None:
        header, tiles, _ = bs.parse(data)
    return len(bs.pack(header, tiles, None))


def decode_file(in_path, out_path, force: bool = False, bundle=None, kernels: str = "xnnpack",
                jobs: int | None = None) -> dict:
    """Decode a .kcd file to DICOM (.dcm), PNG or TIFF, chosen by the output's extension.

    `jobs`: worker processes for the planes of a multi-frame stream, as in encode_file."""
    in_path, out_path = Path(in_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in DECODE_SUFFIXES:
        raise ValueError(f"{out_path}: cannot tell the output format from {suffix or 'no extension'!r}; "
                         f"use .dcm, .png or .tif")
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path}: no such file")
    _check_output(in_path, out_path, force)
    data = in_path.read_bytes()
    header, tiles, metadata = bs.parse(data, source=in_path)  # CRC and structure before any model work
    if _is_series(header, metadata, in_path):
        if suffix in (".dcm", ".dicom"):
            raise ValueError(f"{in_path}: is a series of {header.frames} slices, decoded to one DICOM file per "
                             f"slice: give an output folder (edge-codec decode {in_path.name} OUTDIR/)")
        metadata = None  # the slices' headers: no one header for a PNG or TIFF
    b, coder = _codec(bundle, kernels, data, in_path)
    if suffix == ".png" and header.frames > 1:
        raise ValueError(f"{out_path}: PNG holds one frame and this stream has {header.frames}; write .tif or .dcm")
    with _plane_pool(b, kernels, header.frames * header.samples, jobs) as plane_map:
        image, header = decode_image(data, coder=coder, model_ids=b.model_ids, source=in_path, plane_map=plane_map)
    if suffix in (".dcm", ".dicom"):
        ratio = _stored_bytes(image.pixels.dtype.itemsize, image.pixels.size) / pixel_stream_bytes(data, header, tiles)
        write_decoded_dicom(out_path, image, header, ratio, metadata, lambda: _dataset_from_metadata(metadata, in_path),
                            force)
    else:
        if header.photometric == bs.PALETTE:  # PNG and TIFF get the colours, through the stream's tables
            from edge_runtime import colour

            if metadata is None:
                raise bs.InvalidBitstreamError(in_path, "PALETTE COLOR indices without the DICOM header that "
                                                        "holds their lookup tables: no colours to write")
            image = colour.expand_palette(image, _dataset_from_metadata(metadata, in_path))
        (write_png if suffix == ".png" else write_tiff)(out_path, image, overwrite=force)
    return {"input": str(in_path), "output": str(out_path), "rows": image.rows, "cols": image.cols,
            "frames": image.frames, "samples": image.samples, "has_metadata": metadata is not None}


def write_decoded_dicom(out_path, image, header, ratio: float, metadata, parse, force: bool) -> None:
    """A decoded image as DICOM: lossless, or lossy at compression `ratio`, as the stream's `header` says. Its
    source's header is written back from the bytes `metadata` (a stream's block, or a series slice's blocks)
    without pydicom where data.dicom_bytes can, else from the data set `parse()` gives; a new data set when
    `metadata` is None."""
    from data.writers import write_dicom_from_header  # looked up per call: the tests swap it for the parsed path

    how = {"mark_lossless": True} if header.lossless else {
        "lossy": True, "ratio": ratio, "method": LOSSY_METHOD, "derivation": _derivation(header, ratio)}
    if metadata is None or not write_dicom_from_header(out_path, metadata, image, overwrite=force, **how):
        if metadata is not None:
            image.dataset = parse()
        write_dicom(out_path, image, overwrite=force, **how)


def _is_series(header, metadata, source) -> bool:
    """series.is_series, importing edge_runtime.series only for a stream flagged as one."""
    if not header.series:
        return False
    from edge_runtime import series

    return series.is_series(header, metadata, source)


def _derivation(header, ratio: float) -> str:
    """Derivation Description (0008,2111) of a lossy decode: method, setting and ratio."""
    how = (f"every pixel within {header.max_error} of the original" if header.error_bounded
           else f"quality {header.quality}")
    return f"Lossy compression with keras_codec ({LOSSY_METHOD}), {how}, compression ratio {ratio:.2f}:1"


_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _dataset_from_metadata(metadata: bytes, source):
    """The DICOM header a stream carries; refused (InvalidBitstreamError) unless it parses as DICOM and
    names the image (a SOP, study or series UID): a DICOM output must not lose its identity. The
    parser's complaints about odd values (which the source had too) are not printed."""
    import warnings

    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(metadata), force=True)
            list(ds)  # every element parsed now
        except Exception as exc:
            raise bs.InvalidBitstreamError(source, f"the metadata block is not a DICOM data set ({exc}); "
                                                   f"decode to .png or .tif to get the pixels") from None
    if not any(k in ds for k in _IDENTITY):
        seen = f"; the parser said: {' '.join(str(caught[0].message).split())}" if caught else ""
        raise bs.InvalidBitstreamError(
            source, f"the metadata block is not a DICOM data set (it names no SOP, study or series UID{seen}); "
                    f"decode to .png or .tif to get the pixels")
    return ds


def info(path, bundle_path=None) -> dict:
    """What the stream holds, from its header (CRC and structure checked; no model needed)."""
    from edge_runtime import series

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    header, tiles, metadata = bs.parse(data, source=path)
    samples = header.rows * header.cols * header.frames * header.samples
    pixel_bytes = pixel_stream_bytes(data, header, tiles)
    mode = _mode(header)
    known, compared = None, default_bundle_path() if bundle_path is None else Path(bundle_path)
    try:
        known = header.model_id in load_bundle(compared).model_ids
    except (OSError, ValueError):
        pass
    if bundle_path is None and not known:  # an earlier default shipped beside it decodes the stream
        earlier = shipped_bundle_for(header.model_id)
        if earlier is not None:
            known, compared = True, earlier
    itemsize = 1 if header.dtype in ("uint8", "int8") else 2
    return {
        "file": str(path), "rows": header.rows, "cols": header.cols, "frames": header.frames,
        "samples": header.samples, "dtype": header.dtype, "bits_stored": header.bits_stored,
        "signed": header.signed, "photometric": header.photometric, "model_id": header.model_id.hex(),
        "model_known": known, "bundle": str(compared), "quality": header.quality, "mode": mode, "max_error": header.max_error,
        "levels": header.levels, "tile": [header.tile_rows, header.tile_cols], "tiles": header.n_tiles,
        "bytes": len(data), "pixel_bytes": pixel_bytes, "bpp": 8.0 * pixel_bytes / samples,
        "ratio": itemsize * samples / pixel_bytes, "has_metadata": metadata is not None,
        "metadata_bytes": len(metadata) if metadata is not None else 0,
        "colour": _COLOUR_NAMES.get(header.colour), "grey_frames": header.frame_kinds.count(bs.FRAME_GREY),
        "series": series.describe(header, metadata, path),
        "version": header.version, "group": header.group,
        "predicted_frames": sum(1 for m in header.frame_modes if m != bs.FRAME_INTRA),
        "tiles_without_base": sum(map(PlaneCoder.without_base, tiles)) if header.error_bounded else None,
    }


_COLOUR_NAMES = {bs.COLOUR_RCT: "RCT", bs.COLOUR_GREEN_DIFFERENCE: "green difference"}


def verify(path, bundle=None, kernels: str = "xnnpack") -> dict:
    """CRC, model id held by the bundle, and a full decode; raises InvalidBitstreamError on the first failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    header, _, metadata = bs.parse(data, source=path)
    b, coder = _codec(bundle, kernels, data, path)
    if _is_series(header, metadata, path):  # every slice's header, and the frames group by group
        from edge_runtime import series

        slices = series.unpack_headers(metadata, path)
        if slices.count != header.frames:
            raise bs.InvalidBitstreamError(path, f"series metadata lists {slices.count} slices for "
                                                 f"{header.frames} frames")
        for k in range(slices.count):
            slices.slice_dataset(k)
        frames = sum(len(p) for _, p in series.frame_groups(data, coder=coder, model_ids=b.model_ids, source=path))
        return {"file": str(path), "crc": "ok", "model_id": header.model_id.hex(), "model_known": True,
                "decoded": [frames, header.rows, header.cols, header.samples], "slices": slices.count, "ok": True}
    image, _ = decode_image(data, coder=coder, model_ids=b.model_ids, source=path)
    if metadata is not None:
        _dataset_from_metadata(metadata, path)
    return {"file": str(path), "crc": "ok", "model_id": header.model_id.hex(), "model_known": True,
            "decoded": [image.frames, image.rows, image.cols, image.samples], "ok": True}
