"""TensorFlow-free encoder/decoder, bitstream format and entropy coding."""
__version__ = "0.1.0"

# Command-line choices, here so that `edge-codec --help` and argument parsing import no numpy.
QUALITY_LEVELS = tuple(range(1, 23))
"""Lossy quality levels (about 12 + 2q dB)."""
DEFAULT_QUALITY = 17
OUTPUT_FORMATS = ("dcm", "png", "tif")
"""What a decode writes: DICOM, PNG or TIFF."""
