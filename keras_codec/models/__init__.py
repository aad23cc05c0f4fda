"""Model builders: one function per named configuration, each taking a `CodecConfig`."""
from keras_codec.models.paper import PaperCodec, build_paper

__all__ = ["PaperCodec", "build_paper"]
