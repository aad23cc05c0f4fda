"""The models, one module each; every one is described by a `keras_codec.config.CodecConfig`.

- :mod:`.default`: the shipped codec. :class:`DefaultCodec` owns its transforms, entropy model and coder,
  built from a bundle; its parts are the exact lifting DWT with the learned post-filter
  (:mod:`.wavelet`) and the learned lifting refinement (:mod:`.refine`).
- :mod:`.paper`: the seed paper's CNN + DCT + dense autoencoder (:class:`PaperCodec`, :func:`build_paper`),
  reproduced to be measured against.
"""
from keras_codec.models.default import DefaultCodec, bundle_transforms
from keras_codec.models.paper import PaperCodec, build_paper
from keras_codec.models.refine import LiftingRefinement, build_refinement, load_refinement
from keras_codec.models.wavelet import WaveletTransforms, build_postfilter, load_postfilter

__all__ = [
    # default: the shipped codec and its parts
    "DefaultCodec", "bundle_transforms", "WaveletTransforms", "build_postfilter", "load_postfilter",
    "LiftingRefinement", "build_refinement", "load_refinement",
    # paper: the seed paper's autoencoder
    "PaperCodec", "build_paper",
]
