"""The Parquet slice store: one row per preprocessed 2D slice, written in shards that are committed by a manifest.

Layout (a local path or a URI such as s3://bucket/exp/stores/real_mr, always through `pyarrow.fs`):

    <store>/store.json                    {"schema_version", "kind", "config_hash", "config"?}, written at creation
    <store>/shards/<shard>.parquet        data; written to shards/.tmp-<uuid>-<shard>.parquet, then moved
    <store>/shards/<shard>.manifest.json  written AFTER the data: {"shard", "rows", "sha256", "config_hash", "bytes"}
    <store>/manifest.json                 the merged shard manifests; written only by the driver (`merge_manifests`)

Why a manifest and not just the rename: on object stores a move is a copy, so a reader can see a half-copied data
file under its final name. A shard therefore counts as committed only when its manifest exists, names this store's
config_hash and matches the data file (byte size always; rows and sha256 in `is_committed` and `verify`). Anything
else under shards/ is either torn (a data file without a valid manifest, a manifest without data: never read,
reported by `verify`, removed by `discard_uncommitted`) or foreign (a Parquet file with another schema or
config_hash: a `StoreError` naming the file, never silently mixed in).

Image and mask encoding. In memory (what `read` returns and `slices_to_table` builds) `image` and `mask` are
pyarrow `fixed_shape_tensor` columns (float16 / uint8, shape [S, S]), so `tensor_column_to_numpy` is a zero-copy view.
On disk they are stored as `fixed_size_binary` (S*S*2 and S*S bytes) holding the same row-major bytes, and turned
back into tensors on read without copying. The reason is speed: Parquet has no fixed-size list, so a tensor column is
written as a nested list with one repetition level per pixel, and decoding those levels made reading 8-25x slower
(256x256: ~0.4-2.5k vs ~10-20k slices/s on this 2-core machine; bench/store_read.py measures both).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datasets import uri as U
from datasets.errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TENSOR_COLUMNS: dict[str, pa.DataType] = {"image": pa.float16(), "mask": pa.uint8()}
_META_HASH = b"essgrid.config_hash"
_META_VERSION = b"essgrid.schema_version"
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")
_DATA_SUFFIX = ".parquet"
_MANIFEST_SUFFIX = ".manifest.json"
_TMP_PREFIX = ".tmp-"
_STRING_COLUMNS = ["patient_id", "modality", "sequence", "origin", "generator", "source_patient", "split",
                   "config_hash"]


def slice_schema(size: int) -> pa.Schema:
    """The row schema of a slice store whose slices are `size` x `size` (docs/ARCHITECTURE.md, "Row schema").

    | column         | type                              | meaning                                              |
    |----------------|-----------------------------------|------------------------------------------------------|
    | patient_id     | string                            | patient of the slice (synthetic: the CT patient)     |
    | slice_index    | int32                             | k-th slice in natural file order                     |
    | modality       | string                            | "CT" or "MR" (synthetic MR rows say "MR")            |
    | sequence       | string                            | "CT", "T2SPIR", ...                                  |
    | origin         | string                            | "real" or "synthetic"                                |
    | generator      | string                            | "none" for real rows, else "essnet" / "cyclegan"     |
    | replicate      | int16                             | generator replicate (0 for real rows)                |
    | source_patient | string                            | CT patient of a synthetic slice; = patient_id if real |
    | split          | string                            | MR "test"/"trainval"; CT "train"/"val"               |
    | image          | fixed_shape_tensor float16 [S, S] | preprocessed, in [-1, 1]                             |
    | mask           | fixed_shape_tensor uint8 [S, S]   | liver 0/1 at the preprocessed size                   |
    | has_liver      | bool                              | mask.any()                                           |
    | spacing        | fixed_size_list<float32>[3]       | native (row, col, slice) mm                          |
    | native_shape   | fixed_size_list<int32>[2]         | native (H, W)                                        |
    | mask_native    | binary (nullable)                 | np.packbits of the native bool liver mask (real rows) |
    | quality        | float32                           | synthetic: netS agreement Dice (NaN if none); real NaN |
    | config_hash    | string                            | hash of the config the shard was written with        |

    Args:
        size: S, the square slice size.
    Returns:
        The in-memory (logical) schema; on disk the two tensor columns are fixed_size_binary (module docstring).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size: {size!r}; expected a positive integer")
    size = int(size)
    req = dict(nullable=False)
    return pa.schema([
        pa.field("patient_id", pa.string(), **req),
        pa.field("slice_index", pa.int32(), **req),
        pa.field("modality", pa.string(), **req),
        pa.field("sequence", pa.string(), **req),
        pa.field("origin", pa.string(), **req),
        pa.field("generator", pa.string(), **req),
        pa.field("replicate", pa.int16(), **req),
        pa.field("source_patient", pa.string(), **req),
        pa.field("split", pa.string(), **req),
        pa.field("image", pa.fixed_shape_tensor(pa.float16(), [size, size]), **req),
        pa.field("mask", pa.fixed_shape_tensor(pa.uint8(), [size, size]), **req),
        pa.field("has_liver", pa.bool_(), **req),
        pa.field("spacing", pa.list_(pa.float32(), 3), **req),
        pa.field("native_shape", pa.list_(pa.int32(), 2), **req),
        pa.field("mask_native", pa.binary(), nullable=True),
        pa.field("quality", pa.float32(), **req),
        pa.field("config_hash", pa.string(), **req),
    ])


SLICE_SCHEMA: pa.Schema = slice_schema(256)
"""The row schema at the default size 256 (see `slice_schema` for the table); other sizes differ only in [S, S]."""

SLICE_COLUMNS: tuple[str, ...] = tuple(SLICE_SCHEMA.names)


def file_schema(size: int) -> pa.Schema:
    """The on-disk schema: `slice_schema(size)` with image/mask as fixed_size_binary of the same bytes."""
    schema = slice_schema(size)
    for name, value_type in TENSOR_COLUMNS.items():
        i = schema.get_field_index(name)
        schema = schema.set(i, pa.field(name, pa.binary(size * size * value_type.byte_width), nullable=False))
    return schema


# ---------------------------------------------------------------------------------------------------------------
# config hashes

def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def hash_config(obj: Any) -> str:
    """A short stable hash of a JSON-able config part (same recipe as `grid.config.config_hash`)."""
    blob = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff_config(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two plain config dicts, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_config(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if _plain(old) == _plain(new) else [f"{prefix or '<config>'} ({_plain(old)!r} -> {_plain(new)!r})"]


# ---------------------------------------------------------------------------------------------------------------
# tables <-> numpy

def _per_row(name: str, value: Any, n: int) -> list:
    """Broadcast a scalar to n rows, or check a sequence has n entries."""
    if isinstance(value, (str, bytes, int, float, np.generic)) or value is None:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} slices")
    return values


def _fixed_rows(name: str, value: Any, n: int, width: int, dtype: type) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.shape == (width,):
        arr = np.broadcast_to(arr, (n, width))
    if arr.shape != (n, width):
        raise ValueError(f"{name}: expected {width} values or [{n}, {width}], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _tensor_array(arr: np.ndarray, value_type: pa.DataType) -> pa.ExtensionArray:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr, dtype=value_type.to_pandas_dtype()))


def slices_to_table(image: np.ndarray, mask: np.ndarray, *, patient_id: str | Sequence[str], modality: str,
                    sequence: str, split: str | Sequence[str], spacing: Any, native_shape: Any, config_hash: str,
                    slice_index: Sequence[int] | None = None, origin: str = "real", generator: str = "none",
                    replicate: int = 0, source_patient: str | Sequence[str] | None = None,
                    mask_native: np.ndarray | Sequence[bytes | None] | None = None,
                    quality: float | Sequence[float] | None = None) -> pa.Table:
    """Build a table in `slice_schema(S)` from numpy slices and their metadata.

    Scalar metadata is repeated for every row; sequences must have one entry per slice.

    Args:
        image: [N, S, S] float in [-1, 1] (stored as float16).
        mask: [N, S, S] bool or 0/1 (stored as uint8).
        patient_id, modality, sequence, split: per-row strings (scalar or sequence).
        spacing: (row, col, slice) mm, or [N, 3].
        native_shape: (H, W), or [N, 2].
        config_hash: the config hash every row carries (the store checks it).
        slice_index: defaults to 0..N-1.
        origin, generator, replicate: "real"/"none"/0 for real rows.
        source_patient: defaults to patient_id.
        mask_native: bool [N, H, W] (packed with np.packbits), a sequence of packed bytes / None, or None (null).
        quality: NaN when None.
    Returns:
        A pyarrow Table (one chunk per column).
    Raises:
        ValueError: shapes or lengths that do not agree, image values outside [-1, 1], mask values not 0/1.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image: expected [N, S, S], got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from image shape {image.shape}")
    n, size = image.shape[0], image.shape[1]
    if n and (not np.isfinite(image).all() or image.min() < -1.0 or image.max() > 1.0):
        raise ValueError(f"image: values must be finite and in [-1, 1], got [{image.min()}, {image.max()}]")
    mask_u8 = mask.astype(np.uint8, copy=False)
    if n and mask_u8.max() > 1:
        raise ValueError(f"mask: values must be 0/1, got max {mask_u8.max()}")
    pids = [str(p) for p in _per_row("patient_id", patient_id, n)]
    sources = pids if source_patient is None else [str(p) for p in _per_row("source_patient", source_patient, n)]
    if mask_native is None:
        packed: list[bytes | None] = [None] * n
    elif isinstance(mask_native, np.ndarray) and mask_native.dtype != object:
        if mask_native.ndim != 3 or mask_native.shape[0] != n:
            raise ValueError(f"mask_native: expected [{n}, H, W], got shape {mask_native.shape}")
        packed = [np.packbits(np.asarray(m, dtype=bool)).tobytes() for m in mask_native]
    else:
        packed = _per_row("mask_native", mask_native, n)
    q = np.full(n, np.nan, np.float32) if quality is None else np.asarray(_per_row("quality", quality, n), np.float32)
    columns = {
        "patient_id": pa.array(pids, pa.string()),
        "slice_index": pa.array(np.arange(n) if slice_index is None else _per_row("slice_index", slice_index, n),
                                pa.int32()),
        "modality": pa.array(_per_row("modality", modality, n), pa.string()),
        "sequence": pa.array(_per_row("sequence", sequence, n), pa.string()),
        "origin": pa.array(_per_row("origin", origin, n), pa.string()),
        "generator": pa.array(_per_row("generator", generator, n), pa.string()),
        "replicate": pa.array(_per_row("replicate", replicate, n), pa.int16()),
        "source_patient": pa.array(sources, pa.string()),
        "split": pa.array(_per_row("split", split, n), pa.string()),
        "image": _tensor_array(image.reshape(n, size, size), pa.float16()),
        "mask": _tensor_array(mask_u8.reshape(n, size, size), pa.uint8()),
        "has_liver": pa.array(mask_u8.reshape(n, -1).any(axis=1) if n else [], pa.bool_()),
        "spacing": pa.FixedSizeListArray.from_arrays(
            pa.array(_fixed_rows("spacing", spacing, n, 3, np.float32).ravel()), 3),
        "native_shape": pa.FixedSizeListArray.from_arrays(
            pa.array(_fixed_rows("native_shape", native_shape, n, 2, np.int32).ravel()), 2),
        "mask_native": pa.array(packed, pa.binary()),
        "quality": pa.array(q, pa.float32()),
        "config_hash": pa.array([config_hash] * n, pa.string()),
    }
    schema = slice_schema(size)
    return pa.Table.from_arrays([columns[f.name].cast(f.type) if not isinstance(f.type, pa.ExtensionType)
                                 else columns[f.name] for f in schema], schema=schema)


def _tensor_shape_dtype(col: pa.ChunkedArray, name: str) -> tuple[tuple[int, ...], np.dtype]:
    typ = col.type
    if isinstance(typ, pa.FixedShapeTensorType):
        return tuple(typ.shape), np.dtype(typ.value_type.to_pandas_dtype())
    if pa.types.is_fixed_size_binary(typ) and name in TENSOR_COLUMNS:
        dtype = np.dtype(TENSOR_COLUMNS[name].to_pandas_dtype())
        side = int(round((typ.byte_width // dtype.itemsize) ** 0.5))
        if side * side * dtype.itemsize != typ.byte_width:
            raise ValueError(f"column {name!r}: {typ.byte_width} bytes per row is not a square {dtype} slice")
        return (side, side), dtype
    raise ValueError(f"column {name!r}: type {typ} is not a fixed_shape_tensor")


def _chunk_to_numpy(chunk: pa.Array, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if isinstance(chunk, pa.FixedShapeTensorArray):
        return chunk.to_numpy_ndarray()
    per = int(np.prod(shape))
    buf = chunk.buffers()[1]
    if len(chunk) == 0 or buf is None:
        return np.empty((0, *shape), dtype)
    return np.frombuffer(buf, dtype=dtype, count=len(chunk) * per,
                         offset=chunk.offset * per * dtype.itemsize).reshape(len(chunk), *shape)


def tensor_column_to_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A tensor column ("image" or "mask") as one numpy array [N, S, S].

    Zero-copy (a read-only view of the Arrow buffer) when the column has one chunk; otherwise one copy into a fresh
    writable array. `SliceStore.read` returns one chunk per shard file, so combine first (or pass a single-shard
    filter) when the view matters. Wrap with `torch.from_numpy(np.array(x))` if a writable tensor is needed.

    Args:
        table: from `SliceStore.read` or `slices_to_table` (the raw on-disk binary form is accepted too).
        name: the column.
    Returns:
        numpy [N, S, S] (float16 for image, uint8 for mask).
    Raises:
        ValueError: the column is not a tensor column.
    """
    col = table.column(name)
    shape, dtype = _tensor_shape_dtype(col, name)
    chunks = [c for c in col.chunks if len(c)]
    if len(chunks) == 1:
        return _chunk_to_numpy(chunks[0], shape, dtype)
    out = np.empty((len(col), *shape), dtype=dtype)
    i = 0
    for c in chunks:
        out[i:i + len(c)] = _chunk_to_numpy(c, shape, dtype)
        i += len(c)
    return out


def unpack_native_mask(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Inverse of the `mask_native` packing: bytes of np.packbits -> bool [H, W].

    Args:
        data: one row's `mask_native` value.
        shape: (H, W), the row's `native_shape`.
    Returns:
        bool [H, W].
    Raises:
        ValueError: data is None or too short for shape.
    """
    h, w = (int(v) for v in shape)
    if data is None:
        raise ValueError("mask_native is null (synthetic rows carry no native mask)")
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size * 8 < h * w:
        raise ValueError(f"mask_native: {raw.size} bytes cannot hold a {h}x{w} mask")
    return np.unpackbits(raw, count=h * w).reshape(h, w).astype(bool)


def _tensor_to_binary(chunk: pa.Array) -> pa.Array:
    arr = np.ascontiguousarray(chunk.to_numpy_ndarray())
    width = arr[0].nbytes if len(arr) else int(np.prod(chunk.type.shape)) * arr.itemsize
    return pa.Array.from_buffers(pa.binary(width), len(arr), [None, pa.py_buffer(arr)])


def _binary_to_tensor(chunk: pa.Array, value_type: pa.DataType, size: int) -> pa.Array:
    per = size * size
    n = len(chunk)
    buf = chunk.buffers()[1]
    if n == 0 or buf is None:
        values = pa.array([], type=value_type)
    else:
        values = pa.Array.from_buffers(value_type, n * per, [None, buf], offset=chunk.offset * per)
    storage = pa.FixedSizeListArray.from_arrays(values, per)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, [size, size]), storage)


def to_file_table(table: pa.Table, config_hash: str) -> pa.Table:
    """Logical table -> on-disk table: tensor columns as fixed_size_binary; schema metadata names the config hash."""
    arrays, fields = [], []
    for f, col in zip(table.schema, table.columns):
        if isinstance(f.type, pa.FixedShapeTensorType):
            size = f.type.shape[0]
            col = pa.chunked_array([_tensor_to_binary(c) for c in col.chunks],
                                   type=pa.binary(size * size * f.type.value_type.byte_width))
            f = pa.field(f.name, col.type, nullable=False)
        arrays.append(col)
        fields.append(f)
    meta = {_META_HASH: config_hash.encode(), _META_VERSION: str(SCHEMA_VERSION).encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def to_logical_table(table: pa.Table) -> pa.Table:
    """On-disk table -> logical table: binary image/mask columns back to fixed_shape_tensor, without copying."""
    arrays, fields = [], []
    for f, col in zip(table.schema, table.columns):
        if f.name in TENSOR_COLUMNS and pa.types.is_fixed_size_binary(f.type):
            (size, _), _dtype = _tensor_shape_dtype(col, f.name)
            ttype = pa.fixed_shape_tensor(TENSOR_COLUMNS[f.name], [size, size])
            col = pa.chunked_array([_binary_to_tensor(c, TENSOR_COLUMNS[f.name], size) for c in col.chunks],
                                   type=ttype)
            f = pa.field(f.name, ttype, nullable=False)
        arrays.append(col)
        fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# ---------------------------------------------------------------------------------------------------------------
# the store

@dataclass
class StoreReport:
    """What `SliceStore.verify` found under shards/."""

    uri: str
    committed: list[str] = field(default_factory=list)
    rows: int = 0
    torn: dict[str, str] = field(default_factory=dict)      # shard name -> why it is not committed
    foreign: dict[str, str] = field(default_factory=dict)   # file path -> why it does not belong here
    temporaries: list[str] = field(default_factory=list)    # .tmp-* files (an interrupted or running writer)

    @property
    def ok(self) -> bool:
        """No torn and no foreign files (temporaries may belong to a writer still running)."""
        return not self.torn and not self.foreign

    def summary(self) -> str:
        lines = [f"{self.uri}: {len(self.committed)} committed shards, {self.rows} rows"]
        lines += [f"  torn {name}: {why}" for name, why in self.torn.items()]
        lines += [f"  foreign {path}: {why}" for path, why in self.foreign.items()]
        lines += [f"  temporary {path}" for path in self.temporaries]
        return "\n".join(lines)


@dataclass
class _Entry:
    data: pafs.FileInfo | None = None
    manifest: pafs.FileInfo | None = None


def _natural(name: str) -> tuple:
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (name,)


def _schema_problem(schema: pa.Schema, store_hash: str) -> str | None:
    """Why an on-disk schema does not belong to a store with `store_hash`; None when it does."""
    image = schema.field("image") if "image" in schema.names else None
    size = None
    if image is not None and pa.types.is_fixed_size_binary(image.type):
        side = int(round((image.type.byte_width // 2) ** 0.5))
        size = side if side * side * 2 == image.type.byte_width else None
    if size is None:
        return (f"schema differs from the slice schema: no image column of S*S float16 bytes (columns: "
                f"{', '.join(schema.names)})")
    expected = file_schema(size)
    if not schema.remove_metadata().equals(expected):
        missing = [n for n in expected.names if n not in schema.names]
        extra = [n for n in schema.names if n not in expected.names]
        typed = [f"{f.name} is {f.type}, expected {expected.field(f.name).type}" for f in schema
                 if f.name in expected.names and not f.type.equals(expected.field(f.name).type)]
        bits = ([f"missing columns {missing}"] if missing else []) + ([f"extra columns {extra}"] if extra else [])
        return "schema differs from the slice schema: " + "; ".join(bits + typed or ["field order or nullability"])
    got = (schema.metadata or {}).get(_META_HASH)
    if got is None:
        return "no essgrid config_hash in its schema metadata (not written by this store)"
    if got.decode() != store_hash:
        return f"written with config_hash {got.decode()}, the store's is {store_hash}"
    return None


class SliceStore:
    """One slice store (see the module docstring for the layout and the commit rule).

    Args:
        uri: local path, file:// or s3:// / gs:// URI of the store directory.
        config_hash: the hash this store must have; None adopts the existing one (required with create=True unless
            `config` is given, whose hash is then used).
        kind: e.g. "real_ct", "real_mr", "synthetic_mr"; checked against store.json when given.
        create: make the store (store.json and shards/) if it does not exist.
        config: the plain config dict behind config_hash; recorded at creation, and used to name the fields that
            differ when an existing store has another hash.
    Raises:
        StoreError: no store.json and create=False; another schema version, kind or config hash (naming both
            hashes and the differing fields when both configs are known).
        EssgridError: the URI cannot be opened.
    """

    def __init__(self, uri: str, config_hash: str | None = None, kind: str | None = None, create: bool = False,
                 config: Mapping[str, Any] | None = None) -> None:
        self.uri = str(uri).rstrip("/")
        self.fs, self.root = U.resolve(self.uri)
        self.root = self.root.rstrip("/")
        self.shards_dir = f"{self.root}/shards"
        if config is not None and config_hash is None:
            config_hash = hash_config(config)
        info = self._read_json(f"{self.root}/store.json")
        if info is None:
            if not create:
                raise StoreError(f"{self.uri}: not a slice store (no store.json); create it with create=True")
            if config_hash is None:
                raise StoreError(f"{self.uri}: creating a slice store needs a config_hash (or config)")
            info = {"schema_version": SCHEMA_VERSION, "kind": kind or "slices", "config_hash": config_hash,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if config is not None:
                info["config"] = _plain(config)
            self.fs.create_dir(self.shards_dir, recursive=True)
            self._write_atomic(f"{self.root}/store.json", json.dumps(info, indent=2, sort_keys=True).encode())
            log.info("%s: created slice store kind=%s config_hash=%s", self.uri, info["kind"], config_hash)
        else:
            self._check_info(info, config_hash, kind, config)
        self.info: dict[str, Any] = info
        self.config_hash: str = info["config_hash"]
        self.kind: str = info["kind"]

    # -- store.json -------------------------------------------------------------------------------------------

    def _check_info(self, info: dict, config_hash: str | None, kind: str | None,
                    config: Mapping[str, Any] | None) -> None:
        where = f"{self.uri}/store.json"
        for key in ("schema_version", "kind", "config_hash"):
            if key not in info:
                raise StoreError(f"{where}: field {key!r} missing")
        if info["schema_version"] != SCHEMA_VERSION:
            raise StoreError(f"{where}: schema_version {info['schema_version']!r}; this code reads "
                             f"{SCHEMA_VERSION}")
        if kind is not None and info["kind"] != kind:
            raise StoreError(f"{where}: a {info['kind']!r} store where a {kind!r} store is expected")
        if config_hash is not None and info["config_hash"] != config_hash:
            msg = (f"{where}: written with config_hash {info['config_hash']}, opened with {config_hash}; "
                   f"delete the store or use the config it was written with")
            if config is not None and isinstance(info.get("config"), Mapping):
                diffs = diff_config(info["config"], config)
                msg += "; differing fields: " + (", ".join(diffs) if diffs else
                                                 "none in the recorded config (the hash covers more)")
            raise StoreError(msg)

    # -- filesystem helpers -----------------------------------------------------------------------------------

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise

    def _read_json(self, path: str) -> Any:
        raw = self._read_bytes(path)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: not valid JSON ({e})") from None

    def _write_atomic(self, path: str, data: bytes | pa.Buffer) -> None:
        """Write to a temporary sibling, then move into place (a rename locally; a copy on object stores)."""
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            self._delete_quietly(tmp)
            raise

    def _delete_quietly(self, path: str) -> None:
        try:
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                self.fs.delete_file(path)
        except OSError as e:  # best effort: a leftover temporary is reported by verify()
            log.warning("%s: could not delete (%s)", path, e)

    def data_path(self, name: str) -> str:
        """Path (inside `self.fs`) of a shard's data file."""
        return f"{self.shards_dir}/{name}{_DATA_SUFFIX}"

    def manifest_path(self, name: str) -> str:
        return f"{self.shards_dir}/{name}{_MANIFEST_SUFFIX}"

    def _list(self) -> tuple[dict[str, _Entry], list[str], list[str]]:
        """(shard name -> entry, temporaries, other files) under shards/."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.shards_dir, allow_not_found=True))
        entries: dict[str, _Entry] = {}
        temps, others = [], []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            base = info.base_name
            if base.startswith(_TMP_PREFIX):
                temps.append(info.path)
            elif base.endswith(_MANIFEST_SUFFIX):
                entries.setdefault(base[:-len(_MANIFEST_SUFFIX)], _Entry()).manifest = info
            elif base.endswith(_DATA_SUFFIX):
                entries.setdefault(base[:-len(_DATA_SUFFIX)], _Entry()).data = info
            else:
                others.append(info.path)
        return entries, sorted(temps), sorted(others)

    # -- commit checks ----------------------------------------------------------------------------------------

    def _manifest(self, name: str) -> tuple[dict | None, str | None]:
        """(manifest, None) or (None, why it is unusable)."""
        raw = self._read_bytes(self.manifest_path(name))
        if raw is None:
            return None, "no manifest (data file without manifest: the writer stopped before committing)"
        try:
            man = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, f"manifest is not valid JSON ({e})"
        missing = [k for k in ("shard", "rows", "sha256", "config_hash", "bytes") if k not in man]
        if missing:
            return None, f"manifest lacks {missing}"
        return man, None

    def _status(self, name: str, entry: _Entry, deep: bool) -> tuple[str, str, dict | None]:
        """("committed" | "torn" | "foreign", reason, manifest)."""
        if entry.manifest is None:
            return "torn", "data file without manifest (the writer stopped before committing)", None
        man, why = self._manifest(name)
        if man is None:
            return "torn", why or "", None
        if man["config_hash"] != self.config_hash:
            return "foreign", (f"manifest {self.manifest_path(name)} says config_hash {man['config_hash']}, "
                               f"the store's is {self.config_hash}"), man
        if man["shard"] != name:
            return "torn", f"manifest names shard {man['shard']!r}", man
        if entry.data is None:
            return "torn", "manifest without data file", man
        if entry.data.size != man["bytes"]:
            return "torn", (f"data file has {entry.data.size} bytes, its manifest says {man['bytes']} "
                            f"(truncated or replaced)"), man
        if deep:
            path = self.data_path(name)
            raw = self._read_bytes(path)
            if raw is None:
                return "torn", "manifest without data file", man
            if hashlib.sha256(raw).hexdigest() != man["sha256"]:
                return "torn", "data file sha256 differs from its manifest", man
            try:
                meta = pq.read_metadata(pa.BufferReader(raw))
            except (pa.ArrowInvalid, OSError) as e:
                return "torn", f"unreadable Parquet ({e})", man
            problem = _schema_problem(meta.schema.to_arrow_schema(), self.config_hash)
            if problem:
                return "foreign", f"{path}: {problem}", man
            if meta.num_rows != man["rows"]:
                return "torn", f"data file has {meta.num_rows} rows, its manifest says {man['rows']}", man
        return "committed", "", man

    def _raise_foreign(self, name: str, reason: str) -> None:
        raise StoreError(f"{self.data_path(name)}: foreign shard in {self.uri}: {reason}")

    def is_committed(self, name: str) -> bool:
        """Whether shard `name` is committed: manifest present, this config hash, size, rows and sha256 all match.

        Raises:
            StoreError: the shard is foreign (another config hash or schema), naming its file.
        """
        _check_name(name)
        entries, _, _ = self._list()
        entry = entries.get(name)
        if entry is None:
            return False
        status, reason, _ = self._status(name, entry, deep=True)
        if status == "foreign":
            self._raise_foreign(name, reason)
        return status == "committed"

    def _uncommitted_problem(self, name: str) -> str | None:
        """For a data file without manifest: why it is foreign (readable, not ours), or None (torn or ours)."""
        try:
            schema = pq.read_schema(self.data_path(name), filesystem=self.fs)
        except (pa.ArrowInvalid, OSError):
            return None
        return _schema_problem(schema, self.config_hash)

    def committed_shards(self) -> list[str]:
        """Names of the committed shards, in natural order (cheap check: manifest, config hash, byte size).

        Data files without a manifest are skipped (torn), unless they are readable Parquet of another schema or
        config hash: those are foreign and raise, so nothing is silently mixed into this store.

        Raises:
            StoreError: a foreign file (another config hash or schema) under shards/, naming it.
        """
        entries, _, _ = self._list()
        names = []
        for name, entry in entries.items():
            status, reason, _ = self._status(name, entry, deep=False)
            if status == "torn" and entry.data is not None and entry.manifest is None:
                problem = self._uncommitted_problem(name)
                status, reason = ("foreign", problem) if problem else (status, reason)
            if status == "foreign":
                self._raise_foreign(name, reason)
            if status == "committed":
                names.append(name)
            else:
                log.debug("%s: shard %s not committed: %s", self.uri, name, reason)
        return sorted(names, key=_natural)

    # -- writing ----------------------------------------------------------------------------------------------

    def write_shard(self, name: str, table: pa.Table) -> dict:
        """Write one shard: data to a temporary name, move it into place, then write its manifest (the commit).

        A failure before the manifest leaves at most a torn file that is never read and is replaced by the next
        write of the same shard.

        Args:
            name: shard name ([A-Za-z0-9][A-Za-z0-9._=+-]*), e.g. a patient id.
            table: rows in `slice_schema(S)` (see `slices_to_table`), every row carrying this store's config_hash.
        Returns:
            The shard manifest written.
        Raises:
            StoreError: the shard is already committed (a second copy is refused), the table's schema or
                config_hash does not match the store.
        """
        _check_name(name)
        if self.is_committed(name):
            raise StoreError(f"{self.data_path(name)}: shard {name!r} is already committed in {self.uri}; "
                             f"refusing to write a second copy")
        self._check_table(name, table)
        physical = to_file_table(table, self.config_hash)
        sink = pa.BufferOutputStream()
        pq.write_table(physical, sink, compression="lz4", use_dictionary=_STRING_COLUMNS,
                       write_statistics=[c for c in physical.schema.names if c not in TENSOR_COLUMNS
                                         and c != "mask_native"])
        buf = sink.getvalue()
        manifest = {"shard": name, "rows": table.num_rows, "sha256": hashlib.sha256(buf).hexdigest(),
                    "config_hash": self.config_hash, "bytes": buf.size}
        self._write_atomic(self.data_path(name), buf)
        self._write_atomic(self.manifest_path(name), json.dumps(manifest, indent=2, sort_keys=True).encode())
        log.debug("%s: committed shard %s (%d rows, %d bytes)", self.uri, name, table.num_rows, buf.size)
        return manifest

    def _check_table(self, name: str, table: pa.Table) -> None:
        if "image" not in table.schema.names or not isinstance(table.schema.field("image").type,
                                                               pa.FixedShapeTensorType):
            raise StoreError(f"shard {name!r}: table has no fixed_shape_tensor 'image' column; build it with "
                             f"slices_to_table")
        size = table.schema.field("image").type.shape[0]
        expected = slice_schema(size)
        if not table.schema.remove_metadata().equals(expected):
            missing = [n for n in expected.names if n not in table.schema.names]
            extra = [n for n in table.schema.names if n not in expected.names]
            raise StoreError(f"shard {name!r}: table schema differs from slice_schema({size}) (missing {missing}, "
                             f"extra {extra}; or types/order); build it with slices_to_table")
        if table.num_rows:
            hashes = pc.unique(table.column("config_hash")).to_pylist()
            if hashes != [self.config_hash]:
                raise StoreError(f"shard {name!r}: rows carry config_hash {hashes}, the store {self.uri} has "
                                 f"{self.config_hash}")

    # -- reading ----------------------------------------------------------------------------------------------

    def read(self, columns: Sequence[str] | None = None, filter: pc.Expression | None = None,
             **where: Any) -> pa.Table:
        """Read committed shards only, with column and row filters.

        Args:
            columns: columns to read (default all).
            filter: a pyarrow.compute expression, e.g. `pc.field("has_liver")`.
            **where: simple equality filters ANDed with `filter`: `split="test"`, `patient_id=["1", "5"]` (a list,
                tuple or set means "is in").
        Returns:
            A table in the logical schema (tensor columns as fixed_shape_tensor), one chunk per shard or more. A
            store with no committed shard gives an empty table in `SLICE_SCHEMA` (size 256: it knows no other).
        Raises:
            StoreError: an unknown column, or a committed shard whose file has another schema or config hash
                (naming the file).
        """
        names = self.committed_shards()
        if columns is not None:
            unknown = [c for c in columns if c not in SLICE_COLUMNS]
            if unknown:
                raise StoreError(f"{self.uri}: unknown columns {unknown}; columns are {list(SLICE_COLUMNS)}")
        expr = filter
        for key, value in where.items():
            if key not in SLICE_COLUMNS or key in TENSOR_COLUMNS:
                raise StoreError(f"{self.uri}: cannot filter on {key!r}; filterable columns are "
                                 f"{[c for c in SLICE_COLUMNS if c not in TENSOR_COLUMNS]}")
            cond = (pc.field(key).isin(list(value)) if isinstance(value, (list, tuple, set, frozenset))
                    else pc.field(key) == value)
            expr = cond if expr is None else expr & cond
        if not names:
            schema = SLICE_SCHEMA if columns is None else pa.schema([SLICE_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        dataset = ds.dataset([self.data_path(n) for n in names], filesystem=self.fs, format="parquet")
        for frag in dataset.get_fragments():
            problem = _schema_problem(frag.physical_schema, self.config_hash)
            if problem:
                raise StoreError(f"{frag.path}: foreign file in {self.uri}: {problem}")
            if not frag.physical_schema.remove_metadata().equals(dataset.schema.remove_metadata()):
                raise StoreError(f"{frag.path}: slice size differs from the other shards of {self.uri}")
        table = dataset.to_table(columns=list(columns) if columns is not None else None, filter=expr)
        return to_logical_table(table)

    # -- maintenance ------------------------------------------------------------------------------------------

    def verify(self) -> StoreReport:
        """Check every file under shards/ (sha256 and rows included) and report; changes nothing."""
        report = StoreReport(self.uri)
        entries, temps, others = self._list()
        report.temporaries = temps
        for path in others:
            report.foreign[path] = "not a shard data or manifest file"
        for name in sorted(entries, key=_natural):
            entry = entries[name]
            status, reason, man = self._status(name, entry, deep=True)
            if status == "torn" and entry.data is not None and entry.manifest is None:
                problem = self._uncommitted_problem(name)  # nobody committed it: foreign if readable, not ours
                status, reason = ("foreign", problem) if problem else (status, reason)
            if status == "committed":
                report.committed.append(name)
                report.rows += int(man["rows"]) if man else 0
            elif status == "foreign":
                report.foreign[self.data_path(name)] = reason
            else:
                report.torn[name] = reason
        if not report.ok:
            log.warning("%s", report.summary())
        return report

    def discard_uncommitted(self, temporaries: bool = True) -> list[str]:
        """Delete torn shards (data and manifest) and, unless told not to, temporaries. Foreign files are kept.

        Call only while no writer is running on this store (its temporary files would be deleted).

        Returns:
            The paths deleted.
        """
        report = self.verify()
        removed = []
        for name in report.torn:
            for path in (self.data_path(name), self.manifest_path(name)):
                if self.fs.get_file_info(path).type == pafs.FileType.File:
                    self.fs.delete_file(path)
                    removed.append(path)
        if temporaries:
            for path in report.temporaries:
                self._delete_quietly(path)
                removed.append(path)
        if report.foreign:
            log.warning("%s: foreign files kept (remove them by hand): %s", self.uri, ", ".join(report.foreign))
        if removed:
            log.info("%s: discarded %d uncommitted files", self.uri, len(removed))
        return removed

    repair = discard_uncommitted

    def merge_manifests(self) -> dict:
        """Merge the committed shards' manifests into <store>/manifest.json (the driver's job, after a stage).

        Returns:
            {"schema_version", "kind", "config_hash", "shards": [manifest, ...], "rows", "bytes"}.
        """
        shards = []
        for name in self.committed_shards():
            man, why = self._manifest(name)
            assert man is not None, why  # committed_shards just read it
            shards.append(man)
        merged = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "config_hash": self.config_hash,
                  "shards": shards, "rows": sum(int(m["rows"]) for m in shards),
                  "bytes": sum(int(m["bytes"]) for m in shards)}
        self._write_atomic(f"{self.root}/manifest.json", json.dumps(merged, indent=2, sort_keys=True).encode())
        return merged


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _SHARD_NAME.match(name) or name.endswith(".manifest"):
        raise StoreError(f"shard name {name!r}: expected letters, digits and ._=+- (not starting with . or -)")


def read_store(uri: str, columns: Sequence[str] | None = None, filter: pc.Expression | None = None,
               **where: Any) -> pa.Table:
    """Read an existing store's committed shards (see `SliceStore.read`)."""
    return SliceStore(uri).read(columns=columns, filter=filter, **where)
