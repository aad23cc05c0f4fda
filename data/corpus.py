"""The sample corpus: real images shipped in the ``pydicom`` and ``pydicom-data`` packages, and volumes.

The files are found in the installed packages, never downloaded. The split
is fixed (DESIGN.md): train on the ``train`` files only, report results on
the ``test`` files. Files with identical decoded pixels are kept once (the
first listed), and files already lossy-compressed (LossyImageCompression
"01") are left out of evaluation; :func:`excluded` says which and why.

Volumes (series and inter-slice coding) are a separate list, :func:`volumes`, so that :func:`corpus`
gives exactly the 2-D images it always gave (the measured results of the shipped model are on its
test split): the four NRRD volumes of the pyradiomics 3.0.1 source distribution (chest CT
``lung1_image.nrrd`` train, ``lung2_image.nrrd`` test; brain MR ``brain1_image.nrrd`` train,
``brain2_image.nrrd`` test) and pydicom-data's multi-frame images (``emri_small.dcm`` and
``eCT_Supplemental.dcm``, train as in the 2-D corpus; ``OBXXXX1A_2frame.dcm``, train like its frame
``OBXXXX1A.dcm``; the 120-frame ultrasound cine ``color3d_jpeg_baseline.dcm``, test: it came through
JPEG baseline, so ``lossy_source`` says its pixels are already lossy). :func:`load_volume` reads one
as an :class:`~data.image.Image` whose frames are the slices.

The NRRD files are never downloaded at run time: the set-up (``make setup`` / ``make test``, target
``volumes``) runs ``python -m data.corpus fetch-volumes``, which fetches the sdist with pip, checks each
file's SHA-256 and puts the four files in :func:`volumes_dir` (``data/volumes/`` beside this module, a
folder git ignores; ``KERAS_CODEC_VOLUMES`` names another). A missing file is a FileNotFoundError
saying that command.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from data.image import Image
from data.readers import nrrd_header, nrrd_spacing, read_image, read_nrrd

__all__ = ["CorpusItem", "MANIFEST", "VOLUMES", "VolumeItem", "corpus", "load", "corpus_table", "summary", "excluded",
           "fetch_volumes", "load_volume", "pixel_hash", "volumes", "volumes_dir"]

PYDICOM = "pydicom"
PYDICOM_DATA = "pydicom-data"

MANIFEST: tuple[tuple[str, str, str], ...] = (
    # (file name, package, split)
    ("MR2_UNCR.dcm", PYDICOM_DATA, "train"),
    ("RG1_UNCR.dcm", PYDICOM_DATA, "train"),
    ("eCT_Supplemental.dcm", PYDICOM_DATA, "train"),
    ("emri_small.dcm", PYDICOM_DATA, "train"),
    ("693_UNCR.dcm", PYDICOM_DATA, "train"),
    ("mlut_18.dcm", PYDICOM_DATA, "train"),
    ("vlut_04.dcm", PYDICOM_DATA, "train"),
    ("OBXXXX1A.dcm", PYDICOM_DATA, "train"),
    ("US1_UNCR.dcm", PYDICOM_DATA, "train"),
    ("gdcm-US-ALOKA-16.dcm", PYDICOM_DATA, "train"),
    ("CT_small.dcm", PYDICOM, "train"),
    ("MR_small.dcm", PYDICOM, "train"),
    ("explicit_VR-UN.dcm", PYDICOM_DATA, "test"),
    ("RG3_UNCR.dcm", PYDICOM_DATA, "test"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", PYDICOM_DATA, "test"),
    ("examples_palette.dcm", PYDICOM, "test"),
    ("image_dfl.dcm", PYDICOM, "test"),
)
"""Every corpus file, in priority order (the first of two identical images is kept)."""

SPLITS = ("train", "test")


@dataclass(frozen=True)
class CorpusItem:
    """One distinct image of the corpus, described from its decoded pixels."""

    name: str
    path: str
    split: str
    modality: str
    rows: int
    cols: int
    frames: int
    samples: int
    bits_stored: int
    signed: bool
    photometric: str
    pixel_hash: str


def package_dir(package: str) -> Path:
    """The folder holding ``package``'s sample files, located without importing it or using the network."""
    if package == PYDICOM:
        spec = importlib.util.find_spec("pydicom")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("the corpus needs pydicom: pip install pydicom")
        return Path(spec.origin).parent / "data" / "test_files"
    if package == PYDICOM_DATA:
        spec = importlib.util.find_spec("data_store")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the corpus needs the pydicom-data package: pip install pydicom-data")
        return Path(list(spec.submodule_search_locations)[0]) / "data"
    raise ValueError(f"unknown corpus package {package!r}; expected {PYDICOM!r} or {PYDICOM_DATA!r}")


def corpus_path(name: str, package: str) -> Path:
    """The installed path of one corpus file, or a FileNotFoundError saying which package to install."""
    path = package_dir(package) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus file {name} not found at {path}: install (or reinstall) the {package} package "
            f"(pip install --force-reinstall {package})")
    return path


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of the pixels' shape, dtype and bytes: equal hashes mean identical images."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.sha256()
    h.update(repr(tuple(pixels.shape)).encode())
    h.update(pixels.dtype.str.encode())
    h.update(pixels.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _build() -> tuple[tuple[CorpusItem, ...], tuple[tuple[str, str], ...]]:
    """Read every manifest file once: (kept items, (name, reason) of each file left out)."""
    items: list[CorpusItem] = []
    dropped: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for name, package, split in MANIFEST:
        path = corpus_path(name, package)
        image = read_image(path)
        lossy = str(image.dataset.get("LossyImageCompression", "")).strip() if image.dataset is not None else ""
        if lossy == "01":
            dropped.append((name, "already lossy-compressed (LossyImageCompression 01): unfit for evaluation"))
            continue
        digest = pixel_hash(image.pixels)
        if digest in seen:
            dropped.append((name, f"duplicate of {seen[digest]} (identical decoded pixels)"))
            continue
        seen[digest] = name
        items.append(CorpusItem(
            name=name, path=str(path), split=split, modality=image.modality,
            rows=image.rows, cols=image.cols, frames=image.frames, samples=image.samples,
            bits_stored=image.bits_stored, signed=image.signed, photometric=image.photometric,
            pixel_hash=digest,
        ))
    return tuple(items), tuple(dropped)


@functools.lru_cache(maxsize=None)
def _corpus(split: Optional[str]) -> tuple[CorpusItem, ...]:
    items, _ = _build()
    return tuple(item for item in items if split is None or item.split == split)


def corpus(split: Optional[str] = None) -> list[CorpusItem]:
    """The distinct corpus images, all or of one split ("train" or "test"); read once, then cached."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return list(_corpus(split))


def excluded() -> dict[str, str]:
    """Manifest files left out of the corpus, with the reason (duplicate pixels, already lossy)."""
    return dict(_build()[1])


def load(item: CorpusItem) -> Image:
    """Read a corpus item's image (pixels, header and source data set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(item.path)


def corpus_table(items: Iterable[CorpusItem]) -> str:
    """An aligned text table of corpus items: file, modality, shape, frames, bits stored, photometric, split."""
    header = ("file", "modality", "shape", "frames", "bits stored", "photometric", "split")
    rows = [header]
    for it in items:
        shape = f"{it.rows}x{it.cols}" + (f"x{it.samples}" if it.samples > 1 else "")
        bits = f"{it.bits_stored}{' signed' if it.signed else ''}"
        rows.append((it.name, it.modality, shape, str(it.frames), bits, it.photometric, it.split))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {3, 4}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in numeric and n else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(items: Iterable[CorpusItem]) -> dict[str, dict[str, int]]:
    """Distinct images per modality per split: ``{"train": {"CT": 3, ...}, "test": {...}}``."""
    counts: dict[str, Counter] = {}
    for it in items:
        counts.setdefault(it.split, Counter())[it.modality] += 1
    order = sorted(counts, key=lambda split: (SPLITS.index(split) if split in SPLITS else len(SPLITS), split))
    return {split: dict(sorted(counts[split].items())) for split in order}


# --------------------------------------------------------------------------- volumes

PYRADIOMICS = "pyradiomics==3.0.1"
"""The source distribution whose data/ folder holds the NRRD volumes (fetched at set-up, never at run time)."""
PYRADIOMICS_SDIST = "pyradiomics-3.0.1.tar.gz"
FETCH_COMMAND = "make volumes (or: python -m data.corpus fetch-volumes)"
VOLUMES_ENV = "KERAS_CODEC_VOLUMES"

VOLUMES: tuple[tuple[str, str, str, str], ...] = (
    # (file name, where it comes from, split, modality)
    ("lung1_image.nrrd", PYRADIOMICS, "train", "CT"),
    ("brain1_image.nrrd", PYRADIOMICS, "train", "MR"),
    ("emri_small.dcm", PYDICOM_DATA, "train", "MR"),
    ("eCT_Supplemental.dcm", PYDICOM_DATA, "train", "CT"),
    ("OBXXXX1A_2frame.dcm", PYDICOM_DATA, "train", "US"),
    ("lung2_image.nrrd", PYRADIOMICS, "test", "CT"),
    ("brain2_image.nrrd", PYRADIOMICS, "test", "MR"),
    ("color3d_jpeg_baseline.dcm", PYDICOM_DATA, "test", "US"),
)
"""Every volume of the corpus, train first."""

NRRD_SHA256 = {
    "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "brain2_image.nrrd": "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
}
"""SHA-256 of each NRRD file as the pyradiomics 3.0.1 sdist ships it, checked when it is fetched."""


@dataclass(frozen=True)
class VolumeItem:
    """One volume of the corpus, described from its header (no pixels read): frames are slices.

    ``spacing`` is (row, column, slice) spacing in mm where the file gives it, else None.
    ``lossy_source``: the file's pixels went through a lossy code before (LossyImageCompression "01").
    """

    name: str
    path: str
    source: str
    split: str
    modality: str
    frames: int
    rows: int
    cols: int
    samples: int
    spacing: Optional[tuple]
    lossy_source: bool


def volumes_dir() -> Path:
    """Where the set-up puts the NRRD volumes: $KERAS_CODEC_VOLUMES, else data/volumes beside this module."""
    named = os.environ.get(VOLUMES_ENV)
    return Path(named) if named else Path(__file__).resolve().parent / "volumes"


def volume_path(name: str, source: str) -> Path:
    """The path of one volume file, or a FileNotFoundError saying which command fetches it."""
    if source != PYRADIOMICS:
        return corpus_path(name, source)
    path = volumes_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus volume {name} not found at {path}: the set-up fetches it from the {PYRADIOMICS} source "
            f"distribution; run {FETCH_COMMAND}")
    return path


@functools.lru_cache(maxsize=None)
def _volume_item(name: str, source: str, split: str, modality: str) -> VolumeItem:
    path = volume_path(name, source)
    if source == PYRADIOMICS:
        fields = nrrd_header(path)
        sizes = [int(v) for v in fields["sizes"].split()]
        x, y, z = nrrd_spacing(fields)
        return VolumeItem(name=name, path=str(path), source=source, split=split, modality=modality,
                          frames=sizes[2], rows=sizes[1], cols=sizes[0], samples=1, spacing=(y, x, z),
                          lossy_source=False)
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = None
    if "PixelSpacing" in ds and "SliceThickness" in ds:
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]), float(ds.SliceThickness))
    return VolumeItem(name=name, path=str(path), source=source, split=split,
                      modality=str(ds.get("Modality", modality) or modality), frames=int(ds.NumberOfFrames),
                      rows=int(ds.Rows), cols=int(ds.Columns), samples=int(ds.SamplesPerPixel), spacing=spacing,
                      lossy_source=str(ds.get("LossyImageCompression", "")).strip() == "01")


def volumes(split: Optional[str] = None) -> list[VolumeItem]:
    """The corpus volumes, all or of one split ("train" or "test"), from their headers (module docstring)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return [_volume_item(*entry) for entry in VOLUMES if split is None or entry[2] == split]


def load_volume(item: VolumeItem) -> Image:
    """Read a volume: pixels (slices or frames, rows, cols, samples) in their stored integer form.

    An NRRD volume's samples are those of the file (int16 for these CT and MR volumes, 16 bits stored).
    """
    if item.source != PYRADIOMICS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_image(item.path)
    volume, fields = read_nrrd(item.path)
    if volume.ndim != 3 or volume.dtype not in (np.int16, np.uint16, np.int8, np.uint8):
        raise ValueError(f"{item.path}: expected a 3-D volume of 8 or 16-bit integers, got {volume.shape} "
                         f"{volume.dtype}")
    return Image(pixels=np.ascontiguousarray(volume[..., None]), bits_stored=8 * volume.dtype.itemsize,
                 signed=volume.dtype.kind == "i", modality=item.modality, source=item.path)


def fetch_volumes(dest=None, *, sdist=None, progress=print) -> Path:
    """Put the four NRRD volumes in ``dest`` (default :func:`volumes_dir`), each checked against its SHA-256.

    ``sdist``: an already downloaded pyradiomics-3.0.1.tar.gz; else pip downloads it (``--no-build-isolation``:
    pip prepares the sdist's metadata, whose setup imports numpy, which this environment has). Files already
    in place with the right hash are kept. Only the set-up calls this.
    """
    dest = Path(dest) if dest is not None else volumes_dir()
    dest.mkdir(parents=True, exist_ok=True)
    ignore = dest / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# fetched at set-up (python -m data.corpus fetch-volumes), never committed\n*\n")
    wanted = [n for n in NRRD_SHA256 if not (dest / n).is_file() or _sha256(dest / n) != NRRD_SHA256[n]]
    if not wanted:
        progress(f"corpus volumes: all {len(NRRD_SHA256)} in {dest}")
        return dest
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        tarball = Path(sdist) if sdist is not None else _download_sdist(Path(tmp))
        with tarfile.open(tarball) as tar:
            for name in wanted:
                member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("/data/" + name)), None)
                if member is None:
                    raise FileNotFoundError(f"{tarball}: no data/{name} inside; is it the {PYRADIOMICS} sdist?")
                part = Path(tmp) / name
                with tar.extractfile(member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
                digest = _sha256(part)
                if digest != NRRD_SHA256[name]:
                    raise RuntimeError(f"{tarball}: data/{name} has SHA-256 {digest}, expected {NRRD_SHA256[name]}: "
                                       f"not the file of {PYRADIOMICS}")
                os.replace(part, dest / name)
                progress(f"corpus volumes: {name} -> {dest / name}")
    return dest


def _download_sdist(folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           PYRADIOMICS, "-d", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tarball = folder / PYRADIOMICS_SDIST
    if proc.returncode != 0 or not tarball.is_file():
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"could not fetch the {PYRADIOMICS} sdist with pip ({' '.join(cmd[2:])}): {tail}")
    return tarball


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m data.corpus", description="the sample corpus")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch-volumes", help="put the pyradiomics 3.0.1 NRRD volumes where volumes() finds them")
    f.add_argument("--dest", default=None, help=f"folder (default: ${VOLUMES_ENV} or data/volumes)")
    f.add_argument("--sdist", default=None, help="a downloaded pyradiomics-3.0.1.tar.gz (default: pip downloads it)")
    sub.add_parser("list", help="the 2-D corpus and the volumes")
    args = p.parse_args(argv)
    try:
        if args.command == "fetch-volumes":
            fetch_volumes(args.dest, sdist=args.sdist)
        else:
            print(corpus_table(corpus()))
            print()
            for v in volumes():
                print(f"{v.name:28s} {v.modality:3s} {v.split:5s} {v.frames:4d} x {v.rows} x {v.cols}"
                      f"{' x 3' if v.samples == 3 else ''}{'  (lossy source)' if v.lossy_source else ''}")
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"python -m data.corpus {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
