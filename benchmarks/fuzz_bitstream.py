"""Mutation fuzzer for the edge runtime's FULL decode path (.kcd bytes -> Image / DICOM file).

Seeds are a few valid streams made with the TFLite test bundle (tests/edge/data/bundle) from
small images: 32x40 12-bit, 40x56 16-bit signed with 2 frames, 40x56 8-bit RGB, and a 40x56
12-bit one carrying a DICOM metadata block; with a bundle that has a residual model (--bundle),
also lossless and max-error-2 streams of the first two. Each fuzzed stream is one seed put through one or
more mutations:

    bit flips, byte sets (interesting values), truncation, insertion, deletion, duplicated
    chunks, splices of two seeds (raw bytes, the CRC left stale: mostly exercises the CRC check);
    header-field sets (geometry, dtype, bits, tile size, levels, quality, norm, tile count and
    lengths) and tile-payload mutations re-packed into a consistent container;
    and, for ~60 % of streams, the CRC recomputed, so the parser, the context model, the range
    decoder and the TFLite synthesis all see garbage that passes the checksum.

Each stream is decoded with ``edge_runtime.codec.decode_image`` (the bundle's coder) and every
``--file-every``-th one also with ``edge_runtime.runtime.decode_file`` to a .dcm. Allowed
outcomes: a decoded image with the header's geometry and dtype and values inside the stored
range, or ``InvalidBitstreamError``. Other ``ValueError`` subclasses are counted apart (the
documented ValueError family; ``--strict`` makes them failures). Anything else is a failure:
another exception, a crash of the worker process, more than ``--timeout`` seconds for one
stream, or a worker RSS above ``--mem-mb``. Each failure is saved with its seed and index to
``out/fuzz/failures/`` (stream + traceback); ``--replay FILE`` re-runs one in-process.

Streams are decoded in worker processes (``--workers``, one TFLite thread each) watched by
the parent, which kills a worker over its deadline or memory limit and starts a new one.

    .venv-edge/bin/python benchmarks/fuzz_bitstream.py [--n 100000] [--seed 0] [--workers 2]
    .venv-edge/bin/python benchmarks/fuzz_bitstream.py --replay out/fuzz/failures/0000123_timeout.kcd
    .venv-edge/bin/python benchmarks/fuzz_bitstream.py --index 123     # stream 123 of --seed, rebuilt

Exit status 0 when every stream had an allowed outcome, 1 otherwise. TensorFlow is never imported.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import struct
import sys
import tempfile
import time
import traceback
import zlib
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEST_BUNDLE = ROOT / "tests" / "edge" / "data" / "bundle"
DEFAULT_OUT = ROOT / "out" / "fuzz"
QUALITY = 12
_PRELUDE = struct.Struct("<4sHH32sIIIHBBBB")
_CODING = struct.Struct("<BiBII")
_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x10, 0x1F, 0x20, 0x3F, 0x40, 0x7E, 0x7F, 0x80, 0x81,
                      0xFE, 0xFF)
_INTERESTING_INTS = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 127, 128, 255, 256, 257, 1023,
                     2047, 2048, 2049, 4095, 4096, 32767, 32768, 65535, 65536, 46340, 1 << 20, (1 << 31) - 1,
                     1 << 31, (1 << 32) - 1)


# ----------------------------------------------------------------------------------------- seeds

def seed_images():
    """(name, Image, with_metadata) of the small seed images."""
    from data.image import Image

    rng = np.random.default_rng(2024)
    r, c = np.mgrid[0:40, 0:56]
    r32, c32 = np.mgrid[0:32, 0:40]
    u12 = np.clip(700 + 30 * r32 + 20 * c32 + 800 * ((r32 - 16) ** 2 + (c32 - 20) ** 2 < 60)
                  + rng.normal(0, 8, (32, 40)), 0, 4095).astype(np.uint16)
    s16 = np.stack([-3000 + 100 * r - 50 * c + rng.normal(0, 20, (40, 56)),
                    2000 - 80 * r + 30 * c + rng.normal(0, 20, (40, 56))]).astype(np.int16)
    rgb = np.clip(np.stack([r * 5, c * 4, (r + c) * 2], -1) + rng.normal(0, 3, (40, 56, 3)), 0, 255).astype(np.uint8)
    u12b = np.clip(600 + 25 * r + 18 * c + 900 * ((r - 20) ** 2 + (c - 30) ** 2 < 120) + rng.normal(0, 6, (40, 56)),
                   0, 4095).astype(np.uint16)
    return [
        ("u12_32x40", Image(pixels=u12[None, :, :, None], bits_stored=12, signed=False), False),
        ("s16_2frames", Image(pixels=s16[:, :, :, None], bits_stored=16, signed=True), False),
        ("rgb8", Image(pixels=rgb[None], bits_stored=8, signed=False, photometric="RGB"), False),
        ("u12_meta", Image(pixels=u12b[None, :, :, None], bits_stored=12, signed=False, modality="OT"), True),
    ]


def _metadata_for(image) -> bytes:
    """A real DICOM header (no pixels) for the seed that carries a metadata block."""
    from data.readers import read_image
    from data.writers import write_dicom
    from edge_runtime.runtime import dicom_metadata

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.dcm"
        write_dicom(path, image)
        return dicom_metadata(read_image(path).dataset)


def halves_image():
    """A 256x264 12-bit seed image, for tiles without a base of direct's version 3: larger than
    PlaneCoder.HALVES_TRIAL_PIXELS (smaller tiles take the shorter version) and not flat."""
    from data.image import Image

    rng = np.random.default_rng(2025)
    r, c = np.mgrid[0:256, 0:264]
    u12 = np.clip(1500 + 400 * np.sin(r / 11) * np.cos(c / 17) + rng.normal(0, 10, r.shape), 0, 4095)
    return Image(pixels=u12.astype(np.uint16)[None, :, :, None], bits_stored=12, signed=False)


def raster_image():
    """An 80x96 8-bit seed image of squares and checkerboards, for tiles coded in raster order (edge_runtime.raster):
    most of its adjacent pixels equal (PlaneCoder.RASTER_GATE), a few dots the escapes."""
    from data.image import Image

    rng = np.random.default_rng(2026)
    r, c = np.mgrid[0:80, 0:96]
    x = np.where((r // 16 + c // 16) % 2, 40, 200)
    x = np.where((r % 16 >= 4) & (r % 16 < 12) & (c % 16 >= 4) & (c % 16 < 12) & ((r // 2 + c // 2) % 2 == 0), 7, x)
    x[rng.random(x.shape) < 0.005] = 99
    return Image(pixels=x.astype(np.uint8)[None, :, :, None], bits_stored=8, signed=False)


def make_seeds(codec) -> list:
    """[(name, bytes)] of valid streams made with `codec` = (Bundle, PlaneCoder); when the bundle has a
    residual model, also error-bounded ones (lossless and max error 2) of the first two images, lossless
    and max error 1 ones of halves_image (direct's version 3) and a lossless one of raster_image (a raster
    tile)."""
    from edge_runtime.codec import encode_image

    bundle, coder = codec
    seeds = []
    for i, (name, image, with_meta) in enumerate(seed_images()):
        meta = _metadata_for(image) if with_meta else None
        seeds.append((name, encode_image(image, coder=coder, model_id=bundle.model_id, quality=QUALITY,
                                         metadata=meta)))
        if bundle.residual is not None and i < 2:
            d = 2 * i
            seeds.append((f"{name}, max error {d}", encode_image(image, coder=coder, model_id=bundle.model_id,
                                                                 quality=None, max_error=d, metadata=meta)))
    if bundle.residual is not None:
        image = halves_image()
        for d in (0, 1):
            seeds.append((f"u12_256x264 (direct version 3), max error {d}",
                          encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=d)))
        seeds.append(("u8_80x96 (raster), max error 0",
                      encode_image(raster_image(), coder=coder, model_id=bundle.model_id, quality=None, max_error=0)))
    return seeds


# ------------------------------------------------------------------------- container (no checks)

def split_stream(data: bytes) -> dict:
    """A valid stream's fields as a dict (the inverse of :func:`raw_pack`); raw compressed metadata kept."""
    from edge_runtime import bitstream as bs

    header, tiles, _ = bs.parse(data)
    p = len(header.photometric)
    fields = dict(flags=int.from_bytes(data[6:8], "little"), model_id=bytes(header.model_id), rows=header.rows,
                  cols=header.cols, frames=header.frames, samples=header.samples, bits=header.bits_stored,
                  signed=int(header.signed), dtype=bs.DTYPES.index(header.dtype),
                  photometric=header.photometric.encode(), quality=header.quality, max_error=header.max_error,
                  levels=header.levels, tile_rows=header.tile_rows, tile_cols=header.tile_cols,
                  norm=[list(pair) for pair in header.norm], tiles=list(tiles), meta=None, version=1,
                  magic=b"KCD1")
    if fields["flags"] & 2:
        pos = 72 + p + 8 * header.planes + 4 + 4 * len(tiles) + sum(len(t) for t in tiles)
        (m,) = struct.unpack_from("<I", data, pos)
        fields["meta"] = bytes(data[pos + 4:pos + 4 + m])
    return fields


def raw_pack(f: dict, n_tiles=None, lengths=None, fix_crc: bool = True) -> bytes:
    """Serialize fields WITHOUT validation (values wrapped to their field width), CRC recomputed or not."""
    def u(v, bits):
        return int(v) & ((1 << bits) - 1)

    phot = bytes(f["photometric"])
    parts = [
        _PRELUDE.pack(bytes(f["magic"])[:4].ljust(4, b"\0"), u(f["version"], 16), u(f["flags"], 16),
                      bytes(f["model_id"])[:32].ljust(32, b"\0"), u(f["rows"], 32), u(f["cols"], 32),
                      u(f["frames"], 32), u(f["samples"], 16), u(f["bits"], 8), u(f["signed"], 8),
                      u(f["dtype"], 8), u(len(phot) if f.get("phot_len") is None else f["phot_len"], 8)),
        phot,
        struct.pack("<B", u(f["quality"], 8)),
        struct.pack("<i", ((int(f["max_error"]) + 2 ** 31) % 2 ** 32) - 2 ** 31),
        struct.pack("<BII", u(f["levels"], 8), u(f["tile_rows"], 32), u(f["tile_cols"], 32)),
        b"".join(struct.pack("<ii", *[((int(v) + 2 ** 31) % 2 ** 32) - 2 ** 31 for v in pair]) for pair in f["norm"]),
        struct.pack("<I", u(len(f["tiles"]) if n_tiles is None else n_tiles, 32)),
        b"".join(struct.pack("<I", u(n, 32)) for n in (lengths if lengths is not None
                                                       else [len(t) for t in f["tiles"]])),
        *f["tiles"],
    ]
    if f["meta"] is not None:
        parts += [struct.pack("<I", len(f["meta"])), f["meta"]]
    body = b"".join(parts)
    crc = zlib.crc32(body) if fix_crc else 0xDEADBEEF
    return body + struct.pack("<I", crc)


def fix_crc(data: bytes) -> bytes:
    if len(data) < 4:
        return data
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


# -------------------------------------------------------------------------------- mutations

def _rand_bytes(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _m_bitflip(d: bytearray, rng):
    for _ in range(int(rng.integers(1, 9))):
        if d:
            i = int(rng.integers(len(d)))
            d[i] ^= 1 << int(rng.integers(8))
    return "bitflip"


def _m_byteset(d: bytearray, rng):
    for _ in range(int(rng.integers(1, 5))):
        if d:
            i = int(rng.integers(len(d)))
            d[i] = int(rng.choice(_INTERESTING_BYTES)) if rng.random() < 0.6 else int(rng.integers(256))
    return "byteset"


def _m_truncate(d: bytearray, rng):
    n = int(rng.integers(0, len(d) + 1))
    del d[n:]
    return f"truncate@{n}"


def _m_insert(d: bytearray, rng):
    i = int(rng.integers(0, len(d) + 1))
    d[i:i] = _rand_bytes(rng, int(rng.integers(1, 65)))
    return f"insert@{i}"


def _m_delete(d: bytearray, rng):
    if not d:
        return "delete(empty)"
    i = int(rng.integers(len(d)))
    n = int(rng.integers(1, 33))
    del d[i:i + n]
    return f"delete@{i}+{n}"


def _m_dupchunk(d: bytearray, rng):
    if not d:
        return "dup(empty)"
    i = int(rng.integers(len(d)))
    n = int(rng.integers(1, min(256, len(d) - i) + 1))
    j = int(rng.integers(0, len(d) + 1))
    chunk = bytes(d[i:i + n])
    d[j:j] = chunk * int(rng.integers(1, 4))
    return f"dup[{i}:{i + n}]@{j}"


RAW_MUTATORS = (_m_bitflip, _m_byteset, _m_truncate, _m_insert, _m_delete, _m_dupchunk)


def _interesting_int(rng, current):
    x = rng.random()
    if x < 0.5:
        return int(rng.choice(_INTERESTING_INTS))
    if x < 0.8:
        return int(current) + int(rng.integers(-4, 5))
    return int(rng.integers(0, 1 << 32))


def _structured(seed: bytes, rng, other: bytes) -> tuple:
    """Mutate fields or tile payloads and re-pack a consistent-looking container."""
    f = split_stream(seed)
    notes = []
    n_tiles, lengths = None, None
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 10))
        if kind == 0 and rng.random() < 0.3:  # a large image behind a small stream (decode cost vs size)
            f["rows"], f["cols"] = (int(rng.choice([257, 1000, 2048, 2049, 4096, 8192, 46340])) for _ in range(2))
            f["tile_rows"] = f["tile_cols"] = int(rng.choice([f["tile_rows"], 256, 512, 2048, 4096]))
            _match_tiles(f, rng)
            notes.append(f"big {f['rows']}x{f['cols']} tiles {f['tile_rows']} ->{len(f['tiles'])}")
        elif kind <= 2:  # geometry / coding field
            name = str(rng.choice(["rows", "cols", "frames", "samples", "bits", "signed", "dtype", "quality",
                                   "max_error", "levels", "tile_rows", "tile_cols", "flags", "version"]))
            f[name] = _interesting_int(rng, f[name])
            notes.append(f"{name}={f[name]}")
            if name in ("rows", "cols", "frames", "samples", "tile_rows", "tile_cols") and rng.random() < 0.8:
                _match_tiles(f, rng)  # keep T and the norm table consistent so decoding goes deeper
                notes.append(f"tiles->{len(f['tiles'])}")
        elif kind == 3:  # normalization
            if f["norm"]:
                p = int(rng.integers(len(f["norm"])))
                k = int(rng.integers(2))
                f["norm"][p][k] = int(rng.choice([-32768, -1, 0, 1, 255, 4095, 32767, 65535, 2 ** 31 - 1,
                                                  -(2 ** 31), int(rng.integers(-70000, 70000))]))
                notes.append(f"norm[{p}][{k}]={f['norm'][p][k]}")
        elif kind <= 6:  # tile payload (entropy decoder and transform byte)
            if f["tiles"]:
                t = int(rng.integers(len(f["tiles"])))
                tile = bytearray(f["tiles"][t])
                m = RAW_MUTATORS[int(rng.integers(len(RAW_MUTATORS)))]
                note = m(tile, rng)
                if rng.random() < 0.7 and len(tile) > 4:  # keep whole 32-bit words more often than not
                    del tile[4 + (len(tile) - 4) // 4 * 4:]
                if rng.random() < 0.15 and tile:
                    tile[0] = int(rng.integers(0, 4))  # transform byte
                f["tiles"][t] = bytes(tile)
                notes.append(f"tile{t}:{note}")
        elif kind == 7:  # tile table lies
            if rng.random() < 0.5:
                n_tiles = _interesting_int(rng, len(f["tiles"]))
                notes.append(f"T={n_tiles}")
            else:
                lengths = [len(t) for t in f["tiles"]]
                if lengths:
                    i = int(rng.integers(len(lengths)))
                    lengths[i] = _interesting_int(rng, lengths[i])
                    notes.append(f"L[{i}]={lengths[i]}")
        elif kind == 8:  # photometric / metadata
            if rng.random() < 0.5:
                f["photometric"] = bytes(rng.choice([b"", b"RGB", b"MONOCHROME1", b"X" * 40, b"\x00\xff",
                                                     b"YBR_FULL", _rand_bytes(rng, int(rng.integers(1, 33)))]))
                notes.append(f"phot={f['photometric']!r}")
            else:
                choice = int(rng.integers(4))
                if choice == 0:
                    f["meta"] = zlib.compress(_rand_bytes(rng, int(rng.integers(0, 300))))
                elif choice == 1:
                    f["meta"] = zlib.compress(b"\0" * int(rng.integers(1, 1 << 22)), 9)  # small bomb
                elif choice == 2:
                    f["meta"] = _rand_bytes(rng, int(rng.integers(0, 64)))
                else:
                    f["meta"] = None
                f["flags"] = (f["flags"] | 2) if f["meta"] is not None else (f["flags"] & ~2)
                notes.append(f"meta({choice})")
        else:  # splice tiles from another seed
            g = split_stream(other)
            if g["tiles"] and f["tiles"]:
                i, j = int(rng.integers(len(f["tiles"]))), int(rng.integers(len(g["tiles"])))
                f["tiles"][i] = g["tiles"][j]
                notes.append(f"splice tile{i}<-other{j}")
    data = raw_pack(f, n_tiles=n_tiles, lengths=lengths, fix_crc=True)
    return data, "struct[" + ",".join(notes) + "]"


def _match_tiles(f: dict, rng):
    """Resize the tile list and norm table to what the (mutated) geometry needs, if it is sane."""
    rows, cols, fr, sa = (int(f[k]) & 0xFFFFFFFF for k in ("rows", "cols", "frames", "samples"))
    tr, tc = int(f["tile_rows"]) & 0xFFFFFFFF, int(f["tile_cols"]) & 0xFFFFFFFF
    sa &= 0xFFFF
    if min(rows, cols, fr, sa, tr, tc) < 1:
        return
    planes = fr * sa
    per_plane = -(-rows // tr) * -(-cols // tc)
    n = planes * per_plane
    if n > 4096 or planes > 64:
        return
    pool = f["tiles"] or [b"\0\0\0\0\0"]
    f["tiles"] = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
    norm = f["norm"] or [[0, 4095]]
    f["norm"] = [list(norm[i % len(norm)]) for i in range(planes)]


def mutate(seeds: list, index: int, base_seed: int) -> tuple:
    """Stream number `index`: (bytes, seed name, description). Reproducible from (base_seed, index)."""
    rng = np.random.default_rng([base_seed, index])
    k = int(rng.integers(len(seeds)))
    name, seed = seeds[k]
    other = seeds[int(rng.integers(len(seeds)))][1]
    if rng.random() < 0.45:
        data, desc = _structured(seed, rng, other)
        if rng.random() < 0.25:  # a raw mutation on top, then the CRC fixed again
            d = bytearray(data)
            desc += "+" + RAW_MUTATORS[int(rng.integers(len(RAW_MUTATORS)))](d, rng)
            data = fix_crc(bytes(d))
            desc += "+crc"
        return data, name, desc
    d = bytearray(seed)
    notes = []
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.1:
            j = int(rng.integers(len(d) + 1))
            o = int(rng.integers(len(other) + 1))
            d = d[:j] + bytearray(other[o:])
            notes.append(f"splice@{j}<-{o}")
        else:
            notes.append(RAW_MUTATORS[int(rng.integers(len(RAW_MUTATORS)))](d, rng))
    desc = "raw[" + ",".join(notes) + "]"
    if rng.random() < 0.6:
        data = fix_crc(bytes(d))
        desc += "+crc"
    else:
        data = bytes(d)
    return data, name, desc


# ------------------------------------------------------------------------------ one decode

def check_stream(data: bytes, codec, *, to_file: bool = False, tmpdir=None, strict: bool = False) -> tuple:
    """Decode one stream; ("ok" | "rejected" | "other_valueerror" | "failure", detail).

    "failure" detail is the formatted traceback (or the geometry mismatch).
    """
    from edge_runtime import bitstream as bs
    from edge_runtime.codec import decode_image

    bundle, _ = codec
    try:
        image, header = decode_image(data, coder=codec[1], model_ids=[bundle.model_id], source="<fuzz>")
        problem = _geometry_problem(image, header)
        if problem:
            return "failure", f"GeometryMismatch: {problem}"
        status, detail = "ok", "decoded"
    except bs.InvalidBitstreamError as exc:
        status, detail = "rejected", _first_words(exc)
    except ValueError as exc:
        if strict:
            return "failure", traceback.format_exc()
        status, detail = "other_valueerror", f"{type(exc).__name__}: {_first_words(exc)}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - everything else (pyo3 panics are BaseException) is a finding
        return "failure", traceback.format_exc()
    if to_file:
        st, det = _check_file(data, codec, tmpdir, strict)
        if st == "failure":
            return st, "decode_file: " + det
        if st == "other_valueerror" and status != "other_valueerror":
            status, detail = st, "decode_file: " + det
    return status, detail


def _check_file(data, codec, tmpdir, strict):
    from edge_runtime import bitstream as bs
    from edge_runtime.runtime import decode_file

    tmpdir = Path(tmpdir or tempfile.gettempdir())
    src, dst = tmpdir / "fuzz_in.kcd", tmpdir / "fuzz_out.dcm"
    for p in (src, dst):
        if p.exists():
            p.unlink()
    src.write_bytes(data)
    try:
        decode_file(src, dst, bundle=codec, jobs=1)  # in this process: a fuzz worker is daemonic, it may not start a pool
        return "ok", "decoded to DICOM"
    except bs.InvalidBitstreamError as exc:
        return "rejected", _first_words(exc)
    except ValueError as exc:
        if strict:
            return "failure", traceback.format_exc()
        return "other_valueerror", f"{type(exc).__name__}: {_first_words(exc)}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001
        return "failure", traceback.format_exc()
    finally:
        for p in (src, dst):
            if p.exists():
                p.unlink()


def _geometry_problem(image, header):
    want = (header.frames, header.rows, header.cols, header.samples)
    if tuple(image.pixels.shape) != want:
        return f"decoded shape {image.pixels.shape}, header says {want}"
    if image.pixels.dtype != np.dtype(header.dtype):
        return f"decoded dtype {image.pixels.dtype}, header says {header.dtype}"
    if image.pixels.size:
        lo, hi = int(image.pixels.min()), int(image.pixels.max())
        vmin = -(1 << (header.bits_stored - 1)) if header.signed else 0
        vmax = (1 << (header.bits_stored - 1)) - 1 if header.signed else (1 << header.bits_stored) - 1
        if lo < vmin or hi > vmax:
            return f"values {lo}..{hi} outside the stored range {vmin}..{vmax}"
    return None


def _first_words(exc, n=90):
    text = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return text if len(text) <= n else text[:n] + "..."


def failure_signature(detail: str) -> str:
    """Exception type + innermost project frame: groups failures that are the same bug."""
    raw = detail.rstrip().splitlines()
    last_frame = max((i for i, ln in enumerate(raw) if ln.lstrip().startswith("File ")), default=-1)
    exc_line = next((ln for ln in raw[last_frame + 1:] if ln and not ln[0].isspace()), raw[-1] if raw else detail)
    kind = exc_line.split(":")[0].strip()
    frames = [ln.strip() for ln in raw if ln.lstrip().startswith("File ") and "site-packages" not in ln]
    where = frames[-1] if frames else ""
    return f"{kind} @ {where}" if where else exc_line[:120]


# ---------------------------------------------------------------------------------- workers

def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _worker_main(conn, bundle_path: str, strict: bool, warmup=()):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edge_runtime.runtime import load_codec

    codec = load_codec(bundle_path, num_threads=1)
    tmpdir = tempfile.mkdtemp(prefix="kcd_fuzz_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    for data in warmup:  # first-use costs (imports, interpreter allocation, pydicom) are not the stream's
        check_stream(data, codec, to_file=True, tmpdir=tmpdir, strict=strict)
    conn.send(("ready", os.getpid()))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        index, data, to_file = msg
        try:  # reset the peak-RSS counter so VmHWM is this stream's peak
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        t0 = time.perf_counter()
        status, detail = check_stream(data, codec, to_file=to_file, tmpdir=tmpdir, strict=strict)
        conn.send((index, status, detail, time.perf_counter() - t0, _rss_mb(os.getpid(), "VmHWM")))


class Worker:
    """One decoding process with a deadline and a memory ceiling watched from outside."""

    def __init__(self, ctx, bundle_path, strict, warmup=()):
        self.ctx, self.bundle_path, self.strict, self.warmup = ctx, str(bundle_path), strict, tuple(warmup)
        self.job = None
        self._start()

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.bundle_path, self.strict, self.warmup),
                                     daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(120):
            raise RuntimeError("fuzz worker did not start within 120 s")
        self.conn.recv()
        self.base_rss = _rss_mb(self.proc.pid)

    def submit(self, index, data, to_file, timeout):
        self.job = (index, data, time.perf_counter() + timeout)
        self.conn.send((index, data, to_file))

    def kill_and_restart(self):
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.job = None
        self._start()

    def close(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def _save_failure(out: Path, index, seed_name, desc, data, kind, detail, base_seed) -> Path:
    fail_dir = out / "failures"
    fail_dir.mkdir(parents=True, exist_ok=True)
    stem = fail_dir / f"{index:07d}_{kind}"
    stem.with_suffix(".kcd").write_bytes(data)
    stem.with_suffix(".txt").write_text(
        f"seed {base_seed} index {index} (from {seed_name}), mutation {desc}\n"
        f"{len(data)} bytes; replay: python benchmarks/fuzz_bitstream.py --replay {stem.with_suffix('.kcd')}\n\n"
        f"{detail}\n")
    return stem.with_suffix(".kcd")


def run(args) -> int:
    from edge_runtime.runtime import load_codec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds(load_codec(args.bundle, num_threads=1))
    print(f"fuzz_bitstream: {len(seeds)} seeds ({', '.join(f'{n} {len(b)} B' for n, b in seeds)}), "
          f"{args.n} streams, seed {args.seed}, {args.workers} worker(s), timeout {args.timeout} s, "
          f"memory ceiling {args.mem_mb} MiB RSS, decode_file every {args.file_every}", flush=True)
    ctx = mp.get_context("spawn")
    warmup = [b for _, b in seeds]
    workers = [Worker(ctx, args.bundle, args.strict, warmup) for _ in range(args.workers)]
    counts = collections.Counter()
    reasons = collections.Counter()
    signatures = collections.OrderedDict()
    saved = collections.Counter()
    slowest = (0.0, None)
    peak_mem = 0.0
    pending = {}
    next_index, done = 0, 0
    t_start = last_report = time.perf_counter()

    def record_failure(index, kind, detail, data, seed_name, desc):
        counts["failure"] += 1
        sig = f"{kind}: {failure_signature(detail)}" if kind == "exception" else kind
        first = signatures.setdefault(sig, [0, index])
        first[0] += 1
        if saved[sig] < args.keep_per_signature:
            saved[sig] += 1
            path = _save_failure(out, index, seed_name, desc, data, kind, detail, args.seed)
            print(f"  FAILURE #{index} {sig[:160]} -> {path}", flush=True)

    while done < args.n:
        for w in workers:
            if w.job is None and next_index < args.n:
                data, seed_name, desc = mutate(seeds, next_index, args.seed)
                to_file = args.file_every > 0 and next_index % args.file_every == 0
                pending[next_index] = (data, seed_name, desc)
                w.submit(next_index, data, to_file, args.timeout)
                next_index += 1
        ready = mp_wait([w.conn for w in workers if w.job is not None] +
                        [w.proc.sentinel for w in workers if w.job is not None], timeout=0.02)
        now = time.perf_counter()
        for w in workers:
            if w.job is None:
                continue
            index = w.job[0]
            if w.conn in ready:
                try:
                    _, status, detail, elapsed, hwm = w.conn.recv()
                except (EOFError, OSError):
                    status = None
                if status is not None:
                    data, seed_name, desc = pending.pop(index)
                    w.job = None
                    done += 1
                    peak_mem = max(peak_mem, hwm)
                    if elapsed > slowest[0]:
                        slowest = (elapsed, index)
                    if status == "failure":
                        record_failure(index, "exception", detail, data, seed_name, desc)
                    elif elapsed > args.timeout:  # finished, but too late
                        record_failure(index, "timeout", f"took {elapsed:.2f} s (> {args.timeout} s)\n{detail}",
                                       data, seed_name, desc)
                    elif hwm - w.base_rss > args.mem_mb:
                        record_failure(index, "memory", f"peak RSS {hwm:.0f} MiB\n{detail}", data, seed_name, desc)
                    else:
                        counts[status] += 1
                        reasons[detail.split(":")[0][:60] if status != "ok" else "ok"] += 1
                    continue
            dead = not w.proc.is_alive()
            over_time = now > w.job[2]
            rss = _rss_mb(w.proc.pid) if not dead else 0.0
            over_mem = rss - w.base_rss > args.mem_mb
            if dead or over_time or over_mem:
                data, seed_name, desc = pending.pop(index)
                if dead:
                    kind, detail = "crash", f"worker died with exit code {w.proc.exitcode}"
                elif over_mem:
                    kind, detail = "memory", f"worker RSS {rss:.0f} MiB (> {args.mem_mb} MiB above its start)"
                else:
                    kind, detail = "timeout", f"no answer within {args.timeout} s (killed)"
                w.kill_and_restart()
                if kind == "timeout" and args.recheck > 0:
                    detail += "; " + _recheck(ctx, args, data, index % args.file_every == 0 if args.file_every else False,
                                              warmup)
                done += 1
                record_failure(index, kind, detail, data, seed_name, desc)
        if now - last_report > args.report_every or done == args.n:
            rate = done / max(now - t_start, 1e-9)
            print(f"  {done}/{args.n} streams, {rate:.0f} streams/s, ok {counts['ok']}, rejected "
                  f"{counts['rejected']}, other ValueError {counts['other_valueerror']}, failures {counts['failure']}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            last_report = now
    for w in workers:
        w.close()

    wall = time.perf_counter() - t_start
    summary = {
        "streams": done, "seed": args.seed, "seconds": round(wall, 1), "streams_per_s": round(done / wall, 1),
        "ok": counts["ok"], "rejected": counts["rejected"], "other_valueerror": counts["other_valueerror"],
        "failures": counts["failure"], "slowest_s": round(slowest[0], 3), "slowest_index": slowest[1],
        "peak_worker_rss_mib": round(peak_mem, 1),
        "failure_kinds": {k: {"count": v[0], "first_index": v[1]} for k, v in signatures.items()},
        "outcomes": dict(reasons.most_common(25)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\noutcomes (most common first):")
    for reason, n in reasons.most_common(25):
        print(f"  {n:8d}  {reason}")
    if signatures:
        print("\nfailure kinds:")
        for sig, (n, first) in signatures.items():
            print(f"  {n:8d}  {sig}  (first: #{first})")
    verdict = "PASS" if counts["failure"] == 0 else "FAIL"
    print(f"\nfuzz_bitstream {verdict}: {done} streams in {wall:.0f} s ({done / wall:.0f}/s): ok {counts['ok']}, "
          f"InvalidBitstreamError {counts['rejected']}, other ValueError {counts['other_valueerror']}, "
          f"failures {counts['failure']}; slowest {slowest[0]:.2f} s (#{slowest[1]}), peak worker RSS "
          f"{peak_mem:.0f} MiB; summary {out / 'summary.json'}", flush=True)
    return 0 if counts["failure"] == 0 else 1


def _recheck(ctx, args, data, to_file, warmup) -> str:
    """Re-run a timed-out stream alone with a long deadline to tell a slow decode from a hang."""
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, args.bundle, args.strict, warmup), daemon=True)
    proc.start()
    child.close()
    try:
        if not conn.poll(120):
            return "recheck: worker did not start"
        conn.recv()
        conn.send((0, data, to_file))
        if conn.poll(args.recheck):
            _, status, detail, elapsed, hwm = conn.recv()
            return (f"recheck alone: {status} after {elapsed:.2f} s, peak RSS {hwm:.0f} MiB "
                    f"({' '.join(detail.split())[-200:]})")
        return f"recheck alone: still running after {args.recheck} s (hang?)"
    finally:
        proc.kill()
        proc.join(5)


def replay(path, bundle) -> int:
    """Decode one saved stream in-process and print the outcome (with the traceback of a failure)."""
    from edge_runtime.runtime import load_codec

    codec = load_codec(bundle, num_threads=1)
    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        status, detail = check_stream(data, codec, to_file=True, tmpdir=tmp)
    print(f"{path}: {status} after {time.perf_counter() - t0:.2f} s\n{detail}")
    return 0 if status != "failure" else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="streams to fuzz (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="base seed; stream i uses RNG([seed, i])")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds allowed per stream (default 2)")
    p.add_argument("--mem-mb", type=float, default=1024.0, help="RSS growth allowed per worker, MiB (default 1024)")
    p.add_argument("--file-every", type=int, default=20,
                   help="also run runtime.decode_file (to .dcm) on every k-th stream; 0: never (default 20)")
    p.add_argument("--strict", action="store_true", help="a ValueError other than InvalidBitstreamError fails")
    p.add_argument("--recheck", type=float, default=30.0,
                   help="re-run a timed-out stream alone for up to this many seconds (0: don't)")
    p.add_argument("--keep-per-signature", type=int, default=10, help="failure streams saved per kind")
    p.add_argument("--bundle", default=str(TEST_BUNDLE), help="bundle with TFLite graphs (default: the test bundle)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (failures/, summary.json)")
    p.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--replay", metavar="FILE", help="decode one saved stream in-process and show the outcome")
    p.add_argument("--index", type=int, metavar="I",
                   help="rebuild stream I of --seed, save it to OUT/stream_I.kcd and replay it in-process")
    args = p.parse_args(argv)
    if args.index is not None:
        from edge_runtime.runtime import load_codec

        data, name, desc = mutate(make_seeds(load_codec(args.bundle, num_threads=1)), args.index, args.seed)
        path = Path(args.out) / f"stream_{args.index}.kcd"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"stream {args.index} of seed {args.seed}: from {name}, {desc}, {len(data)} bytes -> {path}")
        args.replay = str(path)
    if args.replay:
        return replay(args.replay, args.bundle)
    if args.n < 1 or args.workers < 1 or args.timeout <= 0:
        p.error("--n, --workers and --timeout must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
