"""The user's images for training: folders and files of DICOM, PNG, TIFF and NIfTI, split by patient.

:func:`collect` reads every image under the given folders (DICOM files and series folders in
any transfer syntax :mod:`data.readers` decodes, multi-frame files with all their frames, PNG,
TIFF, and NIfTI volumes through nibabel, one plane per slice) into :class:`Example` records,
each with the group it is split by: the DICOM PatientID, else its StudyInstanceUID, else the
file (``split_by="file"``: always the file). :func:`split` holds out whole groups,
deterministically for a seed, so no patient's slices are both trained on and reported on.
:func:`corpus_data` is the sample corpus: train split for training, test split for the report;
:func:`recipe_data` picks between the two for a recipe's run.

The data fingerprint (:attr:`TrainingData.fingerprint`) is the SHA-256 of every image's name
and decoded pixels: a run refuses to resume on other data.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import nibabel as nib
import numpy as np

from data.corpus import corpus, load, pixel_hash
from data.image import Image, InvalidImageError
from data.readers import list_images, read_image

__all__ = ["Example", "TrainingData", "collect", "split", "prepare", "corpus_data", "recipe_data",
           "read_nifti", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Example:
    """One image file (all its frames or slices) and the group it is split by."""

    name: str
    group: str
    image: Image
    pixel_hash: str


@dataclass(frozen=True)
class TrainingData:
    """The images a run trains on and those it reports on, and their fingerprint."""

    train: tuple
    val: tuple
    source: str  # "corpus" or the folders given

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part, items in (("train", self.train), ("val", self.val)):
            for e in sorted(items, key=lambda e: e.name):
                h.update(f"{part}\0{e.name}\0{e.pixel_hash}\n".encode())
        return h.hexdigest()

    def train_pairs(self) -> list:
        """(name, Image) pairs of the training part: what the trainers' `images` arguments take."""
        return [(e.name, e.image) for e in self.train]

    def val_pairs(self) -> list:
        return [(e.name, e.image) for e in self.val]

    def describe(self) -> dict:
        def rows(items):
            return [{"name": e.name, "group": e.group, "frames": e.image.frames, "rows": e.image.rows,
                     "cols": e.image.cols, "samples": e.image.samples, "bits_stored": e.image.bits_stored,
                     "pixel_hash": e.pixel_hash} for e in items]

        return {"source": self.source, "fingerprint": self.fingerprint, "train": rows(self.train),
                "val": rows(self.val)}


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / n for n in filenames if not n.startswith(".") and _is_nifti(Path(n))]
    return sorted(found)


def _bits_for(lo: int, hi: int, signed: bool) -> int:
    if signed:
        return max(int(max(hi, -lo - 1)).bit_length() + 1, 2)
    return max(int(hi).bit_length(), 1)


def read_nifti(path) -> Image:
    """A NIfTI volume as an Image whose frames are its slices (the third axis; a 4-D series gives
    every slice of every time point). Stored values are kept when they are 8- or 16-bit integers
    (or wider integers within a 16-bit range); otherwise (floats, wide integers) the volume's
    range is mapped linearly onto 0..65535 (training normalizes each plane to [0, 1] anyway)."""
    path = Path(path)
    try:
        vol = nib.load(str(path))
        proxy = vol.dataobj
        arr = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    except Exception as e:  # nibabel raises several kinds for a bad file
        raise InvalidImageError(path, f"not a readable NIfTI volume ({type(e).__name__}: {e})") from None
    if arr.ndim < 2:
        raise InvalidImageError(path, f"a NIfTI image needs at least 2 dimensions, this one has shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    slices = np.transpose(arr, (2, 1, 0))[..., None]  # (slices, rows = y, cols = x, 1)
    if slices.size == 0:
        raise InvalidImageError(path, "the volume holds no voxels")
    lo, hi = slices.min(), slices.max()
    if slices.dtype.kind in "iu" and -(1 << 15) <= lo and hi <= (1 << 16) - 1:
        signed = bool(lo < 0)
        if signed and hi > (1 << 15) - 1:
            signed, slices = False, (slices.astype(np.int64) - int(lo))
            lo, hi = 0, int(hi) - int(lo)
        dtype = (np.int8 if signed else np.uint8) if _bits_for(int(lo), int(hi), signed) <= 8 else \
            (np.int16 if signed else np.uint16)
        pixels = slices.astype(dtype)
        bits = _bits_for(int(lo), int(hi), signed)
    else:
        x = slices.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise InvalidImageError(path, "the volume holds NaN or infinite voxels")
        span = float(hi) - float(lo)
        pixels = np.round((x - float(lo)) / (span if span > 0 else 1.0) * 65535.0).astype(np.uint16)
        signed, bits = False, 16
    return Image(pixels=np.ascontiguousarray(pixels), bits_stored=bits, signed=signed, modality="OT",
                 source=str(path))


def _group(image: Image, name: str, split_by: str) -> str:
    if split_by == "patient" and image.dataset is not None:
        for keyword, label in (("PatientID", "patient"), ("StudyInstanceUID", "study")):
            value = str(image.dataset.get(keyword, "") or "").strip()
            if value:
                return f"{label}:{value}"
    return f"file:{name}"


def _files(paths: Iterable) -> list[tuple[str, Path]]:
    """(name, path) of every image file under `paths` (folders or files); names unique across roots."""
    roots = [Path(p) for p in paths]
    out, seen = [], set()
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder (--data takes folders or image files)")
        if root.is_dir():
            files = sorted(set(list_images(root)) | set(_nifti_files(root)))
            prefix = root.resolve().name if len(roots) > 1 else ""
            for f in files:
                rel = f.relative_to(root).as_posix()
                out.append((f"{prefix}/{rel}" if prefix else rel, f))
        else:
            out.append((root.name, root))
    for name, _ in out:
        if name in seen:
            raise ValueError(f"--data: two inputs are both named {name!r}; give folders with different names")
        seen.add(name)
    return out


def collect(paths: Iterable, *, split_by: str = "patient",
            progress: Optional[Callable[[str], None]] = None) -> list[Example]:
    """Every readable image under `paths`; files that are not images (or are unreadable) are skipped
    with one progress line each. Raises ValueError when nothing is left."""
    say = progress or (lambda _s: None)
    out, skipped = [], 0
    files = _files(paths)
    for name, path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = read_nifti(path) if _is_nifti(path) else read_image(path)
        except (InvalidImageError, OSError, ValueError) as e:
            skipped += 1
            say(f"data: skipped {name}: {e}")
            continue
        out.append(Example(name=name, group=_group(image, name, split_by), image=image,
                           pixel_hash=pixel_hash(image.pixels)))
    if not out:
        where = ", ".join(str(p) for p in paths)
        raise ValueError(f"--data {where}: no readable image (DICOM, PNG, TIFF or NIfTI) among {len(files)} files")
    say(f"data: {len(out)} images in {len({e.group for e in out})} groups ({split_by}), {skipped} files skipped")
    return out


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, val): whole groups go to validation, in an order fixed by the seed, until they hold at least
    `val_fraction` of the images; at least one group on each side."""
    groups = sorted({e.group for e in examples}, key=lambda g: (_rank(seed, g), g))
    if len(groups) < 2:
        g = groups[0] if groups else "none"
        raise ValueError(f"the images form a single group ({g}): a validation part split by patient/study "
                         f"would be empty; add images of another patient, or split by file "
                         f"(--split-by file, or \"split_by\": \"file\" in a recipe file)")
    sizes = {g: sum(e.group == g for e in examples) for g in groups}
    val_groups, n = set(), 0
    for g in groups[:-1]:
        if n >= val_fraction * len(examples):
            break
        val_groups.add(g)
        n += sizes[g]
    train = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    return train, val


def prepare(paths, *, val_fraction: float, seed: int, split_by: str = "patient", progress=None) -> TrainingData:
    """collect + split: the TrainingData of a run on the user's folders."""
    train, val = split(collect(paths, split_by=split_by, progress=progress), val_fraction, seed)
    if progress:
        progress(f"data: {len(train)} images to train on, {len(val)} held out for the report "
                 f"({len({e.group for e in val})} groups)")
    return TrainingData(train=tuple(train), val=tuple(val), source=", ".join(str(p) for p in paths))


def corpus_data() -> TrainingData:
    """The sample corpus (DESIGN.md): its train split to train on, its test split for the report."""
    def examples(part):
        return tuple(Example(name=it.name, group=f"file:{it.name}", image=load(it), pixel_hash=it.pixel_hash)
                     for it in corpus(part))

    return TrainingData(train=examples("train"), val=examples("test"), source="corpus")


def recipe_data(paths, recipe, progress=None) -> TrainingData:
    """The images a recipe's run trains on: `paths` split as the recipe says (its val_fraction, seed and
    split_by), or, with no paths, the sample corpus."""
    if paths:
        return prepare(paths, val_fraction=recipe.val_fraction, seed=recipe.seed, split_by=recipe.split_by,
                       progress=progress)
    if progress:
        progress("data: the sample corpus (train split to train on, test split for the report)")
    return corpus_data()
