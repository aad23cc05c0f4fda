"""Short fuzz of the edge decode path: 300 mutated .kcd streams, many with their CRC recomputed.

The long run is benchmarks/fuzz_bitstream.py (100,000 streams in worker processes); this is the
same mutator and the same verdict, in-process and TensorFlow-free. Every stream must either
decode to an image with its header's geometry or raise InvalidBitstreamError (other ValueError
subclasses are the documented family and allowed); anything else, or more than 2 s of CPU for
one stream, fails the test and names the stream index to replay.
"""
from __future__ import annotations

import importlib.util
import signal
import struct
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N_STREAMS = 600
CPU_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_bitstream", ROOT / "benchmarks" / "fuzz_bitstream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def seeds(fuzz, codec):
    return fuzz.make_seeds(codec)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory, bundle_path):
    """The test bundle plus the shipped residual model: its seeds include error-bounded streams."""
    import shutil

    from edge_runtime.bundle import default_bundle_path
    from edge_runtime.residual import RESIDUAL_FILE
    from edge_runtime.runtime import load_codec

    folder = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(bundle_path, folder)
    shutil.copy(default_bundle_path() / RESIDUAL_FILE, folder / RESIDUAL_FILE)
    return load_codec(folder)


def test_seeds_decode_with_their_geometry(fuzz, codec, seeds):
    for name, data in seeds:
        status, detail = fuzz.check_stream(data, codec)
        assert status == "ok", f"seed {name}: {detail}"


def test_error_bounded_streams_fuzzed(fuzz, bounded, tmp_path):
    """Mutations of lossless / max-error streams (their own tile layout): decoded or InvalidBitstreamError."""
    from edge_runtime import bitstream as bs
    from edge_runtime import direct

    from edge_runtime.codec import PlaneCoder

    seeds = [s for s in fuzz.make_seeds(bounded) if "max error" in s[0]]
    assert len(seeds) == 5
    versions = {struct.unpack_from("<I", bs.parse(data)[1][0], 5)[0] for name, data in seeds if "version 3" in name}
    assert versions == {direct.HALVES_VERSION}  # tiles without a base of version 3 are fuzzed too
    fields = {struct.unpack_from("<I", bs.parse(data)[1][0], 5)[0] for name, data in seeds if "raster" in name}
    assert fields == {PlaneCoder.RASTER_FIELD}  # and a tile in raster order
    _fuzz(fuzz, bounded, seeds, tmp_path, N_STREAMS // 3)


def test_mutated_streams_decode_or_raise_invalid_bitstream(fuzz, codec, seeds, tmp_path):
    _fuzz(fuzz, codec, seeds, tmp_path, N_STREAMS)


def _fuzz(fuzz, codec, seeds, tmp_path, n_streams):
    def on_alarm(signum, frame):
        raise TimeoutError("one stream ran for more than 20 s of wall time")

    old = signal.signal(signal.SIGALRM, on_alarm)
    failures, past_crc = [], 0
    try:
        for i in range(n_streams):
            data, seed_name, desc = fuzz.mutate(seeds, i, 0)
            signal.alarm(20)
            t0 = time.process_time()
            try:
                status, detail = fuzz.check_stream(data, codec, to_file=(i % 25 == 0), tmpdir=tmp_path)
            except TimeoutError as exc:
                status, detail = "failure", str(exc)
            finally:
                signal.alarm(0)
            cpu = time.process_time() - t0
            if status == "failure" or cpu > CPU_LIMIT_S:
                sig = fuzz.failure_signature(detail) if status == "failure" else f"{cpu:.2f} s of CPU"
                failures.append(f"#{i} ({seed_name}, {desc}): {sig}")
            if not detail.startswith(("CRC mismatch", "not a keras_codec stream", "truncated")):
                past_crc += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    assert past_crc >= n_streams // 3, f"only {past_crc} of {n_streams} streams got past the CRC check"
    assert not failures, (f"{len(failures)} of {n_streams} fuzzed streams neither decoded nor raised "
                          f"InvalidBitstreamError (replay one: benchmarks/fuzz_bitstream.py --index I):\n  "
                          + "\n  ".join(failures[:15]))


def test_tiles_larger_than_the_bundle_writes_are_refused(codec, seeds, tmp_path):
    """Encoders write their bundle's tile size: a header with larger tiles is corrupt, refused before any tile
    decodes (a crafted 4096x4096 tile without a base took 1.7 GB before it failed)."""
    import dataclasses

    from edge_runtime import bitstream as bs
    from edge_runtime import codec as codec_module
    from edge_runtime.runtime import decode_file

    _, coder = codec
    data = dict(seeds)[next(name for name, _ in seeds)]
    header, tiles, meta = bs.parse(data)
    assert max(header.tile_rows, header.tile_cols) == coder.max_tile == 2048
    big = bs.pack(dataclasses.replace(header, tile_rows=4096, tile_cols=4096), tiles, meta)
    assert bs.parse(big)[0].tile_rows == 4096  # a well-formed container
    for decode in (codec_module.decode_image, lambda d, **k: list(codec_module.decode_frames(d, **k))):
        with pytest.raises(bs.InvalidBitstreamError, match="tiles of 4096x4096, larger than the 2048x2048"):
            decode(big, coder=coder, source="big.kcd")
    (tmp_path / "big.kcd").write_bytes(big)
    with pytest.raises(bs.InvalidBitstreamError, match="big.kcd: tiles of 4096x4096"):
        decode_file(tmp_path / "big.kcd", tmp_path / "big.tif", bundle=codec)


def test_encoders_refuse_tiles_larger_than_the_bundle(codec):
    import numpy as np

    from data.image import Image
    from edge_runtime import codec as codec_module

    bundle, coder = codec
    image = Image(pixels=np.zeros((1, 32, 40, 1), np.uint8), bits_stored=8, signed=False)  # a shape the graphs take
    for tile in (4096, 0, 2.5):
        with pytest.raises(ValueError, match="tile must be"):
            codec_module.encode_image(image, coder=coder, model_id=bundle.model_id, quality=10, tile=tile)
    data = codec_module.encode_image(image, coder=coder, model_id=bundle.model_id, quality=10, tile=2048)
    assert codec_module.decode_image(data, coder=coder)[1].tile_rows == 2048
