"""Reading and writing bcfeat model files as data: weights and plain values, never code.

Every file bcfeat writes for a trained model (the detector, the autoencoder, the
one-file AE-CFE extractor, the oracle) is a ``torch.save`` of one dict whose
``"format"`` entry names its **kind and version**, e.g. ``"bcfeat.detector/1"``,
beside the model's configuration as plain JSON-able values and its weights as
tensors. :func:`load_model_file` is the only way bcfeat opens such a file:

1. the file must be a complete zip archive (PyTorch's format) whose every member
   passes its CRC-32 check, so a truncated or bit-flipped file is refused before
   anything is unpickled;
2. it is unpickled with ``torch.load(weights_only=True)``, whose unpickler only
   builds tensors, numbers, strings and containers: a file with code in it (any
   other Python object) is refused **without running that code**;
3. its kind and version must be the ones asked for, and every required part present.

Each refusal raises :class:`ModelFileError`, one line naming the file and the problem
(and, for files that only an unsafe load could open, how to re-create them).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# How each kind of file is (re)made, for the message on a file that cannot be opened safely.
REMAKE: dict[str, str] = {
    "detector": "re-run the detector stage: `make pipeline RUN_ARGS=\"--only 01_detector\"` "
                "(notebooks/01_detector.py) or `python -m bcfeat.runner.detector`",
    "autoencoder": "re-run the autoencoder stage: `make pipeline RUN_ARGS=\"--only 02_autoencoder\"` "
                   "(notebooks/02_autoencoder.py)",
    "aecfe": "re-run the autoencoder stage, which writes artifacts/<profile>/aecfe_model*.pt: "
             "`make pipeline RUN_ARGS=\"--only 02_autoencoder\"` (notebooks/02_autoencoder.py)",
    "oracle": "re-run the oracle stage: `make pipeline RUN_ARGS=\"--only 04_oracle\"` (notebooks/04_oracle.py)",
    "crosslab": "re-run the cross-lab stage: `make pipeline RUN_ARGS=\"--only 07_crosslab\"` "
                "(notebooks/07_crosslab.py), or `bcfeat train-classifier` for a classifier file",
    "ssl_encoder": "train it again: `python -m bcfeat.runner.train ssl --data CROPS.pt --checkpoint FILE`",
}


class ModelFileError(ValueError):
    """A model file was refused: wrong kind, damaged, incomplete or holding code.

    The message is one line naming the file and what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, unsafe: bool = False):
        self.path = Path(path)
        self.problem = problem
        self.unsafe = unsafe  # True: refused because unpickling it would have to run code
        super().__init__(f"model file {self.path}: {problem}")


def format_name(kind: str, version: int) -> str:
    """The ``"format"`` entry of a file of this kind and version.

    >>> format_name("detector", 1)
    'bcfeat.detector/1'
    """
    return f"bcfeat.{kind}/{int(version)}"


def parse_format(value: Any) -> tuple[str, int] | None:
    """``"bcfeat.detector/1"`` -> ``("detector", 1)``; None for anything else.

    >>> parse_format("bcfeat.aecfe/1"), parse_format("other")
    (('aecfe', 1), None)
    """
    if not isinstance(value, str) or not value.startswith("bcfeat.") or "/" not in value:
        return None
    kind, _, version = value[len("bcfeat."):].partition("/")
    return (kind, int(version)) if version.isdigit() else None


def _check_archive(path: Path, data: bytes | None = None) -> None:
    """Refuse a file that is not a complete, undamaged zip archive (PyTorch's file format).

    ``data``: the file's bytes when they were read already (then ``path`` only names the file)."""
    if data is None and path.is_dir():
        raise ModelFileError(path, "is a folder, not a file")
    size = path.stat().st_size if data is None else len(data)
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    source = path if data is None else io.BytesIO(data)
    if not zipfile.is_zipfile(source):
        raise ModelFileError(path, "is damaged or not a model file: not a complete PyTorch zip archive "
                                   "(truncated, or written by another program)")
    if data is None:  # the end-of-archive record: one disk, as PyTorch writes it
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 65_557))
            tail = handle.read()
    else:
        tail = data[max(0, size - 65_557):]
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        raise ModelFileError(path, "is damaged or not a model file: no end-of-archive record")
    disk, central_disk = struct.unpack_from("<HH", tail, end + 4)
    if disk or central_disk:
        raise ModelFileError(path, f"is damaged: its end-of-archive record names disk {disk}/{central_disk} "
                                   "(a PyTorch file is one disk)")
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.flag_bits & 0x1:
                    raise ModelFileError(path, f"is damaged or tampered with: its part {info.filename!r} is "
                                               "marked encrypted (PyTorch never encrypts)")
                if info.compress_type != zipfile.ZIP_STORED:
                    # a compressed part can expand without limit (1 GiB of zeros in 1 MB)
                    raise ModelFileError(path, f"is not a plain PyTorch file: its part {info.filename!r} is "
                                               "compressed (PyTorch stores parts uncompressed)")
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for a damaged archive
        detail = str(exc).split("\n")[0][:200]
        raise ModelFileError(path, f"is damaged (its archive cannot be read: {type(exc).__name__}: {detail})") from None
    if bad is not None:
        raise ModelFileError(path, f"is damaged (checksum error in its part {bad!r}; bit-flipped or overwritten)")


def read_payload(path: str | os.PathLike, map_location: Any = "cpu", data: bytes | None = None) -> Any:
    """Unpickle a model file safely, without checking its kind (see :func:`load_model_file`).

    ``data``: the file's bytes when the caller read them already (:func:`bcfeat.extractors.open_extractor`
    reads a file once, for its checksum and its payload); ``path`` then only names the file in errors.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ModelFileError
        The file is damaged, or holds anything but weights and plain values.
    """
    import torch

    path = Path(path)
    if data is None and not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    _check_archive(path, data)
    try:
        payload = torch.load(path if data is None else io.BytesIO(data), map_location=map_location,
                             weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses every global it does not know, before calling it; torch's message
        # carries terminal escape codes (bold), which a one-line error does not want
        # name the refused global; torch's own advice ("can still be loaded if you trust it") is
        # wrong for a file someone sent a lab, so it is not repeated
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        found = re.search(r"(?:Unsupported global: )?GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand \d+", text)
        detail = f"refused: {found.group(1) if found and found.groups() else (found.group(0) if found else 'an unknown object')}"
        raise ModelFileError(path, "holds Python objects other than weights and plain values (possibly code); "
                                   f"it was not opened ({detail})", unsafe=True) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        detail = str(exc).split("\n")[0][:200]
        raise ModelFileError(path, f"is damaged ({type(exc).__name__}: {detail})") from None
    _check_tensors(path, payload)
    return payload


# Every tensor of a model file together; the study's largest file (the detector) holds ~45 M values.
MAX_TENSOR_ELEMENTS = 200_000_000

# The tensor types PyTorch's pickle names (``torch.<Name>Storage``) that read_payload_arrays turns
# into numpy arrays of this dtype (little-endian, as PyTorch writes them on every machine here).
_STORAGE_DTYPES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}


class _NotPlainData(Exception):
    """The pickle names a global :class:`_ArrayUnpickler` does not read (torch decides then)."""


class _StorageType:
    def __init__(self, name: str):
        import numpy as np

        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_array(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=(), metadata=None):
    """``torch._utils._rebuild_tensor_v2`` for numpy: a copy of the strided view, checked to lie
    inside the stored values (a view larger than its storage is refused, as :func:`_check_tensors` does)."""
    import numpy as np

    size, stride = tuple(int(n) for n in size), tuple(int(st) for st in stride)
    if len(size) != len(stride) or any(n < 0 for n in size) or any(st < 0 for st in stride):
        raise ValueError(f"a tensor of shape {size} with strides {stride}")
    count = int(np.prod(size)) if size else 1
    if count == 0:
        return np.zeros(size, storage.dtype)
    reach = int(storage_offset) + 1 + sum((n - 1) * st for n, st in zip(size, stride))
    if storage_offset < 0 or reach > len(storage) or any(st == 0 and n > 1 for n, st in zip(size, stride)):
        raise ValueError(f"tensor of shape {size} claims more values than the {len(storage)} stored for it")
    view = np.lib.stride_tricks.as_strided(storage[int(storage_offset):], shape=size,
                                           strides=[st * storage.itemsize for st in stride])
    return np.array(view)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a PyTorch file's ``data.pkl`` with numpy arrays in place of tensors; any global
    other than an ordered dict, a tensor and a storage type stops it *before* being looked up."""

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str):
        super().__init__(handle)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_array
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _NotPlainData(f"{module}.{name}")

    def persistent_load(self, pid):
        import numpy as np

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise _NotPlainData(f"persistent id {str(pid)[:60]}")
        raw = self.archive.read(f"{self.prefix}/data/{pid[2]}")
        values = np.frombuffer(raw, dtype=pid[1].dtype, count=len(raw) // pid[1].dtype.itemsize)
        return values[:int(pid[4])]


def read_payload_arrays(path: str | os.PathLike, data: bytes | None = None) -> Any:
    """:func:`read_payload` without PyTorch: tensors come back as numpy arrays (copies).

    Reads files of weights and plain values as PyTorch writes them (its zip format, tensors of
    the usual dtypes, little-endian); a file naming any other Python object, or one this reader
    does not know, is handed to :func:`read_payload` (so ``torch.load(weights_only=True)`` decides,
    and refuses code without running it). Nothing named in the file is called except the
    ordered dict and this module's tensor rebuild. The same checks as :func:`read_payload`:
    archive complete and every CRC-32 right, no view larger than its storage, at most
    :data:`MAX_TENSOR_ELEMENTS` values. ``data``: the file's bytes when read already (as for
    :func:`read_payload`).
    """
    path = Path(path)
    if data is None and not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    _check_archive(path, data)
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise _NotPlainData("archive layout")
            prefix = pickles[0].split("/")[0]
            order = f"{prefix}/byteorder"
            if order in archive.namelist() and archive.read(order).strip() != b"little":
                raise _NotPlainData("byte order")
            with archive.open(pickles[0]) as handle:
                payload = _ArrayUnpickler(handle, archive, prefix).load()
    except _NotPlainData:
        return read_payload(path, data=data)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        detail = str(exc).split("\n")[0][:200]
        raise ModelFileError(path, f"is damaged ({type(exc).__name__}: {detail})") from None
    _check_array_count(path, payload)
    return payload


def arrays_as_tensors(value: Any) -> Any:
    """A payload of :func:`read_payload_arrays` (or a part of it) with its numpy arrays as torch
    tensors, for the code that builds torch modules from it; tensors and plain values unchanged."""
    import numpy as np

    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(value)
    if isinstance(value, dict):
        out = type(value)((k, arrays_as_tensors(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a state_dict's per-module versions
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(arrays_as_tensors(v) for v in value)
    return value


def _check_array_count(path: Path, payload: Any) -> int:
    """The number of values of every array of a payload; more than :data:`MAX_TENSOR_ELEMENTS` is refused."""
    import numpy as np

    if isinstance(payload, np.ndarray):
        return int(payload.size)
    if isinstance(payload, dict):
        total = sum(_check_array_count(path, v) for v in payload.values())
    elif isinstance(payload, (list, tuple)):
        total = sum(_check_array_count(path, v) for v in payload)
    else:
        return 0
    if total > MAX_TENSOR_ELEMENTS:
        raise ModelFileError(path, f"holds {total:,} values, more than any bcfeat model ({MAX_TENSOR_ELEMENTS:,})")
    return total


def _check_tensors(path: Path, payload: Any, where: str = "") -> int:
    """Refuse tensors that are views larger than the bytes stored for them (a zero-stride 40000 x
    40000 view of one number, which numpy would then materialise), and files whose tensors hold
    more than :data:`MAX_TENSOR_ELEMENTS` values together. Returns the number of values."""
    import torch

    total = 0
    if isinstance(payload, torch.Tensor):
        t = payload
        if t.numel() > 0:
            reach = t.storage_offset() + 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
            stored = t.untyped_storage().nbytes() // max(t.element_size(), 1)
            if any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride())) or reach > stored or t.numel() > stored:
                raise ModelFileError(path, f"is damaged or tampered with: tensor {where or '(top)'} of shape "
                                           f"{tuple(t.shape)} claims more values than the {stored} stored for it")
        total = t.numel()
    elif isinstance(payload, dict):
        total = sum(_check_tensors(path, v, f"{where}.{k}" if where else str(k)) for k, v in payload.items())
    elif isinstance(payload, (list, tuple)):
        total = sum(_check_tensors(path, v, f"{where}[{i}]") for i, v in enumerate(payload))
    if not where and total > MAX_TENSOR_ELEMENTS:
        raise ModelFileError(path, f"holds {total:,} values, more than any bcfeat model ({MAX_TENSOR_ELEMENTS:,})")
    return total


def load_model_file(path: str | os.PathLike, kind: str, versions: Iterable[int] = (1,),
                    required: Iterable[str] = ("config", "state_dict"), map_location: Any = "cpu",
                    legacy: dict[str, Any] | None = None, payload: Any = None, arrays: bool = False) -> dict[str, Any]:
    """Open a model file of one kind safely and return its payload dict.

    Parameters
    ----------
    path : path-like
    kind : str
        ``"detector"``, ``"autoencoder"``, ``"aecfe"`` or ``"oracle"``.
    versions : iterable of int
        Versions of that kind this code can read.
    required : iterable of str
        Entries the payload must have.
    map_location : str or torch.device
        Where tensors are loaded.
    legacy : dict, optional
        ``{key: value}`` that identifies a file of this kind written before it had a
        ``"format"`` entry (the oracle's ``{"kind": "oracle"}``), read as version 0.
    payload : optional
        What :func:`read_payload` returned for ``path`` already: it is checked, not read again.
    arrays : bool
        Read with :func:`read_payload_arrays` (numpy arrays in place of tensors, without
        importing PyTorch when the file allows it).

    Returns
    -------
    dict
        The payload: ``format``, configuration (plain values) and weights (tensors).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ModelFileError
        Damaged, of another kind or version, incomplete, or holding code.

    Examples
    --------
    >>> import tempfile, torch
    >>> p = Path(tempfile.mkdtemp()) / "m.pt"
    >>> torch.save({"format": "bcfeat.detector/1", "config": {}, "state_dict": {}}, p)
    >>> sorted(load_model_file(p, "detector"))
    ['config', 'format', 'state_dict']
    >>> load_model_file(p, "oracle")
    Traceback (most recent call last):
    ...
    bcfeat.model_files.ModelFileError: model file ...m.pt: is a bcfeat detector file, not a bcfeat oracle file
    """
    path = Path(path)
    try:
        if payload is None:
            payload = read_payload_arrays(path) if arrays else read_payload(path, map_location)
    except ModelFileError as error:
        if error.unsafe and kind in REMAKE:
            raise ModelFileError(path, f"{error.problem}. If it is an older bcfeat file, {REMAKE[kind]}") from None
        raise
    if not isinstance(payload, dict):
        raise ModelFileError(path, f"is not a bcfeat {kind} file (it holds a {type(payload).__name__}, not a dict)")
    found = parse_format(payload.get("format"))
    if found is None and legacy and all(payload.get(k) == v for k, v in legacy.items()):
        found = (kind, 0)
    if found is None:
        raise ModelFileError(path, f"is not a bcfeat {kind} file (no bcfeat format entry; "
                                   f"expected {format_name(kind, max(versions))!r})")
    if found[0] != kind:
        raise ModelFileError(path, f"is a bcfeat {found[0]} file, not a bcfeat {kind} file")
    allowed = set(versions) | ({0} if legacy else set())
    if found[1] not in allowed:
        raise ModelFileError(path, f"is a {kind} file of version {found[1]}, this bcfeat reads versions "
                                   f"{sorted(allowed)}; {REMAKE.get(kind, 'write it again with this bcfeat')}")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ModelFileError(path, f"is incomplete: its {', '.join(map(repr, missing))} part(s) are missing")
    return payload


def build_from_payload(path: str | os.PathLike, what: str, build: Any) -> Any:
    """``build()`` with its config and weight errors turned into one-line :class:`ModelFileError`.

    ``build`` rebuilds a model from a payload (config -> module, ``load_state_dict``); a
    config with unknown keys or weights of the wrong shape mean the file does not fit
    this bcfeat's model.
    """
    try:
        return build()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        detail = str(exc).split("\n")[0][:300]
        raise ModelFileError(path, f"its {what} does not fit this bcfeat ({type(exc).__name__}: {detail})") from None
