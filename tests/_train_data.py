"""Tiny folders of the kind users train on: DICOM series of a few patients, PNGs, a NIfTI volume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

SIDE = 48


def _texture(seed: int, shape, amplitude: float) -> np.ndarray:
    """Smooth anatomy-like shapes plus a little noise, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    x = 0.5 + 0.25 * np.sin(r / (4.0 + seed % 3)) * np.cos(c / (5.0 + seed % 5))
    x += 0.3 * (((r - shape[0] / 2 - seed % 7) ** 2 + (c - shape[1] / 3) ** 2) < (shape[0] / 4) ** 2)
    return np.clip(x * amplitude + rng.normal(0, amplitude / 200, shape), 0, amplitude)


def _uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.1234." + ".".join(str(p) for p in parts)


def write_series(folder: Path, patient: int, slices: int = 3) -> list[Path]:
    """One CT series of `slices` 12-bit slices for patient `patient`, one file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(patient, 1, k + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(patient, 1), _uid(patient, 1, 0)
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = f"Train^P{patient}", f"P{patient}"
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = SIDE
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = _texture(10 * patient + k, (SIDE, SIDE), 4095).astype(np.uint16).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_png(path: Path, seed: int) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), _texture(100 + seed, (SIDE, SIDE + 16), 255).astype(np.uint8))
    return path


def make_folder(root: Path) -> Path:
    """root/ct/P1/*.dcm, root/ct/P2/*.dcm (3 slices each), root/photos/a.png and b.png."""
    write_series(root / "ct" / "P1", 1)
    write_series(root / "ct" / "P2", 2)
    write_png(root / "photos" / "a.png", 1)
    write_png(root / "photos" / "b.png", 2)
    return root
