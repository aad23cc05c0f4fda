"""keras_codec: a learned codec for medical images."""
__version__ = "0.1.0"
