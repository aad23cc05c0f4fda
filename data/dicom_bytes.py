"""A decoded image written as DICOM straight from the header bytes a stream carries, without pydicom.

A .kcd stream keeps its source's DICOM header as an Explicit VR Little Endian data set
(edge_runtime.runtime.dicom_metadata). Decoding it to DICOM through :func:`data.writers.write_dicom`
means importing pydicom (about a third of a whole-process decode of one slice), parsing that header
and writing it back. :func:`file_bytes` builds the same file from the header's bytes: it copies the
elements it does not change byte for byte, and makes the changes write_dicom makes (new SOP Instance
UID and file meta, the pixel module, the pixel range, the lossy history, the derivation of a lossy
output) in the same encoding. The tests check that both give the same bytes on every sample file.

Whatever it does not handle exactly as write_dicom does, it leaves to write_dicom (it returns None):
a header that does not parse as plain Explicit VR Little Endian, one that names no image (no SOP,
study or series UID), no SOP Class UID or one outside :data:`CLASSIC_SOP_CLASSES` (enhanced
multi-frame objects keep their derivation in functional groups), PALETTE COLOR, non-ASCII text
where a value is extended, and values write_dicom would reject or re-format.
"""
from __future__ import annotations

import re
import struct
import uuid
from typing import Optional

import numpy as np

__all__ = ["file_bytes", "new_uid", "ds_str", "CLASSIC_SOP_CLASSES", "CS_PATTERN", "PIXEL_DATA_TAGS"]

CS_PATTERN = re.compile(r"^[A-Z0-9_ ]{1,16}$")
"""A DICOM code string value (CS): 1-16 of A-Z, 0-9, space, underscore."""

PIXEL_DATA_TAGS = frozenset((
    0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010, 0x00287FE0,  # pixel data, offsets, URL
    0x00280106, 0x00280107,  # Smallest/Largest Image Pixel Value: stale once pixels change
))
"""Elements describing the source's pixel encoding: replaced or dropped in a copy (here and in data.writers)."""


def ds_str(value: float) -> str:
    """A float as a DICOM DS string (at most 16 characters)."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text if len(text) <= 16 else f"{value:.10g}"


_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"

CLASSIC_SOP_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.{c}" for c in (
    "1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1",  # CR, DX, MG, IO
    "2", "4", "20", "128", "481.1",  # CT, MR, NM, PET, RT Image
    "3.1", "6.1", "3", "6",  # ultrasound multi-frame and single frame (and their retired classes)
    "7", "7.1", "7.2", "7.3", "7.4",  # secondary capture
    "12.1", "12.2",  # XA, RF
    "77.1.1.1", "77.1.2.1", "77.1.4.1", "77.1.5.1", "77.1.5.2",  # VL endoscopic, microscopic, photographic, ophthalmic
))
"""SOP classes whose derivation goes at the top level of the data set (not in functional groups): the ones
:func:`file_bytes` writes. Any other class is left to data.writers.write_dicom, which looks its name up."""

_DS = re.compile(rb"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *$")
_IDENTITY = (0x00080018, 0x0020000D, 0x0020000E)  # SOP Instance, study or series UID: a header naming only its
# class is left to write_dicom (the decoders' checks differ there)


class _Unhandled(Exception):
    """The header needs data.writers.write_dicom."""


def new_uid() -> str:
    """A new UUID-derived UID (2.25.<128-bit integer>, PS3.5 B.2), as pydicom's generate_uid(prefix=None)."""
    return f"2.25.{uuid.uuid4().int}"


def file_bytes(header, image, *, lossy: bool = False, ratio: Optional[float] = None,
               method: Optional[str] = None, derivation: Optional[str] = None, mark_lossless: bool = False,
               uid: Optional[str] = None, version_name: str = "", class_uid: str = "") -> Optional[bytes]:
    """The DICOM file data.writers.write_dicom writes for ``image`` whose data set is ``header`` (the
    bytes of a stream's metadata block), or None when that header needs write_dicom (module docstring).
    ``header`` may also be a sequence of such blocks, merged in order (an element of a later one replaces
    the earlier's): a series slice's common and own elements (edge_runtime.series.SeriesHeaders).

    The arguments are write_dicom's as data.writers._check_request settles them (a lossy write's method and
    derivation text given); ``uid`` is the new SOP Instance UID, ``version_name`` and ``class_uid`` the file
    meta's implementation names.
    """
    try:
        elements = {}
        for part in ((header,) if isinstance(header, (bytes, bytearray, memoryview)) else header):
            elements.update(_elements(bytes(part)))
        return _Output(elements, image).build(lossy, ratio, method, derivation, mark_lossless,
                                              uid or new_uid(), version_name, class_uid)
    except (_Unhandled, struct.error, IndexError, RecursionError):  # struct.error: a value its VR cannot hold
        return None


# --------------------------------------------------------------------------- reading

def _element_at(data: bytes, at: int, end: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value start, value end) of the Explicit VR Little Endian element at ``at``."""
    if at + 8 > end:
        raise _Unhandled
    group, elem = struct.unpack_from("<HH", data, at)
    vr = data[at + 4:at + 6]
    if not (vr.isalpha() and vr.isupper()):
        raise _Unhandled
    if vr in _LONG_VRS:
        if at + 12 > end:
            raise _Unhandled
        length, start = struct.unpack_from("<I", data, at + 8)[0], at + 12
    else:
        length, start = struct.unpack_from("<H", data, at + 6)[0], at + 8
    if length == _UNDEFINED:
        if vr != b"SQ":  # an undefined-length UN holds Implicit VR items
            raise _Unhandled
        stop = _sequence_end(data, start, end)
        return (group << 16) | elem, vr, start, stop
    if start + length > end:
        raise _Unhandled
    if vr == b"SQ":
        _check_sequence(data, start, start + length)
    return (group << 16) | elem, vr, start, start + length


def _sequence_end(data: bytes, at: int, end: int) -> int:
    """Where an undefined-length sequence starting at ``at`` ends (after its delimiter)."""
    while _item_header(data, at, end)[0] != _SEQUENCE_END:
        at = _item_end(data, at, end)
    return at + 8


def _check_sequence(data: bytes, at: int, end: int) -> None:
    """The value of a defined-length sequence is items, each parsing, up to ``end`` exactly."""
    while at < end:
        at = _item_end(data, at, end)
    if at != end:
        raise _Unhandled


def _item_end(data: bytes, at: int, end: int) -> int:
    """Where the item starting at ``at`` ends (after its delimiter when of undefined length); its elements checked."""
    tag, length = _item_header(data, at, end)
    if tag != _ITEM:
        raise _Unhandled
    at += 8
    if length != _UNDEFINED:
        if at + length > end:
            raise _Unhandled
        stop = at
        while stop < at + length:
            stop = _element_at(data, stop, at + length)[3]
        return stop
    while _item_header(data, at, end)[0] != _ITEM_END:
        at = _element_at(data, at, end)[3]
    return at + 8


def _item_header(data: bytes, at: int, end: int) -> tuple[int, int]:
    if at + 8 > end:
        raise _Unhandled
    group, elem, length = struct.unpack_from("<HHI", data, at)
    return (group << 16) | elem, length


def _elements(data: bytes) -> dict[int, tuple[bytes, bytes]]:
    """{tag: (VR, the element's bytes)} of a data set, its tags ascending; sequences are checked (every item's
    elements parse, at every depth), not split."""
    out, at, last = {}, 0, -1
    while at < len(data):
        tag, vr, start, stop = _element_at(data, at, len(data))
        if tag <= last or tag >> 16 == 0x0002:
            raise _Unhandled
        out[tag] = (vr, data[at:stop])
        at, last = stop, tag
    return out


def _value(element: tuple[bytes, bytes]) -> bytes:
    """The value bytes of a defined-length element."""
    vr, raw = element
    return raw[12:] if vr in _LONG_VRS else raw[8:]


# --------------------------------------------------------------------------- writing

def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", b"OW") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise _Unhandled
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(tag: int, vr: bytes, values) -> tuple[bytes, bytes]:
    return vr, _element(tag, vr, "\\".join(values).encode("ascii"))


def _item(elements: dict) -> bytes:
    body = b"".join(raw for _, (_, raw) in sorted(elements.items()))
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _sequence(tag: int, items: list[bytes], old: Optional[tuple[bytes, bytes]] = None) -> tuple[bytes, bytes]:
    """A sequence of ``items``; of undefined length when it replaces one (``old``) that was (pydicom keeps
    an element's length form when its value changes)."""
    if old is None or struct.unpack_from("<I", old[1], 8)[0] != _UNDEFINED:
        return b"SQ", _element(tag, b"SQ", b"".join(items))
    return b"SQ", (struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, _UNDEFINED) + b"".join(items)
                   + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def _items(element: tuple[bytes, bytes]) -> list[bytes]:
    """The items (headers and delimiters included) of a sequence element, each as it is encoded."""
    vr, raw = element
    undefined = struct.unpack_from("<I", raw, 8)[0] == _UNDEFINED
    items, at, end = [], 12, len(raw) - 8 if undefined else len(raw)
    while at < end:
        stop = _item_end(raw, at, end)
        items.append(raw[at:stop])
        at = stop
    return items


def _code(value: str, scheme: str, meaning: str) -> bytes:
    return _item({0x00080100: _text(0x00080100, b"SH", [value]), 0x00080102: _text(0x00080102, b"SH", [scheme]),
                  0x00080104: _text(0x00080104, b"LO", [meaning])})


class _Output:
    """write_dicom's changes, made on a copy of the header's elements."""

    def __init__(self, elements: dict, image):
        self.source = elements
        self.image = image
        self.ds = {t: e for t, e in elements.items() if t not in PIXEL_DATA_TAGS}

    def text(self, tag: int, vrs) -> bytes:
        """The value of a text element stripped as pydicom reads it (empty when absent); ASCII only."""
        element = self.ds.get(tag)
        if element is None:
            return b""
        if element[0] not in vrs:
            raise _Unhandled
        value = _value(element).rstrip(b"\x00").strip(b" ")
        if any(c > 127 for c in value):
            raise _Unhandled
        return value

    def strings(self, tag: int, vrs=(b"CS",)) -> list[bytes]:
        """The values of a multi-valued text element, each stripped (none when absent or empty)."""
        value = self.text(tag, vrs)
        return [v.strip(b" ") for v in value.split(b"\\")] if value else []

    def integer(self, tag: int) -> Optional[int]:
        element = self.ds.get(tag)
        if element is None or element[0] not in (b"US", b"SS") or len(_value(element)) != 2:
            return None
        return struct.unpack("<h" if element[0] == b"SS" else "<H", _value(element))[0]

    def build(self, lossy, ratio, method, derivation, mark_lossless, uid, version_name, class_uid) -> bytes:
        ds = self.ds
        if not any(t in self.source for t in _IDENTITY) or 0x00080016 not in ds:
            raise _Unhandled
        sop_class = b"".join(self.strings(0x00080016, (b"UI",))).decode()
        if sop_class not in CLASSIC_SOP_CLASSES or 0x52009229 in ds or 0x52009230 in ds:
            raise _Unhandled
        ds[0x00080018] = _text(0x00080018, b"UI", [uid])
        self.set_pixels()
        self.set_pixel_range()
        if lossy:
            self.mark_lossy(ratio, method)
            self.mark_derived(derivation)
        elif mark_lossless and self.strings(0x00282110) != [b"01"]:
            ds[0x00282110] = _text(0x00282110, b"CS", ["00"])
        body = b"".join(raw for _, (_, raw) in sorted(ds.items()))
        meta = b"".join((
            _element(0x00020001, b"OB", b"\x00\x01"), _element(0x00020002, b"UI", sop_class.encode()),
            _element(0x00020003, b"UI", uid.encode()), _element(0x00020010, b"UI", _EXPLICIT_LITTLE.encode()),
            _element(0x00020012, b"UI", class_uid.encode()), _element(0x00020013, b"SH", version_name.encode())))
        return b"\x00" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(meta))) + meta + body

    def set_pixels(self) -> None:
        image, ds = self.image, self.ds
        bits_allocated = 8 * image.pixels.dtype.itemsize
        if (image.samples, image.photometric) not in ((3, "RGB"), (1, "MONOCHROME1"), (1, "MONOCHROME2")):
            raise _Unhandled  # PALETTE COLOR, or what write_dicom refuses
        if self.strings(0x00280004) == [b"PALETTE COLOR"]:
            raise _Unhandled  # colours from a palette: its tables are dropped
        bits_stored = min(image.bits_stored, bits_allocated)
        for tag, value in ((0x00280002, image.samples), (0x00280010, image.rows), (0x00280011, image.cols),
                           (0x00280100, bits_allocated), (0x00280101, bits_stored), (0x00280102, bits_stored - 1),
                           (0x00280103, int(image.signed))):
            ds[tag] = b"US", _element(tag, b"US", struct.pack("<H", value))
        ds[0x00280004] = _text(0x00280004, b"CS", [image.photometric])
        if image.samples > 1:
            ds[0x00280006] = b"US", _element(0x00280006, b"US", b"\x00\x00")
        else:
            ds.pop(0x00280006, None)
        if image.frames > 1 or 0x00280008 in ds:
            ds[0x00280008] = _text(0x00280008, b"IS", [str(image.frames)])
        pixels = image.pixels
        data = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)).tobytes()
        vr = b"OB" if bits_allocated == 8 else b"OW"
        ds[0x7FE00010] = vr, _element(0x7FE00010, vr, data)

    def set_pixel_range(self) -> None:
        """data.writers._set_pixel_range."""
        image, ds = self.image, self.ds
        if image.pixels.size == 0:
            return
        low, high = int(image.pixels.min()), int(image.pixels.max())
        vr, fmt = (b"SS", "<h") if image.signed else (b"US", "<H")
        for tag, value in ((0x00280106, low), (0x00280107, high)):
            if tag in self.source:
                ds[tag] = vr, _element(tag, vr, struct.pack(fmt, value))
        present = [t for t in (0x00280108, 0x00280109) if t in ds]
        if any(ds[t][0] not in (b"US", b"SS") for t in present):
            raise _Unhandled
        lo, hi = (-(1 << 15), (1 << 15) - 1) if image.signed else (0, (1 << 16) - 1)
        least, most = self.integer(0x00280108), self.integer(0x00280109)
        keep = least is not None and most is not None and lo <= least <= low and high <= most <= hi
        for t in present:
            if keep:
                ds[t] = vr, _element(t, vr, struct.pack(fmt, self.integer(t)))
            else:
                del ds[t]

    def mark_lossy(self, ratio: float, method: str) -> None:
        """data.writers._mark_lossy."""
        ratios, methods = [], []
        if self.strings(0x00282110) == [b"01"]:
            ratios, methods = self.strings(0x00282112, (b"DS",)), self.strings(0x00282114)
            if (not all(_DS.match(r) and len(r) <= 16 for r in ratios)
                    or not all(CS_PATTERN.match(m.decode()) for m in methods)):
                raise _Unhandled  # empty or malformed earlier values: write_dicom's call
            if len(ratios) != len(methods):
                raise _Unhandled
        ratios = [r.decode() for r in ratios] + [ds_str(round(float(ratio), 4))]
        methods = [m.decode() for m in methods] + [method]
        self.ds[0x00282110] = _text(0x00282110, b"CS", ["01"])
        self.ds[0x00282112] = _text(0x00282112, b"DS", ratios)
        self.ds[0x00282114] = _text(0x00282114, b"CS", methods)

    def mark_derived(self, description: str) -> None:
        """data.writers._mark_derived for a data set without functional groups."""
        ds = self.ds
        image_type = [v.decode() for v in self.strings(0x00080008)]
        ds[0x00080008] = _text(0x00080008, b"CS", ["DERIVED"] + (image_type[1:] if image_type else ["SECONDARY"]))
        old = self.text(0x00082111, (b"ST",)).decode()
        ds[0x00082111] = _text(0x00082111, b"ST", [(f"{old}; {description}" if old else description)[-1024:]])
        old_codes, old_sources = ds.get(0x00089215), ds.get(0x00082112)
        codes = _items(old_codes) if old_codes else []
        ds[0x00089215] = _sequence(0x00089215, codes + [_code("113040", "DCM", "Lossy Compression")], old_codes)
        sources = _items(old_sources) if old_sources else []
        if 0x00080018 in self.source:
            purpose = _sequence(0x0040A170, [_code("121320", "DCM", "Uncompressed predecessor")])
            reference = {0x00081150: self.uid(0x00080016, 0x00081150), 0x00081155: self.uid(0x00080018, 0x00081155),
                         0x0040A170: purpose}
            sources.append(_item(reference))
        if sources:
            ds[0x00082112] = _sequence(0x00082112, sources, old_sources)

    def uid(self, tag: int, as_tag: int) -> tuple[bytes, bytes]:
        """The source's UID at ``tag``, as element ``as_tag``."""
        value = _value(self.source[tag]).rstrip(b"\x00").strip(b" ")
        if self.source[tag][0] != b"UI" or any(c > 127 for c in value):
            raise _Unhandled
        return b"UI", _element(as_tag, b"UI", value)
