"""A multi-frame DICOM file's frames, decoded as the encoder's groups need them.

A 120-frame RGB cine decodes to 110 MB; its file holds a few MB of JPEG. The encoder codes a group of
frames at a time (codec.encode_image), so :func:`read_for_encode` keeps the file's data set (its
compressed pixel data) and gives the frames through a :class:`FrameStack`, each decoded by the reader
(data.readers.image_from_dataset with ``frame=f``: the same pixels as decoding the file whole) when a
group asks for it. Single-frame files, PALETTE COLOR images (their indices and tables are handled
whole) and PNG/TIFF files are read whole as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.image import Image, InvalidImageError
from data.readers import MAX_IMAGE_BYTES, image_from_dataset, read_image

__all__ = ["FrameStack", "LazyFrames", "read_for_encode"]


class LazyFrames:
    """Frames (frames, rows, cols, samples) produced one at a time by :meth:`frame`, as an array-like.

    Indexing the first axis (an int or a slice, optionally followed by more indices) produces those
    frames and returns a numpy array; any other index (``[..., 0]``) and ``np.asarray`` produce them all. Subclasses set ``shape`` and
    ``dtype`` (through :meth:`_set_shape`) and define :meth:`frame`.
    """

    ndim = 4

    def _set_shape(self, frames: int, template: np.ndarray) -> None:
        self.dtype = template.dtype
        self.shape = (int(frames),) + template.shape[1:]
        self.size = int(np.prod(self.shape))
        self.nbytes = self.size * self.dtype.itemsize

    def frame(self, f: int) -> np.ndarray:
        """Frame f's stored values (rows, cols, samples)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if not isinstance(first, (slice, int, np.integer)):  # an Ellipsis, an index array...: from every frame
            return self[:][key]
        if isinstance(first, slice):
            picked = range(*first.indices(len(self)))
            out = np.empty((len(picked),) + self.shape[1:], self.dtype)
            for i, f in enumerate(picked):
                out[i] = self.frame(f)
            return out[(slice(None),) + rest] if rest else out
        f = int(first)
        if not -len(self) <= f < len(self):
            raise IndexError(f"frame {f} of {len(self)}")
        out = self.frame(f % len(self))
        return out[rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class FrameStack(LazyFrames):
    """The frames of a DICOM data set, each decoded when asked for (the last one kept: the planes of a
    frame are asked for in turn)."""

    def __init__(self, dataset, source: Path, frames: int, first: Image):
        self.dataset, self.source = dataset, source
        self._set_shape(frames, first.pixels)
        self._first = first.pixels[0]
        self._last = (None, None)

    def frame(self, f: int) -> np.ndarray:
        if f == 0:
            return self._first
        if self._last[0] == f:
            return self._last[1]
        pixels = image_from_dataset(self.dataset, source=self.source, frame=f).pixels
        if pixels.shape[1:] != self.shape[1:] or pixels.dtype != self.dtype:
            raise InvalidImageError(self.source, f"frame {f} decodes to {pixels.shape[1:]} {pixels.dtype}, "
                                                 f"frame 0 to {self.shape[1:]} {self.dtype}")
        self._last = (f, pixels[0])
        return pixels[0]


def read_for_encode(path, *, max_bytes: int = MAX_IMAGE_BYTES) -> Image:
    """The image of `path` for encoding: a multi-frame DICOM as a FrameStack (module docstring), else read whole.

    The size limit is checked from the header for the whole image, as a whole read would (read_image).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in (b"II*\x00", b"MM\x00*"):  # a TIFF's pages are read whole
        return read_image(path, max_bytes=max_bytes)
    first = read_image(path, frame=0, max_bytes=max_bytes)
    ds = first.dataset
    frames = int(ds.get("NumberOfFrames", 1) or 1) if ds is not None else 1
    if frames <= 1:
        return first
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        return read_image(path, max_bytes=max_bytes)
    if frames * first.pixels.nbytes > max_bytes:
        read_image(path, max_bytes=max_bytes)  # refused from the header, with the reader's own message
    return Image(pixels=FrameStack(ds, path, frames, first), bits_stored=first.bits_stored, signed=first.signed,
                 photometric=first.photometric, rescale_slope=first.rescale_slope,
                 rescale_intercept=first.rescale_intercept, modality=first.modality, source=first.source,
                 dataset=ds)
