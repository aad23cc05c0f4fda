"""The speed benchmark's NRRD reader (benchmarks/_volumes.py) on tiny files written here."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_volumes", ROOT / "benchmarks" / "_volumes.py")
volumes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(volumes)


def _nrrd(path: Path, array: np.ndarray, type_name: str, encoding: str, endian: str = "little", extra=()):
    """An attached-header NRRD of `array` (C order, so NRRD sizes are its shape reversed)."""
    order = "<" if endian == "little" else ">"
    payload = np.ascontiguousarray(array).astype(array.dtype.newbyteorder(order)).tobytes()
    if encoding == "gzip":
        payload = gzip.compress(payload)
    header = ["NRRD0004", "# written by the test", f"type: {type_name}", f"dimension: {array.ndim}",
              f"sizes: {' '.join(str(s) for s in array.shape[::-1])}", f"endian: {endian}",
              f"encoding: {encoding}", "space directions: (0.5,0,0) (0,0.5,0) (0,0,2.5)", "note:=a key/value pair",
              *extra]
    path.write_bytes(("\n".join(header) + "\n\n").encode() + payload)
    return path


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_reads_signed_volume(tmp_path, encoding):
    vol = (np.arange(3 * 4 * 5, dtype=np.int16) * 37 - 1000).reshape(3, 4, 5)
    got, fields = volumes.read_nrrd(_nrrd(tmp_path / "v.nrrd", vol, "short", encoding))
    assert got.shape == (3, 4, 5) and got.dtype == np.int16
    np.testing.assert_array_equal(got, vol)
    assert fields["encoding"] == encoding and fields["sizes"] == "5 4 3"
    assert volumes._spacing(fields) == (0.5, 0.5, 2.5)


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_reads_big_endian_unsigned(tmp_path, encoding):
    vol = np.array([[1, 2, 65535], [256, 0, 4095]], dtype=np.uint16)
    got, _ = volumes.read_nrrd(_nrrd(tmp_path / "b.nrrd", vol, "unsigned short", encoding, endian="big"))
    np.testing.assert_array_equal(got, vol)
    assert got.dtype == np.uint16 and got.dtype.byteorder in ("=", "|", "<")


def test_refuses_short_data_and_detached_files(tmp_path):
    vol = np.zeros((2, 3), np.int16)
    p = _nrrd(tmp_path / "s.nrrd", vol, "short", "raw")
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(volumes.NRRDError, match="10 bytes of data, expected 12"):
        volumes.read_nrrd(p)
    d = _nrrd(tmp_path / "d.nrrd", vol, "short", "raw", extra=["data file: d.raw"])
    with pytest.raises(volumes.NRRDError, match="detached"):
        volumes.read_nrrd(d)
    with pytest.raises(volumes.NRRDError, match="not an NRRD"):
        volumes.read_nrrd_bytes(b"P5\n2 3\n255\n")
    with pytest.raises(volumes.NRRDError, match="encoding 'ascii'"):
        volumes.read_nrrd(_nrrd(tmp_path / "a.nrrd", vol, "short", "ascii"))
