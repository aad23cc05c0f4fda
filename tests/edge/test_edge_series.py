"""A folder of single-slice DICOM files as one stream (edge_runtime.series): reading, ordering, refusals,
the packed headers, and encode --series / decode to a folder / info / verify through the CLI."""
from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from data.image import InvalidImageError
from edge_runtime import bitstream as bs
from edge_runtime import series
from edge_runtime.bundle import RESIDUAL_FILE, default_bundle_path
from edge_runtime.cli import main

ROWS = COLS = 32
# an oblique slice plane: rows along x, columns tilted 30 degrees out of the y axis
IOP = [1.0, 0.0, 0.0, 0.0, float(np.cos(np.pi / 6)), float(np.sin(np.pi / 6))]
NORMAL = np.cross(IOP[:3], IOP[3:])


def _slice(k: int, study: str, series_uid: str, *, position=True, instance=None, **changes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "Series^Test", "S1"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "", ""
    ds.StudyID, ds.SeriesNumber = "1", 3
    ds.Manufacturer, ds.FrameOfReferenceUID = "test", study[:-1] + "9"
    ds.InstanceNumber = instance if instance is not None else k + 1
    if position:
        origin = np.array([-100.0, -80.0, 40.0])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + 2.5 * k * NORMAL]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in IOP]
    ds.PixelSpacing, ds.SliceThickness = ["0.7", "0.7"], "2.5"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    r, c = np.mgrid[0:ROWS, 0:COLS]
    pixels = (200 + 40 * k + 9 * r - 5 * c + 300 * ((r - 16) ** 2 + (c - 12 - k) ** 2 < 40)).astype(np.int16)
    for key, value in changes.items():
        setattr(ds, key, value)
    if ds.BitsAllocated == 8:
        pixels = np.clip(pixels // 16, 0, 255).astype(np.uint8)
    elif ds.PixelRepresentation == 0:
        pixels = pixels.astype(np.uint16)
    pixels = pixels[:ds.Rows, :ds.Columns] if ds.Rows <= ROWS else np.resize(pixels, (ds.Rows, ds.Columns))
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def make_series(folder: Path, n: int = 5, seed: int = 0, *, position=True, instances=None, odd=None) -> list:
    """n slices written under shuffled file names; returns the datasets in position order.

    ``instances``: Instance Number per slice (default: reversed positions, so ordering by position is
    visible); ``odd``: (slice index, changes) for one slice that differs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series_uid = generate_uid(), generate_uid()
    names = [f"IM{v:04d}" + (".dcm" if v % 2 else "") for v in random.Random(seed).sample(range(100, 999), n)]
    out = []
    for k in range(n):
        changes = odd[1] if odd is not None and odd[0] == k else {}
        instance = (instances[k] if instances is not None else n - k)
        ds = _slice(k, study, series_uid, position=position, instance=instance, **changes)
        ds.save_as(folder / names[k], enforce_file_format=True)
        out.append((names[k], ds))
    return out


@pytest.fixture(scope="module")
def bounded_bundle(tmp_path_factory, bundle_path) -> Path:
    """The TFLite test bundle plus the shipped residual model (lossless and max-error coding)."""
    folder = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(bundle_path, folder)
    shutil.copy(default_bundle_path() / RESIDUAL_FILE, folder / RESIDUAL_FILE)
    return folder


def _read(path) -> Dataset:
    return pydicom.dcmread(path)


# --------------------------------------------------------------------------- reading

def test_slices_ordered_by_position_along_the_normal(tmp_path):
    made = make_series(tmp_path / "s", n=6)
    s = series.read_series(tmp_path / "s")
    assert s.ordering == series.ORDER_POSITION
    assert s.names == [name for name, _ in made]  # position order, not file-name or instance order
    for k, (_, ds) in enumerate(made):
        np.testing.assert_array_equal(s.image.pixels[k, :, :, 0], ds.pixel_array)
    assert s.image.pixels.shape == (6, ROWS, COLS, 1) and s.image.signed and s.image.bits_stored == 12


def test_without_positions_instance_number_orders(tmp_path):
    made = make_series(tmp_path / "s", n=4, position=False, instances=[7, 3, 9, 1])
    s = series.read_series(tmp_path / "s")
    assert s.ordering == series.ORDER_INSTANCE
    by_number = sorted(made, key=lambda m: m[1].InstanceNumber)
    assert s.names == [name for name, _ in by_number]


def test_without_position_or_distinct_numbers_file_names_order(tmp_path):
    make_series(tmp_path / "s", n=3, position=False, instances=[1, 1, 2])
    s = series.read_series(tmp_path / "s")
    assert s.ordering == series.ORDER_NAME and s.names == sorted(s.names)


@pytest.mark.parametrize("changes, what", [
    ({"SeriesInstanceUID": "1.2.3.4"}, "Series Instance UID 1.2.3.4"),
    ({"Rows": 16}, "Rows 16 against 32"),
    ({"BitsStored": 10, "HighBit": 9}, "Bits Stored 10 against 12"),
    ({"PhotometricInterpretation": "MONOCHROME1"}, "Photometric Interpretation MONOCHROME1"),
    ({"PixelRepresentation": 0}, "Pixel Representation 0 against 1"),
    ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 1}, "Bits Allocated 8 against 16"),
    ({"ImageOrientationPatient": ["0", "1", "0", "0", "0", "-1"]}, "Image Orientation (Patient) 0\\1\\0"),
])
def test_mixed_series_refused_naming_folder_file_and_difference(tmp_path, changes, what):
    made = make_series(tmp_path / "s", n=4, odd=(2, changes))
    with pytest.raises(InvalidImageError) as info:
        series.read_series(tmp_path / "s")
    text = str(info.value)
    first = sorted(name for name, _ in made)[0]
    odd = made[2][0]
    offender = odd if odd != first else sorted(name for name, _ in made)[1]
    assert text.startswith(str(tmp_path / "s")) and offender in text and what in text, text


def test_cli_refuses_a_mixed_folder_and_writes_nothing(tmp_path, bundle_path, capsys):
    made = make_series(tmp_path / "s", n=3, odd=(1, {"SeriesInstanceUID": "1.2.3.4"}))
    out = tmp_path / "x.kcd"
    rc = main(["encode", "--series", str(tmp_path / "s"), str(out), "--bundle", str(bundle_path)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "Series Instance UID" in err and str(tmp_path / "s") in err
    assert any(name in err for name, _ in made)


def test_other_files_refused(tmp_path):
    make_series(tmp_path / "s", n=2)
    (tmp_path / "s" / "notes.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(InvalidImageError, match="notes.png is not a DICOM file"):
        series.read_series(tmp_path / "s")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("not a slice")
    with pytest.raises(InvalidImageError, match="holds no DICOM files"):
        series.read_series(tmp_path / "e")


def test_files_named_by_uid_are_slices_and_notes_left_alone(tmp_path):
    made = make_series(tmp_path / "s", n=3)
    for name, ds in made:
        (tmp_path / "s" / name).rename(tmp_path / "s" / ds.SOPInstanceUID)  # suffix: the UID's last part
    (tmp_path / "s" / "series.json").write_text("{}")
    s = series.read_series(tmp_path / "s")
    assert s.names == [ds.SOPInstanceUID for _, ds in made]
    assert series.output_names(s.names) == [uid + ".dcm" for uid in s.names]


# --------------------------------------------------------------------------- packed headers

def _headers(folder: Path):
    s = series.read_series(folder)
    return s, s.headers


def test_packed_headers_give_back_every_slice_header(tmp_path):
    make_series(tmp_path / "s", n=5)
    s, headers = _headers(tmp_path / "s")
    for dedup in (True, False):
        blob = series.pack_headers(headers, s.names, s.ordering, dedup=dedup)
        got = series.unpack_headers(blob)
        assert got.count == 5 and got.names == s.names and got.ordering == s.ordering
        assert (len(got.common) > 0) == dedup
        for k in range(5):
            want = pydicom.dcmread(__import__("io").BytesIO(headers[k]), force=True)
            have = got.slice_dataset(k)
            assert [e.tag for e in have] == [e.tag for e in want]
            assert all(have[e.tag].value == e.value for e in want), k
    small = series.pack_headers(headers, s.names, s.ordering)
    whole = series.pack_headers(headers, s.names, s.ordering, dedup=False)
    common = len(series.unpack_headers(small).common)
    assert common > len(headers[0]) / 2 and len(whole) - len(small) == (len(headers) - 1) * common  # stored once


def test_packed_layout_is_the_documented_one(tmp_path):
    make_series(tmp_path / "s", n=3)
    s, headers = _headers(tmp_path / "s")
    blob = series.pack_headers(headers, s.names, s.ordering)
    magic, version, ordering, zero, count, common = struct.unpack_from("<4sHBBII", blob)
    assert (magic, version, ordering, zero, count) == (b"KCSH", 1, series.ORDER_POSITION, 0, 3)
    lengths = struct.unpack_from("<3I", blob, 16 + common)
    assert 16 + common + 12 + sum(lengths) == len(blob)
    first = blob[16 + common + 12:][:lengths[0]]
    k = struct.unpack_from("<H", first)[0]
    assert first[2:2 + k].decode() == s.names[0]


def test_bad_packed_blocks_raise_bitstream_errors(tmp_path):
    make_series(tmp_path / "s", n=3)
    s, headers = _headers(tmp_path / "s")
    blob = series.pack_headers(headers, s.names, s.ordering)
    for bad in (blob[:10], blob[:-1], b"XXXX" + blob[4:], blob[:4] + b"\x09\x00" + blob[6:],
                blob[:8] + struct.pack("<I", 10 ** 6) + blob[12:], blob[:12] + struct.pack("<I", len(blob)) + blob[16:]):
        with pytest.raises(bs.InvalidBitstreamError):
            series.unpack_headers(bad)


def test_output_names():
    assert series.output_names(["IM0001", "b.dcm", "c.DCM"]) == ["IM0001.dcm", "b.dcm", "c.dcm"]
    assert series.output_names(["a.dcm", "A.DCM"]) == ["slice_0001.dcm", "slice_0002.dcm"]
    assert series.output_names(["../x.dcm", "y"]) == ["slice_0001.dcm", "slice_0002.dcm"]
    assert series.output_names([".hidden", "y"]) == ["slice_0001.dcm", "slice_0002.dcm"]


# --------------------------------------------------------------------------- through the CLI

@pytest.mark.parametrize("mode", [["--max-error", "0"], ["--quality", "14"]])
def test_encode_decode_info_verify(tmp_path, bounded_bundle, capsys, mode):
    made = make_series(tmp_path / "s", n=5)
    kcd, out = tmp_path / "x.kcd", tmp_path / "out"
    bundle = ["--bundle", str(bounded_bundle)]
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), *mode, *bundle]) == 0
    assert "5 slices (ordered by Image Position" in capsys.readouterr().out
    header, _, metadata = bs.parse(kcd.read_bytes())
    assert header.frames == 5 and header.series and header.version == bs.GROUPS_VERSION
    assert series.is_series(header, metadata)

    assert main(["info", str(kcd), *bundle]) == 0
    shown = capsys.readouterr().out
    assert f"5 slice(s), ordered by Image Position (Patient) along the slice normal, groups of {header.group}" in shown

    assert main(["verify", str(kcd), *bundle]) == 0
    assert main(["decode", str(kcd), str(out) + "/", *bundle]) == 0
    files = sorted(out.iterdir())
    assert sorted(p.name for p in files) == sorted(series.output_names([n for n, _ in made]))
    for name, src in made:
        ds = _read(out / series.output_names([name])[0])
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert (ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber) == (
            src.SeriesInstanceUID, src.StudyInstanceUID, src.InstanceNumber)
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in src.ImagePositionPatient]
        err = np.abs(ds.pixel_array.astype(int) - src.pixel_array.astype(int)).max()
        if mode[0] == "--max-error":
            assert err == 0 and ds.LossyImageCompression == "00"
        else:
            assert 0 < err < 200 and ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    # never over existing files without --force, and nothing written then
    before = {p: p.stat().st_mtime_ns for p in files}
    assert main(["decode", str(kcd), str(out), *bundle]) == 1
    assert "--force" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in sorted(out.iterdir())} == before
    assert main(["decode", str(kcd), str(out), "--force", *bundle]) == 0


def test_series_stream_to_one_dicom_is_refused(tmp_path, bundle_path, capsys):
    make_series(tmp_path / "s", n=2)
    kcd = tmp_path / "x.kcd"
    bundle = ["--bundle", str(bundle_path)]
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), *bundle]) == 0
    assert main(["decode", str(kcd), str(tmp_path / "one.dcm"), *bundle]) == 1
    assert "OUTDIR" in capsys.readouterr().err and not (tmp_path / "one.dcm").exists()
    assert main(["decode", str(kcd), str(tmp_path / "all.tif"), *bundle]) == 0  # pixels only


def test_single_image_stream_to_a_folder_is_refused(tmp_path, bundle_path, synthetic_dcm, capsys):
    kcd = tmp_path / "one.kcd"
    bundle = ["--bundle", str(bundle_path)]
    assert main(["encode", str(synthetic_dcm), str(kcd), *bundle]) == 0
    assert main(["decode", str(kcd), str(tmp_path / "out") + "/", *bundle]) == 1
    assert "not a series" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_packed_headers_keep_text_in_its_character_set(tmp_path):
    names = ["Müller^Jürgen=山田^太郎", "Øster^Åse"]
    made = make_series(tmp_path / "s", n=2)
    for (name, ds), person in zip(made, names):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.StudyDescription = names[0], person  # shared, and each slice's own
        ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    s = series.read_series(tmp_path / "s")
    got = series.unpack_headers(series.pack_headers(s.headers, s.names, s.ordering))
    assert got.common  # shared elements, among them the character set and the patient's name
    for k, person in enumerate(names):
        ds = got.slice_dataset(k)
        assert (str(ds.PatientName), ds.StudyDescription) == (names[0], person)


def test_implicit_vr_headers_are_kept_whole(tmp_path):
    import io

    make_series(tmp_path / "s", n=3)
    s = series.read_series(tmp_path / "s")
    implicit = []
    for h in s.headers:
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, pydicom.dcmread(io.BytesIO(h), force=True), implicit_vr=True, little_endian=True)
        implicit.append(buf.getvalue())
    got = series.unpack_headers(series.pack_headers(implicit, s.names, s.ordering))
    assert got.common == b"" and got.own == implicit  # nothing shared: each header as it came
    assert [got.slice_dataset(k).InstanceNumber for k in range(3)] == [3, 2, 1]


_BLOB = []


def _valid_block(tmp_path_factory) -> bytes:
    if not _BLOB:
        folder = tmp_path_factory.mktemp("blob") / "s"
        make_series(folder, n=3)
        s = series.read_series(folder)
        _BLOB.append(series.pack_headers(s.headers, s.names, s.ordering))
    return _BLOB[0]


def test_damaged_blocks_fail_only_as_bitstream_errors(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings, strategies as st

    blob = _valid_block(tmp_path_factory)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cut=st.integers(0, len(blob)), at=st.integers(0, len(blob) - 1), value=st.integers(0, 255))
    def check(cut, at, value):
        damaged = bytearray(blob[:cut] if cut < len(blob) else blob)
        if at < len(damaged):
            damaged[at] = value
        try:
            got = series.unpack_headers(bytes(damaged))
            for k in range(got.count):
                got.slice_dataset(k)
        except bs.InvalidBitstreamError:
            pass

    check()


def test_series_flag_without_a_series_block_is_refused(tmp_path, codec, synthetic_dcm):
    from data.readers import read_image
    from edge_runtime import runtime
    from edge_runtime.codec import encode_image

    bundle, coder = codec
    image = read_image(synthetic_dcm)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=10, series=True,
                        metadata=runtime.dicom_metadata(image.dataset))  # a DICOM header, not a series block
    kcd = tmp_path / "x.kcd"
    kcd.write_bytes(data)
    with pytest.raises(bs.InvalidBitstreamError, match="not a series block"):
        runtime.info(kcd)
    with pytest.raises(bs.InvalidBitstreamError, match="not a series block"):
        series.decode_series(kcd, tmp_path / "out", bundle=codec)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [["--max-error", "0"], ["--quality", "14"]])
def test_slices_written_from_their_header_bytes_are_write_dicoms_files(tmp_path, bounded_bundle, monkeypatch, mode):
    """A series decode writes each slice from its common and own header bytes (data.dicom_bytes, no pydicom): the
    same bytes as write_dicom on the parsed header (the new UID fixed), with text in UTF-8 too."""
    from data import writers

    made = make_series(tmp_path / "s", n=3)
    for k, (name, ds) in enumerate(made):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.StudyDescription = "Müller^Jürgen=山田^太郎", f"Série {k}"
        ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    kcd, bundle = tmp_path / "x.kcd", ["--bundle", str(bounded_bundle)]
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), *mode, *bundle]) == 0
    monkeypatch.setattr(writers, "_new_uid", lambda: "2.25.1234567890")
    fast = []
    real = writers.write_dicom_from_header
    monkeypatch.setattr(writers, "write_dicom_from_header", lambda *a, **k: fast.append(real(*a, **k)) or fast[-1])
    assert main(["decode", str(kcd), str(tmp_path / "fast"), *bundle]) == 0
    assert fast == [True] * 3
    monkeypatch.setattr(writers, "write_dicom_from_header", lambda *a, **k: False)  # the parsed headers' path
    assert main(["decode", str(kcd), str(tmp_path / "parsed"), *bundle]) == 0
    names = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parsed").iterdir()) and len(names) == 3
    for n in names:
        assert (tmp_path / "fast" / n).read_bytes() == (tmp_path / "parsed" / n).read_bytes()
    assert str(_read(tmp_path / "fast" / names[0]).PatientName) == "Müller^Jürgen=山田^太郎"
