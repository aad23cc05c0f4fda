"""The `default` model: the shipped codec, owned by one class.

Analysis and synthesis are the exact lifting DWT layers (:mod:`keras_codec.layers.dwt`) per transform the
bundle lists (`cdf97` and `haar`), with the learned lifting refinement (:mod:`.refine`) when the bundle has
one and the post-filter (:mod:`.wavelet`) behind the transform it was trained on. The entropy model is the
bundle's integer context model (`coding`: context weights and CDF tables, fitted by
:mod:`keras_codec.training.fit_default`). The coder is the edge's :class:`edge_runtime.codec.PlaneCoder`,
driven here by the Keras transforms (the workstation side), so what this class writes the TFLite edge decodes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edge_runtime.codec import PlaneCoder
from keras_codec.config import CodecConfig
from keras_codec.models.refine import load_refinement
from keras_codec.models.wavelet import WaveletTransforms, load_postfilter

__all__ = ["DefaultCodec", "bundle_transforms"]

BUNDLE_POSTFILTER = "bundle"
"""`DefaultCodec.from_bundle`'s default post-filter: the bundle's own."""


def bundle_transforms(bundle, name: str, postfilter=None) -> WaveletTransforms:
    """The Keras transform pair of a loaded bundle's transform `name`, with the bundle's learned lifting
    refinement of it (if any) and the given post-filter (None: none)."""
    cfg = dataclasses.replace(CodecConfig.from_dict(bundle.manifest["config"]).wavelet, wavelet=name)
    return WaveletTransforms(cfg, postfilter, refine=load_refinement(bundle, name))


class DefaultCodec:
    """Transforms, entropy model and coder of the `default` model.

    `params` are the coder's parameters (:meth:`params_for`, stored as the manifest's "codec"), `coding`
    the entropy model (an :class:`edge_runtime.subband_coder.CodingModel`), `transforms` a dict
    {transform name: :class:`WaveletTransforms`}. :meth:`from_bundle` builds it from a loaded bundle.
    """

    def __init__(self, params: dict, coding, transforms: dict, refine=None):
        self.params = params
        self.coding = coding
        self.transforms = transforms
        self.coder = PlaneCoder(params, coding, transforms, refine=refine)

    @staticmethod
    def params_for(config: CodecConfig, rdo_lambda: float = 0.12) -> dict:
        """The coder parameters of a model configuration (the manifest's "codec" entry)."""
        w = config.wavelet
        return {"transforms": [w.wavelet, "haar"] if w.wavelet != "haar" else ["haar"], "transform_gate": 0.5,
                "levels": w.levels, "deadzone": w.deadzone, "recon_bias": w.recon_bias, "rdo_lambda": rdo_lambda,
                "num_scales": w.num_scales, "scale_min": w.scale_min, "scale_max": w.scale_max,
                "wavelet": w.wavelet, "mode": w.mode}

    @classmethod
    def from_bundle(cls, bundle, postfilter=BUNDLE_POSTFILTER) -> "DefaultCodec":
        """The model of a loaded bundle (:func:`edge_runtime.bundle.load_bundle`), on Keras transforms.

        `postfilter`: the bundle's own post-filter (default), None for none, or a Keras post-filter to put
        behind the bundle's transform (the codec's "wavelet") instead, e.g. one being trained."""
        params = bundle.manifest["codec"]
        wavelet = CodecConfig.from_dict(bundle.manifest["config"]).wavelet.wavelet
        names = params.get("transforms", [wavelet])
        if isinstance(postfilter, str) and postfilter == BUNDLE_POSTFILTER:
            filters = {n: load_postfilter(bundle, n) for n in names}
        else:
            filters = {params.get("wavelet", wavelet): postfilter}
        transforms = {n: bundle_transforms(bundle, n, filters.get(n)) for n in names}
        return cls(params, bundle.coding, transforms, refine=bundle.refine)

    def compress(self, plane: np.ndarray, quality: int) -> bytes:
        """The tile stream of one normalized plane at a quality level."""
        return self.coder.encode(plane, quality)

    def decompress(self, data: bytes, shape: tuple, quality: int) -> np.ndarray:
        """The plane a tile stream from :meth:`compress` decodes to."""
        return self.coder.decode(data, int(shape[0]), int(shape[1]), quality)
