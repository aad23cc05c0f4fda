"""TensorFlow-free encoder/decoder, bitstream format and entropy coding."""
__version__ = "0.1.0"
