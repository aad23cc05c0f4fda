"""Colour images: a reversible integer colour transform before the wavelet, grey frames as one plane.

An RGB image (YBR sources arrive as RGB from data.readers) is not coded as three independent
planes: R, G and B of a natural or ultrasound image are nearly the same picture three times.
codec.encode_image codes, frame by frame, the planes this module makes, and the header records
which transform and which frames are grey (edge_runtime.bitstream, flag bit 3).

Lossy and lossless: the RCT (transform 1, JPEG 2000's reversible colour transform)

    Y = floor((R + 2G + B) / 4),  Cb = B - G,  Cr = R - G
    G = Y - floor((Cb + Cr) / 4),  R = Cr + G,  B = Cb + G

is exact on integers, so a lossless stream (each plane coded losslessly) restores RGB bit for bit.
In a lossy stream every plane is quantized with the quality level's step relative to its
normalization range (codec.quantizer_step): Y over its own [min, max]; a chroma plane over
[lo, lo + S] with S = max(its own range, CHROMA_STEP_RATIO x Y's range), so that its step in stored
units is CHROMA_STEP_RATIO times luma's, whatever its own range (relative to its own range, a
nearly empty chroma plane, range 10, would get a very fine step and waste bits). The header keeps
(lo, lo + S) as the plane's normalization. Why 2: errors e_Y, e_Cb, e_Cr of the planes come out
in RGB as e_G = e_Y - (e_Cb + e_Cr)/4, e_R = e_G + e_Cr, e_B = e_G + e_Cb, so for independent
errors the squared RGB error is 3 e_Y² + 11/16 (e_Cb² + e_Cr²): a chroma unit of squared error
costs 11/48 of a luma unit, and at high rate the MSE-optimal steps are in the ratio
sqrt(48/11) = 2.09. Measured on US1_UNCR.dcm (train split): ratios 2 and 2.5 within 0.2 % of each
other in BD-rate, 1.5 +1.2 %, YCoCg-R +2 %.

Error-bounded, max error D >= 1: the green difference (transform 2). Errors of Y, Cb and Cr do not
map 1:1 to RGB (e_R above adds up three of them), so bounding each of them by D would not bound R,
G and B by D, and bounding them by D/3 would waste bits. Instead G is coded within D, giving the
decoded G'; then B - G' and R - G' are coded within D against that *decoded* G', and the decoder
sets R' = G' + (R - G')', B' = G' + (B - G')', clipped to the stored range. Then every sample is
within D: |G - G'| <= D; |R - R'| = |(R - G') - (R - G')'| <= D, the same for B; and clipping to
the stored range, which holds R, G and B, only moves a sample closer. The difference planes
depend on G', so the encoder decodes G before coding them (codec.encode_image, a group of frames
at a time, also through a worker pool); the decoder decodes the three planes independently and
adds G' at the end. D = 0 uses the RCT: lossless both ways, and about 1 % smaller than G, R - G,
B - G on US1_UNCR.dcm (Y averages the noise of three samples; the two chroma planes are the same).

Grey frames: a frame with R = G = B at every pixel is coded as one plane, its G (Y = G and
Cb = Cr = 0 there), and the header marks it grey; the decoder copies the plane to R, G and B.
A frame with a little colour (an ultrasound frame with a colour Doppler box or coloured
annotations) keeps its three planes; its nearly empty chroma planes cost little (an all-zero
480x640 plane is about 90 bytes).

PALETTE COLOR: outputs must be valid objects of their IOD, and the US and Secondary Capture
IODs allow RGB at 8 bits only. Both, by case (palette_indices):
- lossless: PALETTE COLOR is kept. The indices are coded losslessly and the tables ride in the
  stream's DICOM header, so the decoded file is the same object with the same indices; on
  examples_palette.dcm that is also 25 % smaller than its 8-bit RGB coded losslessly.
- lossy or with a max error, when the table holds 8-bit colours (ultrasound palettes store them
  in 16-bit tables as c x 256 or c x 257; data.readers reads those as 8-bit RGB, the colours the
  table displays, exactly): 8-bit RGB, coded like any RGB image through the transform above and
  written as 8-bit RGB. The indices are never coded lossily: they are labels (neighbouring
  indices need not be neighbouring colours), so an error of one index can be any colour. With a
  max error, the RGB of a palette ultrasound is mostly flat (graphics): codec.encode_image also
  codes it losslessly and keeps that stream when it is the shorter (examples_palette.dcm: 12.8 KB
  against 14.6 KB at D = 1); the output is then exact, Lossy Image Compression 00.
- a table of true 16-bit colours cannot become 8-bit RGB without changing them, nor 16-bit RGB
  without leaving the IOD: PALETTE COLOR is kept and the indices coded losslessly whatever was
  asked.
"""
from __future__ import annotations

import numpy as np

from edge_runtime import bitstream as bs

__all__ = ["CHROMA_STEP_RATIO", "GREEN_DIFFERENCE", "RCT", "applies", "chroma_norm", "expand_palette",
           "frame_from_planes", "frame_kind", "palette_indices", "rct_forward", "rct_inverse", "transform_for"]

RCT = bs.COLOUR_RCT
GREEN_DIFFERENCE = bs.COLOUR_GREEN_DIFFERENCE
CHROMA_STEP_RATIO = 2
"""A lossy chroma plane's quantizer step in stored units, in units of the luma plane's (see the module docstring)."""


def applies(image) -> bool:
    """Whether `image` is coded through a colour transform: unsigned RGB."""
    return image.samples == 3 and image.photometric == "RGB" and not image.signed


def transform_for(max_error: int | None) -> int:
    """The colour transform of a stream: RCT when lossy (None) or lossless (0), else the green difference."""
    return RCT if max_error is None or int(max_error) == 0 else GREEN_DIFFERENCE


def frame_kind(frame: np.ndarray) -> int:
    """bs.FRAME_GREY when R = G = B at every pixel of the (rows, cols, 3) frame, else bs.FRAME_COLOUR."""
    g = frame[:, :, 1]
    grey = np.array_equal(frame[:, :, 0], g) and np.array_equal(frame[:, :, 2], g)
    return bs.FRAME_GREY if grey else bs.FRAME_COLOUR


def rct_forward(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, Cb, Cr) of a (rows, cols, 3) RGB frame, as int32 planes."""
    r, g, b = (frame[:, :, i].astype(np.int32) for i in range(3))
    return (r + 2 * g + b) >> 2, b - g, r - g


def rct_inverse(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """The (rows, cols, 3) int64 RGB frame of planes Y, Cb, Cr (exact inverse of rct_forward)."""
    y, cb, cr = (np.asarray(p, np.int64) for p in (y, cb, cr))
    g = y - ((cb + cr) >> 2)
    return np.stack([cr + g, g, cb + g], axis=-1)


def chroma_norm(plane: np.ndarray, luma_norm: tuple) -> tuple[int, int]:
    """(lo, lo + S) of a lossy chroma plane: S = max(its range, CHROMA_STEP_RATIO x the luma plane's range)."""
    lo, hi = int(plane.min()), int(plane.max())
    return lo, lo + max(hi - lo, CHROMA_STEP_RATIO * max(int(luma_norm[1]) - int(luma_norm[0]), 1))


def frame_from_planes(planes: list, transform: int, value_range: tuple) -> np.ndarray:
    """The (rows, cols, 3) int64 RGB frame of its decoded planes (one for a grey frame), clipped to `value_range`."""
    if len(planes) == 1:
        rgb = np.repeat(np.asarray(planes[0], np.int64)[:, :, None], 3, axis=2)
    elif transform == RCT:
        rgb = rct_inverse(*planes)
    elif transform == GREEN_DIFFERENCE:
        g, db, dr = (np.asarray(p, np.int64) for p in planes)
        rgb = np.stack([g + dr, g, g + db], axis=-1)
    else:
        raise ValueError(f"unknown colour transform {transform}")
    return np.clip(rgb, value_range[0], value_range[1])


def palette_indices(image, lossless: bool):
    """The Image of PALETTE COLOR indices to code in place of `image`, or None (code `image`).

    Only for an image read from a PALETTE COLOR DICOM data set: its indices when coding `lossless`ly,
    or when its tables hold 16-bit colours (data.readers gave 16-bit RGB, which the US and SC IODs do
    not allow); tables of 8-bit colours came as 8-bit RGB, coded as RGB when lossy or bounded.
    """
    ds = image.dataset
    if ds is None or str(ds.get("PhotometricInterpretation", "")).strip() != bs.PALETTE:
        return None
    if image.photometric != "RGB" or (image.pixels.dtype == np.uint8 and not lossless):
        return None
    from data.readers import image_from_dataset

    return image_from_dataset(ds, source=image.source, palette="indices")


def expand_palette(image, dataset):
    """A decoded PALETTE COLOR image (indices) as 16-bit RGB through the tables of `dataset`, for PNG and TIFF."""
    import warnings

    from pydicom.pixels import apply_color_lut

    from data.image import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = np.asarray(apply_color_lut(image.pixels[..., 0], dataset)).reshape(image.pixels.shape[:3] + (3,))
    return Image(pixels=rgb.astype(np.uint16), bits_stored=16, signed=False, photometric="RGB",
                 modality=image.modality, source=image.source)
