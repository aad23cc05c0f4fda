"""The default wavelet codec end to end on the workstation: exact transform path, real bits, errors."""
import numpy as np
import pytest

from data.image import Image
from edge_runtime import context as ctx
from edge_runtime.bitstream import InvalidBitstreamError
from edge_runtime.codec import PlaneCoder, decode_image, encode_image, levels_for, padded_shape
from edge_runtime.entropy import laplace_tables
from edge_runtime.subband_coder import CodingModel
from keras_codec.config import CodecConfig, WaveletConfig
from keras_codec.training.context_fit import default_ll_weights
from keras_codec.models.wavelet import WaveletTransforms, build_functional_codec, build_postfilter

CFG = WaveletConfig(levels=3, num_scales=32)
PARAMS = {"levels": 3, "deadzone": CFG.deadzone, "recon_bias": 0.1, "rdo_lambda": 0.12}


def _coder():
    w = ctx.ContextWeights(np.zeros((8, 3, 3, ctx.NUM_FEATURES), np.int64),
                           default_ll_weights(CFG.num_scales, CFG.scale_min, CFG.scale_max))
    w.detail[..., 0] = 10 << ctx.SHIFT
    w.detail[..., 5] = 1 << (ctx.SHIFT - 4)
    tables = laplace_tables(CFG.num_scales, CFG.scale_min, CFG.scale_max, CFG.deadzone)
    return PlaneCoder(PARAMS, CodingModel(w, tables), WaveletTransforms(CFG))


def _smooth(rng, shape, bits, signed=False):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    v = np.sin(x / 7.0) * np.cos(y / 11.0) + 0.05 * rng.normal(size=shape)
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    lo = -(1 << (bits - 1)) if signed else 0
    return np.clip(np.round((v + 1.2) / 2.4 * (hi - lo) + lo), lo, hi)


@pytest.mark.parametrize("shape", [(64, 64), (40, 72)])
def test_functional_codec_is_exact_without_quantization(shape):
    rng = np.random.default_rng(0)
    x = rng.random((1, *shape, 1)).astype(np.float32)
    levels = levels_for(*shape, 5)
    pr, pc = padded_shape(*shape, levels)
    xp = np.pad(x, ((0, 0), (0, pr - shape[0]), (0, pc - shape[1]), (0, 0)), mode="symmetric")
    model = build_functional_codec(CFG, pr, pc, levels, postfilter=build_postfilter(CFG))
    assert np.max(np.abs(model(xp).numpy() - xp)) < 1e-5


def test_functional_codec_exact_on_every_test_image():
    """At initialization with quantization off, the default model reconstructs every test plane."""
    from data.corpus import corpus, load

    cfg = WaveletConfig()
    for item in corpus("test"):
        img = load(item)
        p = img.pixels[0, :, :, 0].astype(np.float64)
        x = ((p - p.min()) / max(p.max() - p.min(), 1)).astype(np.float32)
        levels = levels_for(*x.shape, cfg.levels)
        pr, pc = padded_shape(*x.shape, levels)
        xp = np.pad(x, ((0, pr - x.shape[0]), (0, pc - x.shape[1])), mode="symmetric")[None, :, :, None]
        model = build_functional_codec(cfg, pr, pc, levels, postfilter=build_postfilter(cfg))
        err = np.max(np.abs(model(xp).numpy() - xp))
        assert err < 1e-5, (item.name, err)


@pytest.mark.parametrize("bits,signed,dtype,samples,frames", [
    (12, False, np.uint16, 1, 1), (16, True, np.int16, 1, 2), (8, False, np.uint8, 3, 1)])
def test_image_round_trip(bits, signed, dtype, samples, frames):
    rng = np.random.default_rng(1)
    px = np.stack([np.stack([_smooth(rng, (48, 56), bits, signed) for _ in range(samples)], -1)
                   for _ in range(frames)]).astype(dtype)
    img = Image(pixels=px, bits_stored=bits, signed=signed, photometric="RGB" if samples == 3 else "MONOCHROME2")
    coder = _coder()
    mid = b"\x01" * 32
    prev_err = None
    for q in (8, 16):
        data = encode_image(img, coder=coder, model_id=mid, quality=q, tile=32)
        dec, header = decode_image(data, coder=coder, model_ids=[mid])
        assert dec.pixels.shape == px.shape and dec.pixels.dtype == px.dtype
        assert header.quality == q
        err = np.abs(dec.pixels.astype(np.int64) - px).mean()
        assert prev_err is None or err < prev_err
        prev_err = err
    rng_range = float(px.max()) - float(px.min())
    assert prev_err < 0.01 * rng_range


def test_wrong_model_and_corruption_are_refused():
    rng = np.random.default_rng(2)
    px = _smooth(rng, (32, 32), 12)[None, :, :, None].astype(np.uint16)
    img = Image(pixels=px, bits_stored=12, signed=False)
    coder = _coder()
    data = encode_image(img, coder=coder, model_id=b"\x02" * 32, quality=6)
    with pytest.raises(InvalidBitstreamError, match="model"):
        decode_image(data, coder=coder, model_ids=[b"\x03" * 32])
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(InvalidBitstreamError):
        decode_image(bytes(bad), coder=coder, model_ids=[b"\x02" * 32])
    with pytest.raises(InvalidBitstreamError):
        decode_image(data[:-7], coder=coder, model_ids=[b"\x02" * 32])


def test_config_json_round_trip():
    for name in ("default", "paper"):
        from keras_codec.config import named

        c = named(name)
        assert CodecConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError):
        CodecConfig.from_dict({"bogus": 1})
