"""Real CT volumes for the speed benchmark: a small NRRD reader and a folder of 16-bit DICOM slices.

DESIGN.md's volumes are the NRRD files of the pyradiomics 3.0.1 source distribution
(``data/lung1_image.nrrd``: 48 chest CT slices of 512x512, ``data/lung2_image.nrrd``: 61).
:func:`ct_slice_folder` fetches that sdist once with pip into a cache folder, reads the two
volumes with :func:`read_nrrd` and writes 64 slices (all 61 of lung2, then the middle 3 of
lung1) as uncompressed 16-bit signed CT DICOM files, the form of the test split's CT slice.

The reader covers what these files use (attached header, raw / gzip / bzip2 data, integer and
float types, either byte order) and refuses the rest with a message (detached data files,
``line skip`` / ``byte skip``, text encodings). TensorFlow-free; numpy only (pydicom to write).
"""
from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

__all__ = ["NRRDError", "SDIST", "ct_slice_folder", "fetch_sdist", "read_nrrd", "read_nrrd_bytes",
           "sdist_volume"]

SDIST = "pyradiomics==3.0.1"
SDIST_FILE = "pyradiomics-3.0.1.tar.gz"
# 61 + 3 = 64 slices: the whole of lung2 (test volume), then lung1's (train volume) middle three
FOLDER_PLAN = (("lung2_image.nrrd", None), ("lung1_image.nrrd", (22, 25)))

_TYPES = {}
for _names, _dtype in (
        (("signed char", "int8", "int8_t"), "i1"),
        (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
        (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
        (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
        (("int", "signed int", "int32", "int32_t"), "i4"),
        (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
        (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
          "int64_t"), "i8"),
        (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
        (("float",), "f4"),
        (("double",), "f8")):
    for _n in _names:
        _TYPES[_n] = _dtype


class NRRDError(ValueError):
    """A file that this reader cannot read as an NRRD volume; the message names it and says why."""


def read_nrrd(path) -> tuple[np.ndarray, dict]:
    """The volume of an NRRD file (attached header) and its header fields.

    The array's axes are the NRRD ``sizes`` reversed (NRRD lists the fastest axis first), so a
    ``sizes: 512 512 61`` CT volume comes back as (61, 512, 512): slices, rows, columns.
    """
    path = Path(path)
    return read_nrrd_bytes(path.read_bytes(), source=path)


def read_nrrd_bytes(blob: bytes, source="<bytes>") -> tuple[np.ndarray, dict]:
    """:func:`read_nrrd` on the bytes of a file."""
    if not blob.startswith(b"NRRD000"):
        raise NRRDError(f"{source}: not an NRRD file (it does not start with 'NRRD000x')")
    fields, pos = {}, blob.index(b"\n") + 1
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise NRRDError(f"{source}: the header never ends (no blank line before the data)")
        line = blob[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if not line:
            break
        if line.startswith("#") or line.find(":=") == line.find(":") >= 0:
            continue  # comments and key:=value pairs carry nothing the pixels need
        if ": " not in line:
            raise NRRDError(f"{source}: header line {line!r} is not 'field: value'")
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    for key in ("type", "sizes", "encoding"):
        if key not in fields:
            raise NRRDError(f"{source}: the header has no {key!r} field")
    for key in ("data file", "datafile"):
        if key in fields:
            raise NRRDError(f"{source}: detached data ({key}: {fields[key]}) is not supported; "
                            f"give the file with the data attached")
    for key in ("line skip", "lineskip", "byte skip", "byteskip"):
        if int(fields.get(key, "0")) != 0:
            raise NRRDError(f"{source}: {key} {fields[key]} is not supported")
    kind = _TYPES.get(fields["type"].lower())
    if kind is None:
        raise NRRDError(f"{source}: type {fields['type']!r} is not supported (integers and floats are)")
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
    except ValueError:
        raise NRRDError(f"{source}: sizes {fields['sizes']!r} are not whole numbers") from None
    if "dimension" in fields and int(fields["dimension"]) != len(sizes):
        raise NRRDError(f"{source}: dimension {fields['dimension']} but {len(sizes)} sizes")
    if not sizes or min(sizes) < 1:
        raise NRRDError(f"{source}: sizes {fields['sizes']!r} must be positive")
    endian = fields.get("endian", "little").lower()
    if np.dtype(kind).itemsize > 1 and endian not in ("little", "big"):
        raise NRRDError(f"{source}: endian {endian!r} is neither little nor big")
    dtype = np.dtype(("<" if endian == "little" else ">") + kind)
    encoding = fields["encoding"].lower()
    payload = blob[pos:]
    try:
        if encoding in ("gzip", "gz"):
            payload = gzip.decompress(payload)
        elif encoding in ("bzip2", "bz2"):
            payload = bz2.decompress(payload)
        elif encoding != "raw":
            raise NRRDError(f"{source}: encoding {encoding!r} is not supported (raw, gzip and bzip2 are)")
    except (OSError, EOFError) as exc:
        raise NRRDError(f"{source}: the {encoding} data does not decompress ({exc})") from None
    count = int(np.prod(sizes))
    if len(payload) != count * dtype.itemsize:
        raise NRRDError(f"{source}: {len(payload)} bytes of data, expected {count * dtype.itemsize} "
                        f"({' x '.join(map(str, sizes))} of {fields['type']})")
    volume = np.frombuffer(payload, dtype=dtype).reshape(sizes[::-1])
    return volume.astype(dtype.newbyteorder("="), copy=False), fields


def fetch_sdist(cache) -> Path:
    """The pyradiomics 3.0.1 sdist in ``cache`` (downloaded there by pip when absent).

    ``--no-build-isolation`` because pip prepares the sdist's metadata, and its setup imports
    numpy: an isolated build environment would have to fetch numpy as well.
    """
    cache = Path(cache)
    tarball = cache / SDIST_FILE
    if tarball.is_file():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           SDIST, "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not tarball.is_file():
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"could not fetch the {SDIST} sdist with pip ({' '.join(cmd[2:])}): {tail}")
    return tarball


def sdist_volume(tarball, name: str) -> tuple[np.ndarray, dict]:
    """One NRRD volume (e.g. ``lung2_image.nrrd``) read from the sdist's ``data/`` folder."""
    with tarfile.open(tarball) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/data/" + name)), None)
        if member is None:
            raise FileNotFoundError(f"{tarball}: no data/{name} inside")
        blob = tar.extractfile(member).read()
    return read_nrrd_bytes(blob, source=f"{Path(tarball).name}:data/{name}")


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

    tarball = fetch_sdist(cache)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    written, parts = 0, []
    for name, span in FOLDER_PLAN:
        if written >= count:
            break
        volume, fields = sdist_volume(tarball, name)
        if volume.ndim != 3 or volume.dtype != np.int16:
            raise NRRDError(f"{name}: expected a 3-D int16 volume, got {volume.shape} {volume.dtype}")
        lo, hi = span if span else (0, volume.shape[0])
        hi = min(hi, lo + count - written)
        spacing = _spacing(fields)
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


def _spacing(fields: dict) -> tuple[float, float, float]:
    """Voxel spacing along the NRRD axes (x, y, z) from ``space directions`` (1 mm when absent)."""
    text = fields.get("space directions", "")
    vectors = []
    for part in text.replace(" ", "").split(")("):
        part = part.strip("()")
        try:
            vectors.append(float(np.linalg.norm([float(v) for v in part.split(",")])))
        except ValueError:
            return 1.0, 1.0, 1.0
    return tuple(vectors) if len(vectors) == 3 else (1.0, 1.0, 1.0)


if __name__ == "__main__":  # python benchmarks/_volumes.py CACHE: build the folder and say what it holds
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    where, what = ct_slice_folder(sys.argv[1] if len(sys.argv) > 1 else root / "out" / "cache")
    print(where, "\n", what)
