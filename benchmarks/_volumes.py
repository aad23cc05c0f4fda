"""Real CT volumes for the speed benchmark: a folder of 16-bit DICOM slices from the corpus volumes.

DESIGN.md's volumes are the NRRD files of the pyradiomics 3.0.1 source distribution
(``lung1_image.nrrd``: 48 chest CT slices of 512x512, ``lung2_image.nrrd``: 61), which the set-up
puts where data.corpus finds them (``make volumes``; never downloaded here). :func:`ct_slice_folder`
reads the two volumes with data.readers.read_nrrd and writes 64 slices (all 61 of lung2, then the
middle 3 of lung1) as uncompressed 16-bit signed CT DICOM files, the form of the test split's CT slice.
TensorFlow-free; numpy and pydicom.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.corpus import PYRADIOMICS as SDIST, volume_path  # noqa: E402
from data.readers import NRRDError, nrrd_spacing, read_nrrd, read_nrrd_bytes  # noqa: E402

__all__ = ["NRRDError", "SDIST", "ct_slice_folder", "read_nrrd", "read_nrrd_bytes", "corpus_volume"]

# 61 + 3 = 64 slices: the whole of lung2 (test volume), then lung1's (train volume) middle three
FOLDER_PLAN = (("lung2_image.nrrd", None), ("lung1_image.nrrd", (22, 25)))


def corpus_volume(name: str) -> tuple[np.ndarray, dict]:
    """One NRRD volume of the corpus (e.g. ``lung2_image.nrrd``), as the set-up put it in place."""
    return read_nrrd(volume_path(name, SDIST))


def ct_slice_folder(cache, count: int = 64, progress=print) -> tuple[Path, str]:
    """A folder of ``count`` (<= 64) real CT slices as 16-bit DICOM files, built once under ``cache``.

    Returns the folder and a one-line description of where the slices come from.
    """
    cache = Path(cache)
    folder = cache / f"ct_slices_{count}"
    manifest = folder / "slices.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if len(list(folder.glob("*.dcm"))) == info.get("count"):
            return folder, info["description"]
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, generate_uid

    from data.image import Image
    from data.writers import write_dicom

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    written, parts = 0, []
    for name, span in FOLDER_PLAN:
        if written >= count:
            break
        volume, fields = corpus_volume(name)
        if volume.ndim != 3 or volume.dtype != np.int16:
            raise NRRDError(name, f"expected a 3-D int16 volume, got {volume.shape} {volume.dtype}")
        lo, hi = span if span else (0, volume.shape[0])
        hi = min(hi, lo + count - written)
        spacing = nrrd_spacing(fields)
        study, series = generate_uid(), generate_uid()
        for k in range(lo, hi):
            ds = Dataset()
            ds.SOPClassUID = CTImageStorage
            ds.Modality = "CT"
            ds.PatientName = f"pyradiomics^{name.split('_')[0]}"
            ds.PatientID = name.split("_")[0]
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SeriesDescription = f"pyradiomics 3.0.1 data/{name}"
            ds.InstanceNumber = k + 1
            ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
            ds.SliceThickness = f"{spacing[2]:.6g}"
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
            image = Image(pixels=np.ascontiguousarray(volume[k][None, :, :, None]), bits_stored=16, signed=True,
                          modality="CT", source=name, dataset=ds)
            write_dicom(folder / f"{written:03d}_{name.split('_')[0]}_{k:03d}.dcm", image, overwrite=True)
            written += 1
        parts.append(f"{name} slices {lo + 1}-{hi} of {volume.shape[0]}")
    if written < count:
        raise RuntimeError(f"the pyradiomics volumes hold only {written} slices, fewer than {count}")
    description = f"{count} CT slices 512x512 int16 from the {SDIST} sdist: " + ", ".join(parts)
    manifest.write_text(json.dumps({"count": count, "description": description}))
    progress(f"  wrote {description} to {folder}")
    return folder, description


if __name__ == "__main__":  # python benchmarks/_volumes.py CACHE: build the folder and say what it holds
    where, what = ct_slice_folder(sys.argv[1] if len(sys.argv) > 1 else ROOT / "out" / "cache")
    print(where, "\n", what)
