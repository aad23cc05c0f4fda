"""Fixed frequency transforms as Keras layers: blockwise DCT and lifting DWT, with exact inverses."""

from keras_codec.layers.dct import DCT2D, IDCT2D
from keras_codec.layers.dwt import DWT2D, IDWT2D

__all__ = ["DCT2D", "IDCT2D", "DWT2D", "IDWT2D"]
