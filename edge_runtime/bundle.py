"""Model bundle: a directory with manifest.json, the integer context model, the integer tables
and (once exported) the TFLite graphs, identified by a model id that every stream carries.

    manifest.json   format version, config, quality table, levels, tile size, training run
    context.npz     integer context weights (detail, ll)
    tables.npz      integer entropy tables (freqs, lengths, tails)
    residual.npz    integer residual model of the error-bounded / lossless mode (optional; manifest `residual`)
    refine.npz      learned lifting refinement of the wavelet (optional; manifest `refine`, whose `file`
                    may name another file)
    postfilter.npz  the workstation's float post-filter (optional; manifest `postfilter`, `file`)
    *.tflite        analysis / synthesis graphs (optional; the workstation may use Keras instead; the
                    manifest's `tflite` section may name them); postfilter.tflite is an int8 bundle's
                    full-integer post-filter (`tflite.postfilter_int8.file`)

Model id: SHA-256 over every file coding depends on, found through the manifest (bundle_files),
each with its role, name and length ("keras_codec model id 2"). Bundles made before this id hashed
a fixed list of file names (legacy_model_id_of), so a manifest pointing `refine.file` elsewhere
left the weights out. A stream still carrying such a legacy id decodes under a bundle whose files
all have those fixed names: then the legacy id covered every byte too and names this bundle alone.
Any other bundle refuses it (two of them could share the legacy id and decode differently).

load_bundle validates the bundle: every file the manifest names is present (TFLite graphs: when the
coder is built, edge_runtime.tflite_runner.tflite_paths, which says to run the export), a plain name
inside the folder, parses (numpy archives, TFLite flatbuffers) and matches the manifest (table count,
the signatures the manifest lists, the refinement's layer count); the first failure is one
InvalidBundleError naming the bundle and the file. A decode loads with ``graphs=DECODE_GRAPHS``:
the encoder graph, which only encoding runs, is then checked by Bundle.check_graphs when an
encode first needs it (runtime.encode_loaded), with the same error.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.context import ContextWeights
from edge_runtime.entropy import EntropyTables
from edge_runtime.refine import REFINE_FILE, ExactRefinement
from edge_runtime.residual import RESIDUAL_FILE, ResidualModel
from edge_runtime.subband_coder import CodingModel

BUNDLE_FORMAT = 1
MODEL_ID_DOMAIN = b"keras_codec model id 2\0"
_LEGACY_HASHED = ("manifest.json", "context.npz", "tables.npz", "residual.npz", "postfilter.npz", "refine.npz",
                  "encoder.tflite", "hyper_decoder.tflite", "decoder.tflite", "postfilter.tflite")
"""The fixed names the first model id hashed (in this order), whichever of them existed."""
GRAPH_ROLES = ("encoder", "decoder", "postfilter_int8", "hyper_decoder")
"""The TFLite graphs a bundle may hold, by role (bundle_files)."""
DECODE_GRAPHS = ("decoder", "postfilter_int8", "hyper_decoder")
"""The graphs a decode may run: all but the encoder's analysis."""


class InvalidBundleError(ValueError):
    """A model bundle that is missing files or does not parse."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    coding: CodingModel
    model_id: bytes
    residual: ResidualModel | None = None
    refine: ExactRefinement | None = None
    legacy_model_id: bytes | None = None
    """The first id computation's value, when it names this bundle alone (module docstring)."""
    _unchecked: dict = field(default_factory=dict, repr=False, compare=False)
    """{role: (file name, bytes)} of the graphs load_bundle was asked not to check yet (its `graphs`)."""

    @property
    def model_ids(self) -> list:
        """The ids a stream may carry to be decoded by this bundle: its own, then the legacy alias."""
        return [self.model_id] + ([self.legacy_model_id] if self.legacy_model_id else [])

    def check_graphs(self, roles=GRAPH_ROLES) -> None:
        """Check the graphs of `roles` that load_bundle left unchecked, as it would have (InvalidBundleError
        naming the file); call before running one. The bytes checked are those the model id covers."""
        wanted = _wanted_signatures(self.manifest)
        for role in [r for r in roles if r in self._unchecked]:
            name, data = self._unchecked[role]
            _check_graph(self.path, name, data, wanted[role])
            self._unchecked.pop(role)


def bundle_files(folder, manifest: dict) -> dict:
    """{role: (file name, required)} of every file coding depends on, as the manifest names them.

    Optional roles count when their file exists: a residual model the manifest does not describe, the
    TFLite graphs, an old paper-model hyper-decoder.
    """
    folder = Path(folder)
    tflite = manifest.get("tflite") or {}
    files = {"manifest": ("manifest.json", True), "context": ("context.npz", True),
             "tables": ("tables.npz", True), "residual": (RESIDUAL_FILE, bool(manifest.get("residual")))}
    for role, key, default in (("refine", "refine", REFINE_FILE), ("postfilter", "postfilter", "postfilter.npz")):
        entry = manifest.get(key)
        if entry:
            files[role] = (entry.get("file", default) if isinstance(entry, dict) else default, True)
    # Graphs are checked when present; a missing one is edge_runtime.tflite_runner's to report (it says
    # to run the export: a workstation bundle need not have them).
    for role, default in (("encoder", "encoder.tflite"), ("decoder", "decoder.tflite")):
        files[role] = (tflite.get(role) if isinstance(tflite.get(role), str) else default, False)
    int8 = tflite.get("postfilter_int8")
    if int8:
        files["postfilter_int8"] = (int8.get("file", "postfilter.tflite") if isinstance(int8, dict)
                                    else "postfilter.tflite", False)
    files["hyper_decoder"] = ("hyper_decoder.tflite", False)
    return {role: (name, required) for role, (name, required) in files.items()
            if required or (folder / str(name)).is_file()}


def model_id_of(folder) -> bytes:
    """The bundle's model id (module docstring); InvalidBundleError when the manifest cannot be read."""
    folder = Path(folder)
    return _model_id(folder, bundle_files(folder, _read_manifest(folder)))


def _model_id(folder: Path, files: dict, contents: dict | None = None) -> bytes:
    h = hashlib.sha256(MODEL_ID_DOMAIN)
    for role in sorted(files):
        name = files[role][0]
        data = contents[role] if contents is not None else (folder / name).read_bytes()
        h.update(role.encode() + b"\0" + name.encode() + b"\0" + struct.pack("<Q", len(data)))
        h.update(data)
    return h.digest()


def legacy_model_id_of(folder) -> bytes:
    """The first id computation: SHA-256 of the fixed file names that exist, whatever the manifest says."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in _LEGACY_HASHED:
        p = folder / name
        if p.exists():
            h.update(name.encode() + b"\0")
            h.update(p.read_bytes())
    return h.digest()


def save_bundle(folder, manifest: dict, weights: ContextWeights, tables: EntropyTables,
                extra_files: dict | None = None) -> bytes:
    """Write a bundle directory and return its model id."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, **manifest}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    np.savez_compressed(folder / "context.npz", **weights.to_arrays())
    np.savez_compressed(folder / "tables.npz", **tables.to_arrays())
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data)
    return model_id_of(folder)


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise InvalidBundleError(f"{folder}: not a model bundle (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidBundleError(f"{folder}: manifest.json is not readable JSON ({exc}); re-copy the bundle") from None
    if not isinstance(manifest, dict):
        raise InvalidBundleError(f"{folder}: manifest.json holds a {type(manifest).__name__}, not an object; "
                                 f"re-copy the bundle")
    return manifest


def load_bundle(folder, graphs=GRAPH_ROLES) -> Bundle:
    """Read and validate a bundle (module docstring); InvalidBundleError names the bundle and the file.

    `graphs`: the TFLite graphs (GRAPH_ROLES) checked now; the others present wait for Bundle.check_graphs.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise InvalidBundleError(f"{folder}: bundle format {manifest.get('format')}, this runtime reads {BUNDLE_FORMAT}")
    try:
        files = bundle_files(folder, manifest)
    except (AttributeError, TypeError) as exc:
        raise InvalidBundleError(f"{folder}: manifest.json: a file entry is malformed ({exc})") from None
    contents = {}
    for role, (name, _required) in files.items():
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise InvalidBundleError(f"{folder}: manifest.json names {name!r} for the {role} file; "
                                     f"it must be a plain file name inside the bundle folder")
        try:
            contents[role] = (folder / name).read_bytes()
        except FileNotFoundError:
            raise InvalidBundleError(f"{folder}: {name} is missing (the manifest needs it for the {role}); "
                                     f"re-copy the bundle") from None
        except OSError as exc:
            raise InvalidBundleError(f"{folder}: {name} cannot be read ({exc.strerror or exc})") from None

    codec = manifest.get("codec") or {}
    weights = _parse(folder, files, "context", lambda z: ContextWeights.from_arrays(z))
    tables = _parse(folder, files, "tables", lambda z: EntropyTables.from_arrays(z))
    scales = codec.get("num_scales")
    if scales is not None and len(tables.freqs) != int(scales):
        raise InvalidBundleError(f"{folder}: tables.npz holds {len(tables.freqs)} tables, the manifest's "
                                 f"codec.num_scales is {scales}; re-copy the bundle")
    residual = _parse(folder, files, "residual", ResidualModel.from_arrays) if "residual" in files else None
    refine = None
    if "refine" in files:
        entry = manifest["refine"]
        name = files["refine"][0]
        try:
            refine = ExactRefinement.load(folder / name, int(entry["layers"]), int(entry["max_levels"]),
                                          entry["wavelet"])
        except (KeyError, TypeError) as exc:
            raise InvalidBundleError(f"{folder}: manifest.json: the refine entry lacks {exc}") from None
        except Exception as exc:
            raise InvalidBundleError(f"{folder}: {name}: {_npz_problem(exc)}") from None
    if "postfilter" in files:
        _parse(folder, files, "postfilter", lambda z: [z[k] for k in z.files])
    wanted = _wanted_signatures(manifest)
    unchecked = {}
    for role in wanted:
        if role in files:
            if role in graphs:
                _check_graph(folder, files[role][0], contents[role], wanted[role])
            else:
                unchecked[role] = (files[role][0], contents[role])

    model_id, legacy = _ids(folder, files, contents)
    return Bundle(folder, manifest, CodingModel(weights, tables), model_id, residual, refine, legacy, unchecked)


def _ids(folder: Path, files: dict, contents: dict | None = None) -> tuple:
    """(model id, the legacy id when it names this bundle alone, else None): what Bundle.model_ids lists."""
    legacy = legacy_model_id_of(folder) if all(name in _LEGACY_HASHED for name, _ in files.values()) else None
    return _model_id(folder, files, contents), legacy


def _npz_problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"truncated or not a numpy archive of the expected arrays ({type(exc).__name__}: {text}); re-copy the bundle"


def _parse(folder: Path, files: dict, role: str, build):
    """A numpy archive of the bundle through ``build``; any failure names the file."""
    name = files[role][0]
    try:
        with np.load(folder / name) as z:
            return build(z)
    except Exception as exc:  # BadZipFile, EOFError, KeyError, ValueError, ...: all mean a bad file
        raise InvalidBundleError(f"{folder}: {name}: {_npz_problem(exc)}") from None


def _wanted_signatures(manifest: dict) -> dict:
    """{graph role: the signature keys manifest.json lists for it}, in the order the graphs are checked."""
    tflite = manifest.get("tflite") or {}
    listed = tflite.get("signatures") or tflite.get("signature_order") or []
    wanted = {"encoder": sorted(listed), "decoder": sorted(listed), "hyper_decoder": []}
    int8 = tflite.get("postfilter_int8")
    if isinstance(int8, dict):
        wanted["postfilter_int8"] = [int8.get("signature", "postfilter")]
    return wanted


def _check_graph(folder: Path, name: str, data: bytes, signatures: list) -> None:
    """The TFLite file `name` (its bytes `data`) is a TFLite flatbuffer holding `signatures`."""
    try:
        found = _signatures_cached(hashlib.sha256(data).digest(), data)
    except ValueError as exc:
        raise InvalidBundleError(f"{folder}: {name}: not a TFLite model ({exc}); re-run the TFLite export "
                                 f"(keras-codec export) or re-copy the bundle") from None
    missing = [k for k in signatures if k not in found]
    if missing:
        raise InvalidBundleError(f"{folder}: {name}: lacks the signature(s) {', '.join(missing)} that "
                                 f"manifest.json lists; re-run the TFLite export")


_SIGNATURES: dict = {}


def _signatures_cached(digest: bytes, data: bytes) -> list:
    """tflite_signatures, once per distinct file content in this process (the shipped graphs take ~2.5 ms each)."""
    if digest not in _SIGNATURES:
        _SIGNATURES[digest] = tflite_signatures(data)
    return _SIGNATURES[digest]


def tflite_signatures(data: bytes) -> list:
    """The signature keys of a TFLite flatbuffer (schema: Model.signature_defs, field 7; SignatureDef
    .signature_key, field 2); ValueError when it is not one. Every offset is bounds-checked, and the
    buffers, tensors and operators the interpreter reads must lie in the file (a truncated copy fails).

    The thousands of tensor and operator tables are checked as numpy arrays of positions (_Flatbuffer),
    not one by one: a bundle loads in every process, so this walk is part of each decode's start-up."""
    fb = _Flatbuffer(data)
    model = fb.indirect(np.zeros(1, np.int64))
    if not 8 <= int(model[0]) < fb.size:
        raise ValueError(f"the root table offset {int(model[0])} lies outside the file")
    # Model.buffers: every Buffer's bytes must lie in the file (a truncated copy)
    buffers = fb.tables(model, 4, "buffer")
    data_at = fb.field(buffers, 0)
    begin = fb.indirect(data_at[data_at >= 0])
    length = fb.u32(begin)
    if np.any(begin + 4 + length > fb.size):
        raise ValueError("a buffer runs past the end: the file is truncated")
    at, length = fb.field(buffers, 1), fb.field(buffers, 2)  # a large model's buffers follow the flatbuffer
    both = (at >= 0) & (length >= 0) & (np.maximum(at, length) + 8 <= fb.size)
    offsets, lengths = fb.u64(at[both]), fb.u64(length[both])
    if np.any((offsets > 1) & (offsets + lengths > fb.size)):
        raise ValueError("an external buffer runs past the end: the file is truncated")
    graphs = fb.tables(model, 2, "subgraph")  # tensors and operators, as the interpreter reads them
    tensors = fb.tables(graphs, 0, "tensor")
    fb.in_file(tensors, 0, 4, "tensor shape")
    fb.in_file(tensors, 3, 1, "tensor name")
    fb.in_file(graphs, 1, 4, "input")
    fb.in_file(graphs, 2, 4, "output")
    operators = fb.tables(graphs, 3, "operator")
    fb.in_file(operators, 1, 4, "operator input")
    fb.in_file(operators, 2, 4, "operator output")
    keys = []
    for sig in fb.tables(model, 7, "signature"):
        at = fb.field(np.array([sig], np.int64), 2)
        if at[0] < 0:
            continue
        text = int(fb.indirect(at)[0])
        length = int(fb.u32(np.array([text], np.int64))[0])
        if text + 4 + length > fb.size:
            raise ValueError("a signature name runs past the end")
        keys.append(bytes(data[text + 4:text + 4 + length]).decode("utf-8", "replace"))
    return keys


class _Flatbuffer:
    """Bounds-checked reads of many flatbuffer tables at once: positions are int64 arrays, an absent
    field is -1, and anything pointing outside the file raises ValueError."""

    def __init__(self, data: bytes):
        self.bytes = np.frombuffer(data, np.uint8)
        self.size = int(self.bytes.size)
        if self.size < 8 or bytes(data[4:8]) != b"TFL3":
            raise ValueError(f"no TFL3 flatbuffer identifier in its first 8 bytes ({self.size} bytes)")
        # every position's next 2, 4 and 8 bytes, as views made once (hundreds of reads use them)
        self._windows = {w: np.lib.stride_tricks.sliding_window_view(self.bytes, w) for w in (2, 4, 8)}

    def _uint(self, at: np.ndarray, width: int) -> np.ndarray:
        at = np.asarray(at, np.int64)
        if at.size and (int(at.min()) < 0 or int(at.max()) + width > self.size):
            raise ValueError(f"an offset runs past the end ({self.size} bytes)")
        return np.ascontiguousarray(self._windows[width][at]).view(f"<u{width}")[..., 0].astype(np.uint64)

    def u16(self, at):
        return self._uint(at, 2).astype(np.int64)

    def u32(self, at):
        return self._uint(at, 4).astype(np.int64)

    def u64(self, at):
        value = self._uint(at, 8)
        return np.minimum(value, np.uint64(2 ** 48)).astype(np.int64)  # that far is past the end; sums stay exact

    def indirect(self, at):
        return np.asarray(at, np.int64) + self.u32(at)

    def field(self, tables: np.ndarray, index: int) -> np.ndarray:
        """Absolute positions of field `index` of each table (-1 where absent)."""
        tables = np.asarray(tables, np.int64)
        soffset = self.u32(tables)
        vtable = tables - np.where(soffset >= 2 ** 31, soffset - 2 ** 32, soffset)
        if vtable.size and (int(vtable.min()) < 0 or int(vtable.max()) + 4 > self.size):
            raise ValueError("a vtable lies outside the file")
        vsize = self.u16(vtable)
        if np.any((vsize < 4) | (vsize % 2 == 1)):
            raise ValueError("a vtable of a bad size")
        slot = 4 + 2 * index
        present = (slot + 2 <= vsize) & (vtable + slot + 2 <= self.size)
        offset = self.u16(np.where(present, vtable + slot, 0))
        return np.where(present & (offset != 0), tables + offset, -1)

    def tables(self, tables: np.ndarray, index: int, what: str) -> np.ndarray:
        """The tables the vector field `index` of each table points at, concatenated (absent: none)."""
        start, count = self._vectors(tables, index, what)
        if int(count.sum()) > self.size // 4:  # before allocating their positions: 4 bytes an offset
            raise ValueError(f"{what} lists larger than the file")
        items = np.repeat(start + 4, count) + 4 * (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count,
                                                                                          count))
        return self.indirect(items)

    def in_file(self, tables: np.ndarray, index: int, item_size: int, what: str) -> None:
        """The vector field `index` of each table, of items of `item_size` bytes, lies in the file."""
        start, count = self._vectors(tables, index, what)
        if np.any(start + 4 + item_size * count > self.size):
            raise ValueError(f"a {what} list runs past the end: the file is truncated")

    def _vectors(self, tables, index, what):
        at = self.field(tables, index)
        start = self.indirect(at[at >= 0])
        count = self.u32(start)
        if np.any(count > self.size // 4):
            raise ValueError(f"a {what} count larger than the file")
        return start, count


MODELS_DIR = Path(__file__).resolve().parent / "models"
"""The bundles shipped inside edge_runtime: DEFAULT_NAME, which encodes, and beside it every earlier default kept so
that the streams it wrote still decode (a folder of its own holding a manifest.json; shipped_bundle_for)."""
DEFAULT_NAME = "default"


def default_bundle_path() -> Path:
    """The bundle shipped inside edge_runtime, so `edge-codec` works right after install."""
    return MODELS_DIR / DEFAULT_NAME


def shipped_bundle_paths() -> list:
    """The shipped bundles: the default first, then the earlier defaults kept beside it (by folder name)."""
    root = MODELS_DIR
    earlier = sorted(p for p in root.iterdir() if p.name != DEFAULT_NAME and not p.name.startswith(".")
                     and (p / "manifest.json").is_file()) if root.is_dir() else []
    return [root / DEFAULT_NAME] + earlier


_SHIPPED_IDS = {}
"""{folder: the ids its streams carry} of the shipped bundles, hashed once per process (shipped_model_ids)."""


def shipped_model_ids(folder) -> list:
    """The ids a shipped bundle's streams may carry (Bundle.model_ids, without loading the bundle), computed once per
    process: shipped bundles do not change under a running decoder. InvalidBundleError / OSError as load_bundle."""
    folder = Path(folder)
    if folder not in _SHIPPED_IDS:
        model_id, legacy = _ids(folder, bundle_files(folder, _read_manifest(folder)))
        _SHIPPED_IDS[folder] = [model_id] + ([legacy] if legacy else [])
    return _SHIPPED_IDS[folder]


def shipped_bundle_for(model_id: bytes):
    """The shipped bundle (default first) that decodes streams carrying `model_id`, or None; a damaged shipped
    bundle is passed over here (loading it names the damage)."""
    for folder in shipped_bundle_paths():
        try:
            if bytes(model_id) in shipped_model_ids(folder):
                return folder
        except (OSError, InvalidBundleError):
            continue
    return None
