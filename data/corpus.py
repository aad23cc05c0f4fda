"""The sample corpus: real images shipped in the ``pydicom`` and ``pydicom-data`` packages.

The files are found in the installed packages, never downloaded. The split
is fixed (DESIGN.md): train on the ``train`` files only, report results on
the ``test`` files. Files with identical decoded pixels are kept once (the
first listed), and files already lossy-compressed (LossyImageCompression
"01") are left out of evaluation; :func:`excluded` says which and why.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from data.image import Image
from data.readers import read_image

__all__ = ["CorpusItem", "MANIFEST", "corpus", "load", "corpus_table", "summary", "excluded", "pixel_hash"]

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
