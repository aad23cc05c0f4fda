"""The one image record every part of keras_codec passes around."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


class InvalidImageError(ValueError):
    """A file that cannot be read as an image (or written as one).

    The message always names the file and what is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = str(path) if path is not None else "<memory>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so a worker process can report it
        return type(self), (self.path, self.problem)


@dataclass
class Image:
    """Pixels in their stored integer form plus what is needed to interpret them.

    ``pixels`` has shape (frames, rows, cols, samples) and dtype uint8, uint16,
    int8 or int16 (stored values: MONOCHROME1 is never inverted, rescale is
    never applied). ``dataset`` is the source pydicom Dataset for DICOM input
    (pixel data included), kept so a decode can write a DICOM with the same
    identity.
    """

    pixels: np.ndarray
    bits_stored: int
    signed: bool
    photometric: str = "MONOCHROME2"
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality: str = "OT"
    source: Optional[str] = None
    dataset: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.pixels.ndim != 4:
            raise ValueError(
                f"Image.pixels must be (frames, rows, cols, samples), got shape {self.pixels.shape}")
        if not 1 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be in 1..16, got {self.bits_stored}")

    @property
    def frames(self) -> int:
        return self.pixels.shape[0]

    @property
    def rows(self) -> int:
        return self.pixels.shape[1]

    @property
    def cols(self) -> int:
        return self.pixels.shape[2]

    @property
    def samples(self) -> int:
        return self.pixels.shape[3]

    @property
    def value_range(self) -> tuple[int, int]:
        """The representable stored range (min, max) for bits_stored and signedness."""
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored <= 8 and self.pixels.dtype.itemsize == 1 else 16
