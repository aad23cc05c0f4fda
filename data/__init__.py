"""Medical image I/O, the sample corpus and (in data.pipeline) the training pipeline.

Image I/O imports no TensorFlow, so the edge runtime can use it. The sample
corpus lives in ``data.corpus`` (imported on demand, as it reads files). The
readers and writers below are imported when first named, so a program that
needs only ``data.image`` (an edge decode) does not load them.
"""
import importlib

from data.image import Image, InvalidImageError

_LAZY = {
    "MAX_IMAGE_BYTES": "data.readers",
    "list_images": "data.readers",
    "read_image": "data.readers",
    "write_dicom": "data.writers",
    "write_image": "data.writers",
    "write_png": "data.writers",
    "write_tiff": "data.writers",
}

__all__ = [
    "Image",
    "InvalidImageError",
    "MAX_IMAGE_BYTES",
    "list_images",
    "read_image",
    "write_dicom",
    "write_image",
    "write_png",
    "write_tiff",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
