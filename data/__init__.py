"""Medical image I/O, the sample corpus and (in data.pipeline) the training pipeline.

Image I/O imports no TensorFlow, so the edge runtime can use it. The sample
corpus lives in ``data.corpus`` (imported on demand, as it reads files).
"""
from data.image import Image, InvalidImageError
from data.readers import MAX_IMAGE_BYTES, list_images, read_image
from data.writers import write_dicom, write_image, write_png, write_tiff

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
