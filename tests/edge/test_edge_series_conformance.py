"""The DICOM files a series stream decodes to, checked by dciodvfy as tests/test_dicom_conformance.py does:
no output may carry an error or warning its source slice did not have, except the documented method name
(KERAS_CODEC is no DICOM defined term). The slices are real CT and MR headers (pydicom's CT_small and
MR_small) given positions along their normal, new instance numbers and UIDs. Skipped without dciodvfy."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from edge_runtime import runtime, series

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed, so the DICOM conformance check cannot run: "
                             "apt-get install dicom3tools (make test does this on Debian when it runs as root)")
METHOD_WARNING = re.compile(r"^Warning - </LossyImageCompressionMethod\(0028,2114\)\[\d+\]> - "
                            r"Unrecognized defined term = <KERAS_CODEC>$")
SLICES = 3


def findings(path: Path) -> Counter:
    run = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return Counter(line.strip() for line in (run.stdout + run.stderr).splitlines()
                   if line.startswith(("Error", "Warning")))


@pytest.fixture(scope="module")
def codec():
    return runtime.load_codec(None)  # the shipped bundle: lossless needs its residual model


def _series_from(name: str, folder: Path) -> dict:
    """SLICES copies of a real slice along its normal (2 mm apart), as one series; file name -> findings."""
    src = pydicom.dcmread(get_testdata_file(name))
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    series_uid = generate_uid()
    folder.mkdir()
    out = {}
    for k in range(SLICES):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = 10 + k
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + 2.0 * k * normal]
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{float(ds.SliceLocation) + 2.0 * k:.4f}"
        path = folder / f"{name[:2]}{SLICES - k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[path.name] = findings(path)
    return out


@pytest.mark.parametrize("mode", [{"quality": 17}, {"max_error": 0}], ids=["q17", "d0"])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_decoded_slices_add_no_validator_finding(name, mode, codec, tmp_path):
    before = _series_from(name, tmp_path / "in")
    kcd, out = tmp_path / "s.kcd", tmp_path / "out"
    series.encode_series(tmp_path / "in", kcd, bundle=codec, jobs=1, **mode)
    r = series.decode_series(kcd, out, bundle=codec, jobs=1)
    assert r["slices"] == SLICES and sorted(p.name for p in out.iterdir()) == sorted(before)
    for file_name, found in before.items():
        after = findings(out / file_name)
        # the validator did read the output: a lossy one names the method DICOM has no term for
        assert any(METHOD_WARNING.match(line) for line in after) == ("quality" in mode), after
        new = [line for line in (after - found) if not METHOD_WARNING.match(line)]
        assert not new, f"{name} {mode} {file_name}: dciodvfy findings the source did not have:\n" + "\n".join(new)
