"""Frame groups (container version 2): closed-loop prediction from the previous decoded frame, random access
by group, the encoder's fallback to intra frames, and the version 2 parser."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.image import Image
from edge_runtime import bitstream as bs
from edge_runtime import codec as kc
from edge_runtime.codec import decode_frames, decode_image, encode_image
from edge_runtime.pool import PlanePool
from edge_runtime.runtime import load_codec


@pytest.fixture(scope="module")
def shipped():
    """The shipped bundle (it has the residual model of --max-error and lossless) and its coder."""
    return load_codec(None)


def _moving(frames=6, rows=32, cols=48, samples=1, seed=3, bits=12, colour=False) -> Image:
    """A textured scene (fixed speckle) in which a disc grows a little each frame, plus a little noise:
    what prediction from the previous frame is for."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    r, c = np.mgrid[0:rows, 0:cols]
    scene = top * (0.35 + 0.15 * np.sin(r / 5.0) * np.cos(c / 7.0) + 0.15 * rng.random((rows, cols)))
    out = []
    for f in range(frames):
        x = scene + top * 0.2 * ((r - rows / 2) ** 2 + (c - cols / 2) ** 2 < (3 + f) ** 2)
        x = x[..., None] + rng.normal(0, top / 2000, (rows, cols, samples))
        if colour:  # a grey picture with a coloured box, as an ultrasound frame with colour Doppler
            x = np.repeat(x[..., :1], 3, axis=2)
            x[2:8, 3:12, 0] += top * 0.1
        out.append(x)
    pixels = np.clip(np.round(np.stack(out)), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)
    return Image(pixels=pixels, bits_stored=bits, signed=False, photometric="RGB" if samples == 3 else "MONOCHROME2",
                 modality="US")


def _unrelated(frames=5, rows=32, cols=48) -> Image:
    """Frames with nothing in common: each a different random smooth field and texture."""
    rng = np.random.default_rng(11)
    r, c = np.mgrid[0:rows, 0:cols]
    out = [2000 + 800 * np.sin(r / rng.uniform(2, 6) + rng.uniform(0, 6)) * np.cos(c / rng.uniform(2, 6))
           + 300 * rng.random((rows, cols)) for _ in range(frames)]
    return Image(pixels=np.clip(np.round(np.stack(out)), 0, 4095).astype(np.uint16)[..., None], bits_stored=12,
                 signed=False, modality="CT")


def _err(a: Image, b: Image) -> int:
    return int(np.abs(a.pixels.astype(np.int64) - b.pixels.astype(np.int64)).max())


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# --- round trips and bounds -------------------------------------------------------------------------

@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), max_error=st.sampled_from([0, 1, 3]), rgb=st.booleans(),
       group=st.integers(1, 5))
def test_every_sample_within_the_bound(shipped, seed, max_error, rgb, group):
    bundle, coder = shipped
    image = _moving(frames=5, rows=16, cols=24, samples=3 if rgb else 1, seed=seed, bits=8 if rgb else 12, colour=rgb)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=max_error, group=group)
    out, header = decode_image(data, coder=coder)
    assert header.version == bs.GROUPS_VERSION and header.group == group
    assert out.pixels.dtype == image.pixels.dtype and out.pixels.shape == image.pixels.shape
    assert _err(out, image) <= max_error


def test_predicted_frames_are_used_and_lossless_is_exact(shipped):
    bundle, coder = shipped
    for image in (_moving(), _moving(samples=3, bits=8, colour=True)):
        data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=0, group=4)
        out, header = decode_image(data, coder=coder)
        assert np.array_equal(out.pixels, image.pixels)
        assert header.lossless and header.frame_modes[0] == header.frame_modes[4] == bs.FRAME_INTRA
        assert any(m != bs.FRAME_INTRA for m in header.frame_modes)


@pytest.mark.parametrize("rgb", [False, True])
def test_the_encoder_predicts_from_what_the_decoder_rebuilds(shipped, rgb):
    """Closed loop: the encoder's reconstruction of every frame is the decoder's, to the sample (no drift)."""
    bundle, coder = shipped
    image = _moving(frames=5, samples=3 if rgb else 1, bits=8 if rgb else 12, colour=rgb)
    transform = bs.COLOUR_RCT if rgb else bs.COLOUR_NONE
    for quality, max_error in ((12, None), (None, 2)):
        if rgb and max_error:
            transform = bs.COLOUR_GREEN_DIFFERENCE
        group = kc.encode_group(image.pixels, coder=coder, quality=quality, max_error=max_error, tile=2048,
                                transform=transform, clip=image.value_range, modes=[0, 1, 1, 1, 1], keep_decoded=True)
        data = kc._pack_image(image, coder, {"quality": quality, "max_error": max_error, "tile": 2048}, group["norm"],
                              group["streams"], None, bundle.model_id, colour=transform, frame_kinds=group["kinds"],
                              group=5, frame_modes=group["modes"])
        out, _ = decode_image(data, coder=coder)
        assert np.array_equal(out.pixels, group["decoded"].astype(image.pixels.dtype))


def test_lossy_prediction_saves_bits_at_a_comparable_psnr(codec):
    from edge_runtime.runtime import psnr

    bundle, coder = codec
    image = _moving(frames=8)
    intra = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, inter=False)
    inter = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12)
    a, b = decode_image(intra, coder=coder)[0], decode_image(inter, coder=coder)[0]
    assert bs.parse(inter)[0].frame_modes.count(bs.FRAME_INTRA) < image.frames
    assert len(inter) < len(intra)
    assert psnr(image.pixels, b.pixels) > psnr(image.pixels, a.pixels) - 1.5


# --- versions ---------------------------------------------------------------------------------------

def test_single_frames_and_inter_false_stay_version_1(codec):
    bundle, coder = codec
    image = _moving(frames=3)
    single = Image(pixels=image.pixels[:1], bits_stored=12, signed=False, modality="US")
    for data in (encode_image(single, coder=coder, model_id=bundle.model_id, quality=12),
                 encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, inter=False)):
        assert struct.unpack_from("<H", data, 4)[0] == 1
        header = bs.parse(data)[0]
        assert header.version == 1 and header.group == 0 and not header.series


def test_series_flag_forces_version_2_and_carries_its_metadata(codec):
    bundle, coder = codec
    image = _moving(frames=1)
    meta = b"slice headers, packed by edge_runtime.series" * 3
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, metadata=meta, series=True)
    header, _, got = bs.parse(data)
    assert header.version == 2 and header.series and header.group == 1 and got == meta
    assert np.array_equal(decode_image(data, coder=coder)[0].pixels,
                          decode_image(encode_image(image, coder=coder, model_id=bundle.model_id, quality=12),
                                       coder=coder)[0].pixels)
    assert bs.read_header(data).series and not bs.read_header(encode_image(
        _moving(frames=2), coder=coder, model_id=bundle.model_id, quality=12)).series


def test_a_series_without_inter_frame_coding_is_all_intra(codec):
    bundle, coder = codec
    image = _moving(frames=3)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, series=True, inter=False)
    header = bs.parse(data)[0]
    assert header.series and header.group == 1 and header.frame_modes == [bs.FRAME_INTRA] * 3
    v1 = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, inter=False)
    assert np.array_equal(decode_image(data, coder=coder)[0].pixels, decode_image(v1, coder=coder)[0].pixels)


def test_group_must_be_a_positive_whole_number(codec):
    bundle, coder = codec
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="group"):
            encode_image(_moving(frames=2), coder=coder, model_id=bundle.model_id, quality=12, group=bad)


def test_version_1_streams_still_decode_frame_by_frame(codec):
    bundle, coder = codec
    image = _moving(frames=3)
    v1 = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, inter=False)
    whole = decode_image(v1, coder=coder)[0].pixels
    parts = list(decode_frames(v1, coder=coder))
    assert [f for f, _ in parts] == [0, 1, 2]
    assert np.array_equal(np.concatenate([p for _, p in parts]), whole)


# --- random access and fallback ---------------------------------------------------------------------

def test_groups_decode_independently(codec):
    """A group decodes from its own tiles: replacing another group's tiles changes nothing in it."""
    bundle, coder = codec
    image, other = _moving(frames=6), _moving(frames=6, seed=9)
    a = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, group=3)
    b = encode_image(other, coder=coder, model_id=bundle.model_id, quality=12, group=3)
    ha, ta, _ = bs.parse(a)
    hb, tb, _ = bs.parse(b)
    groups = list(decode_frames(a, coder=coder))
    assert [(f, p.shape) for f, p in groups] == [(0, (3, 32, 48, 1)), (3, (3, 32, 48, 1))]
    # group 0 of b spliced in front of group 1 of a (header fields of group 0 from b too)
    n0 = 3  # planes of group 0: 3 grey frames
    mixed = bs.Header(**{**ha.__dict__, "norm": hb.norm[:n0] + ha.norm[n0:],
                         "frame_modes": hb.frame_modes[:3] + ha.frame_modes[3:]})
    spliced = bs.pack(mixed, tb[:n0] + ta[n0:])
    got = dict(decode_frames(spliced, coder=coder))
    assert np.array_equal(got[3], groups[1][1])
    assert np.array_equal(got[0], next(decode_frames(b, coder=coder))[1])


def test_unrelated_frames_cost_no_more_than_frame_by_frame(shipped):
    bundle, coder = shipped
    image = _unrelated()
    for options in ({"quality": 14}, {"quality": None, "max_error": 0}, {"quality": None, "max_error": 2}):
        by_frame = encode_image(image, coder=coder, model_id=bundle.model_id, inter=False, **options)
        grouped = encode_image(image, coder=coder, model_id=bundle.model_id, **options)
        header = bs.parse(grouped)[0]
        assert header.frame_modes == [bs.FRAME_INTRA] * image.frames
        assert len(grouped) <= len(by_frame) + 4 + image.frames  # the group length and the frame modes


def test_a_missed_estimate_falls_back_to_intra(shipped):
    """On pydicom-data's RGB cine examples_ybr_color.dcm with max error 2 (green difference: G's quantization
    noise makes prediction poor), the rate estimate once chose prediction for frame 11 at 2.8x the bits of
    coding it on its own; the check against the last intra frame's cost codes it on its own instead."""
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    px = read_image(get_testdata_file("examples_ybr_color.dcm")).pixels[:12]
    image = Image(pixels=np.ascontiguousarray(px), bits_stored=8, signed=False, photometric="RGB", modality="US")
    bundle, coder = shipped
    options = {"quality": None, "max_error": 2}
    by_frame = encode_image(image, coder=coder, model_id=bundle.model_id, inter=False, **options)
    grouped = encode_image(image, coder=coder, model_id=bundle.model_id, **options)
    assert len(grouped) <= len(by_frame) + 4 + image.frames


# --- workers and kernels ----------------------------------------------------------------------------

def test_the_same_bytes_and_pixels_through_a_worker_pool(shipped):
    bundle, coder = shipped
    cases = ((_moving(frames=10), {"quality": 12}), (_moving(frames=9, samples=3, bits=8, colour=True),
                                                      {"quality": None, "max_error": 1}))
    with PlanePool(bundle.path, jobs=2) as pool:
        for image, options in cases:
            alone = encode_image(image, coder=coder, model_id=bundle.model_id, group=4, **options)
            pooled = encode_image(image, coder=coder, model_id=bundle.model_id, group=4, plane_map=pool.map, **options)
            assert pooled == alone
            assert np.array_equal(decode_image(alone, coder=coder, plane_map=pool.map)[0].pixels,
                                  decode_image(alone, coder=coder)[0].pixels)


def test_xnnpack_and_reference_kernels_decode_the_same_pixels(shipped):
    bundle, coder = shipped
    reference = load_codec(bundle, kernels="reference")[1]
    for image in (_moving(frames=5), _moving(frames=5, samples=3, bits=8, colour=True)):
        data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=14, group=5)
        assert any(bs.parse(data)[0].frame_modes)
        assert np.array_equal(decode_image(data, coder=coder)[0].pixels,
                              decode_image(data, coder=reference)[0].pixels)


# --- the version 2 parser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v2_stream():
    bundle, coder = load_codec(None)
    return encode_image(_moving(frames=4, rows=12, cols=16), coder=coder, model_id=bundle.model_id, quality=12,
                        group=2, metadata=b"x" * 10)


def _group_offset(data: bytes) -> int:
    """Offset of the group length: after the fixed header, the photometric string and the coding parameters."""
    return bs._PRELUDE.size + data[bs._PRELUDE.size - 1] + bs._CODING.size


@pytest.mark.parametrize("patch, message", [
    (lambda b, o: struct.pack_into("<I", b, o, 0), "group length must be 1 to 4"),
    (lambda b, o: struct.pack_into("<I", b, o, 5), "group length must be 1 to 4"),
    (lambda b, o: struct.pack_into("<I", b, o, 3), "frame 3 starts a group of 3 frames but is predicted"),
    (lambda b, o: b.__setitem__(o + 4 + 2, 1), "frame 2 starts a group of 2 frames but is predicted"),
    (lambda b, o: b.__setitem__(o + 4 + 1, 9), "frame 1 has mode 9"),
    (lambda b, o: struct.pack_into("<H", b, 6, struct.unpack_from("<H", b, 6)[0] | 1 << 6), "unknown flag bits"),
])
def test_inconsistent_group_fields_are_refused(v2_stream, patch, message):
    body = bytearray(v2_stream[:-4])
    assert bs.parse(v2_stream)[0].frame_modes == [0, 1, 0, 1]  # the fixture's modes, which the patches assume
    patch(body, _group_offset(v2_stream))
    with pytest.raises(bs.InvalidBitstreamError, match=message):
        bs.parse(_with_crc(bytes(body)))


def test_the_series_flag_needs_version_2(codec):
    bundle, coder = codec
    v1 = bytearray(encode_image(_moving(frames=1), coder=coder, model_id=bundle.model_id, quality=12)[:-4])
    struct.pack_into("<H", v1, 6, struct.unpack_from("<H", v1, 6)[0] | bs.FLAG_SERIES)
    with pytest.raises(bs.InvalidBitstreamError, match="unknown flag bits 0x0010 set \\(version 1"):
        bs.parse(_with_crc(bytes(v1)))


def test_packing_refuses_a_predicted_group_start():
    header = bs.Header(model_id=bytes(32), rows=4, cols=4, frames=2, samples=1, bits_stored=8, signed=False,
                       dtype="uint8", photometric="MONOCHROME2", quality=12, max_error=-1, lossless=False, levels=1,
                       tile_rows=2048, tile_cols=2048, norm=[(0, 9), (-3, 3)], group=1, frame_modes=[0, 1])
    with pytest.raises(ValueError, match="frame 1 starts a group of 1 frames"):
        bs.pack(header, [b"", b""])
    header.group, header.frame_modes = 2, [0, 1]
    assert bs.parse(bs.pack(header, [b"", b""]))[0].norm == [(0, 9), (-3, 3)]
    header.norm = [(0, 9), (-3, 300)]  # a difference outside the dtype's range is fine
    header.frame_modes = [0, 0]  # but not in an intra frame
    with pytest.raises(ValueError, match="normalization of plane 1"):
        bs.pack(header, [b"", b""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_version_2_streams_raise_only_invalid_bitstream(v2_stream, data):
    """Any byte changed, cut or inserted (CRC fixed up so the fields are reached): InvalidBitstreamError or a
    clean parse, nothing else."""
    body = bytearray(v2_stream[:-4])
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    at = data.draw(st.integers(0, len(body) - 1))
    if kind == "flip":
        body[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del body[at:at + data.draw(st.integers(1, 8))]
    else:
        body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        header, tiles, _ = bs.parse(_with_crc(bytes(body)))
    except bs.InvalidBitstreamError:
        return
    assert len(tiles) == header.n_tiles and len(header.frame_modes) == header.frames


def test_info_shows_the_group_length_and_predicted_frames(capsys):
    from pathlib import Path

    from edge_runtime import cli, runtime

    golden = Path(__file__).resolve().parents[1] / "golden" / "frames_cine_q14.kcd"
    header = bs.read_header(golden.read_bytes())
    d = runtime.info(golden)
    assert d["version"] == 2 and d["group"] == header.group == 4
    assert d["predicted_frames"] == sum(1 for m in header.frame_modes if m) > 0
    assert cli.main(["info", str(golden)]) in (0, None)
    assert f"groups of 4 (random access), {d['predicted_frames']} of 4 frame(s) predicted" in capsys.readouterr().out
