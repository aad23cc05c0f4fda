"""The NRRD reader (data.readers.read_nrrd, used by the corpus volumes and the speed benchmark) on tiny files."""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from data import readers as volumes
from data.image import InvalidImageError

ROOT = Path(__file__).resolve().parents[1]


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
    assert volumes.nrrd_spacing(fields) == (0.5, 0.5, 2.5)
    assert volumes.nrrd_header(tmp_path / "v.nrrd") == fields


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


def test_errors_are_image_errors_naming_the_file(tmp_path):
    p = _nrrd(tmp_path / "s.nrrd", np.zeros((2, 3), np.int16), "short", "raw")
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(InvalidImageError) as info:
        volumes.read_nrrd(p)
    assert str(info.value).startswith(str(p))
    copy = pickle.loads(pickle.dumps(info.value))  # a worker process can report it
    assert type(copy) is volumes.NRRDError and str(copy) == str(info.value)
    with pytest.raises(volumes.NRRDError, match="no such file"):
        volumes.read_nrrd(tmp_path / "absent.nrrd")


def test_the_benchmark_uses_this_reader():
    spec = importlib.util.spec_from_file_location("bench_volumes", ROOT / "benchmarks" / "_volumes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.read_nrrd is volumes.read_nrrd and bench.NRRDError is volumes.NRRDError
