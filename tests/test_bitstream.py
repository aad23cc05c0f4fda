"""The .kcd container: round trips, defensive parsing and the golden file."""
import hashlib
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    Header,
    InvalidBitstreamError,
    atomic_write_bytes,
    pack,
    parse,
    read_header,
    tile_grid,
)

GOLDEN = Path(__file__).parent / "golden" / "tiny.kcd"
MODEL_ID = hashlib.sha256(b"test bundle").digest()
OTHER_ID = hashlib.sha256(b"another bundle").digest()


def make_header(**changes) -> Header:
    fields = dict(model_id=MODEL_ID, rows=5, cols=7, frames=1, samples=1, bits_stored=12, signed=False,
                  dtype="uint16", photometric="MONOCHROME2", quality=40, max_error=-1, lossless=False,
                  levels=3, tile_rows=4, tile_cols=4)
    fields.update(changes)
    header = Header(**fields)
    if "norm" not in changes:
        header.norm = [(plane, 100 + plane) for plane in range(header.planes)]
    return header


def make_tiles(header: Header) -> list:
    """Deterministic tile streams of varied lengths (one empty)."""
    return [bytes((i * 7 + j) % 256 for j in range((i * 5) % 11)) for i in range(header.n_tiles)]


def golden_stream() -> tuple:
    """The inputs of tests/golden/tiny.kcd: two signed frames, four tiles each, with metadata."""
    header = make_header(frames=2, dtype="int16", signed=True, bits_stored=13, max_error=2,
                         norm=[(-1024, 3071), (-7, 9)])
    return header, make_tiles(header), b"(0008,0060) CS CT\n(0010,0010) PN Doe^Jane\n"


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def patched(stream: bytes, offset: int, fmt: str, value) -> bytes:
    """``stream`` with one field rewritten and a CRC that is valid again."""
    body = bytearray(stream[:-4])
    struct.pack_into(fmt, body, offset, value)
    return with_crc(bytes(body))


def small_stream() -> bytes:
    header = make_header()
    return pack(header, make_tiles(header), b"meta")


HEADERS = [
    make_header(),
    make_header(frames=3, rows=9, cols=4, tile_rows=3, tile_cols=8),
    make_header(samples=3, dtype="uint8", bits_stored=8, photometric="RGB", tile_rows=2, tile_cols=3),
    make_header(dtype="int16", signed=True, bits_stored=16, norm=[(-32768, 32767)], max_error=0, lossless=True),
    make_header(dtype="int8", signed=True, bits_stored=7, norm=[(-64, 63)], max_error=4, rows=1, cols=1),
    make_header(rows=300, cols=2, tile_rows=256, tile_cols=256, photometric="YBR_FULL_422" + "X" * 20,
                samples=3, frames=2),
]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("metadata", [None, b"", b"\x00\x01" * 500])
def test_round_trip(header, metadata):
    tiles = make_tiles(header)
    stream = pack(header, tiles, metadata)
    got_header, got_tiles, got_metadata = parse(stream, expected_model_ids=[MODEL_ID])
    assert got_header == header
    assert got_tiles == tiles
    assert got_metadata == metadata
    assert read_header(stream) == header


@pytest.mark.parametrize("rows,cols,tr,tc", [(1, 1, 1, 1), (5, 7, 4, 4), (8, 8, 4, 4), (3, 10, 5, 3),
                                             (512, 512, 256, 256), (17, 2, 1, 100)])
def test_tile_grid_covers_the_image_exactly(rows, cols, tr, tc):
    grid = tile_grid(rows, cols, tr, tc)
    covered = [[0] * cols for _ in range(rows)]
    for r0, r1, c0, c1 in grid:
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols
        assert r1 - r0 <= tr and c1 - c0 <= tc
        for r in range(r0, r1):
            for c in range(c0, c1):
                covered[r][c] += 1
    assert all(count == 1 for row in covered for count in row)
    assert grid == sorted(grid)
    assert len(grid) == -(-rows // tr) * -(-cols // tc)


def test_tile_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="tile_rows"):
        tile_grid(4, 4, 0, 2)


def test_every_truncation_is_rejected():
    stream = small_stream()
    for length in range(len(stream)):
        with pytest.raises(InvalidBitstreamError):
            parse(stream[:length])


def test_truncation_message_says_so():
    stream = small_stream()
    with pytest.raises(InvalidBitstreamError, match="truncated"):
        parse(stream[:20], source="scan.kcd")
    with pytest.raises(InvalidBitstreamError, match="corrupt or truncated"):
        parse(stream[:-1])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flips_are_always_caught(data):
    stream = small_stream()
    positions = data.draw(st.sets(st.integers(0, 8 * len(stream) - 1), min_size=1, max_size=3))
    damaged = bytearray(stream)
    for bit in positions:
        damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidBitstreamError) as info:
        parse(bytes(damaged))
    if min(positions) >= 48:
        assert "CRC mismatch" in str(info.value)


def test_wrong_magic():
    stream = small_stream()
    with pytest.raises(InvalidBitstreamError, match=r"^scan\.png: not a keras_codec stream"):
        parse(b"\x89PNG" + stream[4:], source="scan.png")
    with pytest.raises(InvalidBitstreamError, match="not a keras_codec stream"):
        parse(b"GIF")


def test_wrong_version():
    stream = patched(small_stream(), 4, "<H", 3)
    with pytest.raises(InvalidBitstreamError, match="unsupported format version 3; this decoder reads version 1, 2"):
        parse(stream)


def test_wrong_model_id():
    stream = small_stream()
    with pytest.raises(InvalidBitstreamError) as info:
        parse(stream, source="a.kcd", expected_model_ids=[OTHER_ID])
    message = str(info.value)
    assert message.startswith("a.kcd: made by model " + MODEL_ID.hex()[:12])
    assert "this decoder holds " + OTHER_ID.hex()[:12] in message
    assert "use the bundle it was made with" in message
    assert parse(stream, expected_model_ids=[MODEL_ID.hex()])[0].model_id == MODEL_ID


def test_absurd_geometry_is_rejected_before_allocating():
    stream = patched(small_stream(), 40, "<I", 2 ** 32 - 1)
    stream = patched(stream, 44, "<I", 2 ** 32 - 1)
    stream = patched(stream, 48, "<I", 2 ** 32 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidBitstreamError, match="absurd geometry"):
            parse(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_max_pixels_is_configurable():
    stream = small_stream()
    with pytest.raises(InvalidBitstreamError, match="absurd geometry"):
        parse(stream, max_pixels=34)
    parse(stream, max_pixels=35)


PHOT = 58 + len("MONOCHROME2")


@pytest.mark.parametrize("offset,fmt,value,message", [
    (6, "<H", 0x0010, "unknown flag bits"),
    (6, "<H", 0x0000, "unexpected byte"),
    (6, "<H", 0x0006, "error-bounded flag is set"),
    (6, "<H", 0x0003, "lossless stream must have max_error 0"),
    (40, "<I", 0, "at least 1"),
    (48, "<I", 0, "at least 1"),
    (52, "<H", 2, "samples per pixel must be 1 or 3"),
    (54, "<B", 17, "bits stored 17"),
    (54, "<B", 0, "bits stored 0"),
    (55, "<B", 1, "signed is True but dtype is uint16"),
    (55, "<B", 2, "signed flag 2"),
    (56, "<B", 4, "dtype code 4"),
    (57, "<B", 0, "photometric length 0"),
    (57, "<B", 255, "photometric length 255"),
    (58, "<B", 0x07, "not printable ASCII"),
    (PHOT + 1, "<i", -5, "max_error -5"),
    (PHOT + 6, "<I", 0, "tile size"),
    (PHOT + 14, "<i", 101, "lo=101, hi=100"),
    (PHOT + 14, "<i", -1, "expected 0 <= lo"),
    (PHOT + 22, "<I", 3, "needs 4 tiles, the stream says 3"),
    (PHOT + 26, "<I", 2 ** 32 - 1, "tile lengths add up to"),
])
def test_inconsistent_fields_with_valid_crc(offset, fmt, value, message):
    with pytest.raises(InvalidBitstreamError, match=message):
        parse(patched(small_stream(), offset, fmt, value), source="x.kcd")


def test_lengths_are_checked_against_the_remaining_bytes():
    header = make_header()
    stream = pack(header, make_tiles(header), b"meta")
    body = stream[:-4]
    meta_len_at = len(body) - len(zlib.compress(b"meta", 9)) - 4
    with pytest.raises(InvalidBitstreamError, match="metadata block of 4000 bytes needs 4000 bytes"):
        parse(patched(stream, meta_len_at, "<I", 4000))
    with pytest.raises(InvalidBitstreamError, match="unexpected byte"):
        parse(with_crc(body + b"\x00"))


def test_bad_metadata_block():
    header = make_header()
    stream = pack(header, make_tiles(header), b"meta")
    body = stream[:-4]
    compressed = zlib.compress(b"meta", 9)
    garbage = body[:-len(compressed)] + b"\xff" * len(compressed)
    with pytest.raises(InvalidBitstreamError, match="not valid zlib"):
        parse(with_crc(garbage))
    cut = body[:-len(compressed) - 4] + struct.pack("<I", len(compressed) - 2) + compressed[:-2]
    with pytest.raises(InvalidBitstreamError, match="complete zlib stream"):
        parse(with_crc(cut))


def test_pack_rejects_bad_arguments():
    header = make_header()
    tiles = make_tiles(header)
    with pytest.raises(ValueError, match="give 4 tiles, got 3"):
        pack(header, tiles[:3])
    with pytest.raises(ValueError, match="one \\(lo, hi\\) per plane"):
        pack(make_header(norm=[]), tiles)
    with pytest.raises(ValueError, match="model_id must be 32 bytes"):
        pack(make_header(model_id=b"short"), tiles)
    with pytest.raises(ValueError, match="lossless stream must have max_error 0"):
        pack(make_header(lossless=True), tiles)
    with pytest.raises(ValueError, match="photometric"):
        pack(make_header(photometric="MONOCHRÖME2"), tiles)
    with pytest.raises(ValueError, match="expected 0 <= lo <= hi <= 255"):
        pack(make_header(dtype="uint8", bits_stored=8, norm=[(0, 256)]), tiles)


def test_golden_file():
    header, tiles, metadata = golden_stream()
    stream = pack(header, tiles, metadata)
    if os.environ.get("KCD_REGENERATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        atomic_write_bytes(GOLDEN, stream, overwrite=True)
    golden = GOLDEN.read_bytes()
    assert golden[:4] == MAGIC and int.from_bytes(golden[4:6], "little") == FORMAT_VERSION
    assert parse(golden, source=GOLDEN) == (header, tiles, metadata)
    assert stream == golden, (
        "pack() no longer writes tests/golden/tiny.kcd byte for byte: the format changed. If that is "
        "intended, bump FORMAT_VERSION and regenerate (see tests/golden/README.md)")


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "a.kcd"
    assert atomic_write_bytes(path, b"one") == path
    assert path.read_bytes() == b"one"
    with pytest.raises(FileExistsError, match="a.kcd"):
        atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two", overwrite=True)
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kcd"]
