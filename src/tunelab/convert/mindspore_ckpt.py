"""MindSpore `.ckpt` files read and written tensor by tensor, without MindSpore.

The format is documented by its schema, `mindspore/ccsrc/utils/checkpoint.proto` (mindspore-ai/mindspore,
proto2): a file is a sequence of serialized `Checkpoint` messages, each holding `repeated Value value = 1`,
a Value being `{string tag = 1; TensorProto tensor = 2}` and a TensorProto `{repeated int64 dims = 1;
string tensor_type = 2; bytes tensor_content = 3}` (raw little-endian C-order bytes). Protobuf concatenation
is merging, so the file is also one `Checkpoint`. `mindspore.save_checkpoint`
(`mindspore/python/mindspore/train/serialization.py`, `_write_parameter_bytes_data`) writes one message per
parameter and splits a parameter larger than 512 MiB into consecutive Values with the same tag and the full
dims, each carrying the next slice of bytes (a protobuf message must stay under 2 GiB); its loader joins them.
We do the same, so an 8B model passes through one tensor at a time. Encrypted checkpoints (`enc_key`) and
MindSpore's map/huge-parameter variants are not read (an error says so).

The tests check this implementation against `mindspore.save_checkpoint`/`load_checkpoint` both ways when
MindSpore is installed (the optional `mindspore` extra).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tunelab.errors import TunelabError

SLICE_BYTES = 512 * 1024 * 1024  # serialization.py: SLICE_SIZE = 512 * 1024 (KB)

# tensor_type strings as MindSpore writes them (str(mstype)) and the torch dtype names they correspond to
MS_TO_TORCH = {"Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16", "Float64": "float64",
               "Int8": "int8", "UInt8": "uint8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
               "Bool": "bool"}
TORCH_TO_MS = {v: k for k, v in MS_TO_TORCH.items()}


# --- protobuf wire format (only what checkpoint.proto uses: varints and length-delimited fields) ----------

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 as two's complement, ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_header(name: str, dims: tuple[int, ...], tensor_type: str, content_len: int) -> bytes:
    """The bytes of one serialized `Checkpoint` holding one Value, up to its tensor_content, which follows
    (written straight from the tensor: no copy of the data). proto2 `repeated int64 dims` is unpacked, as
    protobuf writes it."""
    tensor = b"".join(_varint(1 << 3 | 0) + _varint(d) for d in dims) + _field(2, tensor_type.encode())
    tensor += _varint(3 << 3 | 2) + _varint(content_len)
    tensor_len = len(tensor) + content_len
    value = _field(1, name.encode("utf-8")) + _varint(2 << 3 | 2) + _varint(tensor_len) + tensor
    return _varint(1 << 3 | 2) + _varint(len(value) + content_len) + value


def _fields(buf) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: an int for varints, a memoryview for bytes."""
    pos = 0
    view = memoryview(buf)
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            value, pos = view[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = view[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = view[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _parse_value(buf) -> tuple[str, tuple[int, ...], str, memoryview]:
    tag, tensor = None, None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            tag = bytes(value).decode("utf-8")
        elif number == 2 and wire == 2:
            tensor = value
        elif number == 3:
            raise ValueError("a MapParameter (maptensor) value; only dense tensors are supported")
    if tag is None or tensor is None:
        raise ValueError("a Value without tag or tensor")
    dims: list[int] = []
    ttype, content = None, memoryview(b"")
    for number, wire, value in _fields(tensor):
        if number == 1 and wire == 0:
            dims.append(value if value < 1 << 63 else value - (1 << 64))
        elif number == 1 and wire == 2:  # packed encoding, also valid proto2 on the wire
            pos = 0
            while pos < len(value):
                d, pos = _read_varint(value, pos)
                dims.append(d)
        elif number == 2:
            ttype = bytes(value).decode()
        elif number == 3:
            content = value
    if ttype is None:
        raise ValueError(f"tensor '{tag}' has no tensor_type")
    return tag, tuple(dims), ttype, content


# --- reading ---------------------------------------------------------------------------------------------

class CkptTensor:
    """A parameter read from a .ckpt: name, shape, MindSpore dtype name and its raw bytes."""

    __slots__ = ("name", "shape", "ms_dtype", "data")

    def __init__(self, name: str, shape: tuple[int, ...], ms_dtype: str, data: bytearray):
        self.name, self.shape, self.ms_dtype, self.data = name, shape, ms_dtype, data

    def to_torch(self):
        """The tensor as torch (bfloat16 kept as bfloat16: numpy has no such type)."""
        import torch
        if self.ms_dtype not in MS_TO_TORCH:
            raise TunelabError(f"parameter '{self.name}' has MindSpore type {self.ms_dtype}, which tunelab cannot "
                               f"convert (known: {', '.join(MS_TO_TORCH)})")
        dtype = getattr(torch, MS_TO_TORCH[self.ms_dtype])
        if not self.data:
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(self.data, dtype=dtype).reshape(self.shape)  # shares the bytearray


def _raw_messages(f: BinaryIO, path: Path) -> Iterator[bytes]:
    """The top-level `value` fields of the file, one at a time (the reader never holds more than one)."""
    while True:
        head = f.read(1)
        if not head:
            return
        key = head[0]
        if key != (1 << 3 | 2):
            raise TunelabError(f"not a MindSpore checkpoint (byte {f.tell() - 1} is 0x{key:02x}, expected a "
                               f"Checkpoint.value field; an encrypted .ckpt must be decrypted with MindSpore first)",
                               file=path)
        length = shift = 0
        while True:
            b = f.read(1)
            if not b:
                raise TunelabError("truncated checkpoint file", file=path)
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        body = f.read(length)
        if len(body) != length:
            raise TunelabError(f"truncated checkpoint file: a value needs {length} bytes, {len(body)} are left",
                               file=path)
        yield body


def iter_ckpt(path: str | Path, progress=None) -> Iterator[CkptTensor]:
    """The parameters of a .ckpt in file order, slices joined; `progress(bytes_read)` is called as it reads."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError("checkpoint file not found", file=path)
    pending: list[tuple[str, tuple[int, ...], str]] = []
    data = bytearray()  # the slices of the current parameter, joined as they come

    def finish() -> CkptTensor:
        nonlocal data
        name, dims, ttype = pending[0]
        expected = int(np.prod(dims, dtype=np.int64)) * _itemsize(ttype, name, path) if dims else None
        if expected is not None and len(data) != expected:
            raise TunelabError(f"parameter '{name}' has {len(data)} bytes, its shape {list(dims)} of {ttype} "
                               f"needs {expected}", file=path)
        pending.clear()
        done, data = data, bytearray()
        return CkptTensor(name, dims, ttype, done)

    with open(path, "rb") as f:
        for body in _raw_messages(f, path):
            try:
                tag, dims, ttype, content = _parse_value(body)
            except ValueError as e:
                raise TunelabError(f"malformed checkpoint value near byte {f.tell()}: {e}", file=path) from e
            if pending and (pending[0][0] != tag):
                yield finish()
            if not pending:
                pending.append((tag, dims, ttype))
            data += content
            if progress:
                progress(f.tell())
        if pending:
            yield finish()


def _itemsize(ttype: str, name: str, path: Path) -> int:
    if ttype == "BFloat16":
        return 2
    if ttype in MS_TO_TORCH:
        return np.dtype(MS_TO_TORCH[ttype]).itemsize
    raise TunelabError(f"parameter '{name}' has MindSpore type {ttype}, which tunelab cannot convert", file=path)


# --- writing ---------------------------------------------------------------------------------------------

def write_ckpt(path: str | Path, tensors: Iterable[tuple[str, object]]) -> int:
    """Write (name, torch tensor) pairs as they come into a .ckpt, atomically (a .tmp renamed into place);
    returns the number of parameters. Names must be unique."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    seen: set[str] = set()
    try:
        with open(tmp, "wb") as f:
            for name, tensor in tensors:
                if name in seen:
                    raise TunelabError(f"parameter '{name}' given twice", file=path)
                seen.add(name)
                dtype = str(tensor.dtype).removeprefix("torch.")
                if dtype not in TORCH_TO_MS:
                    raise TunelabError(f"parameter '{name}' has dtype {dtype}, which a .ckpt cannot hold here")
                t = tensor.detach().contiguous().cpu()
                raw = memoryview(t.view(-1).view(_same_width_int(t)).numpy()).cast("B") if t.numel() else b""
                dims = tuple(t.shape)
                for start in range(0, max(len(raw), 1), SLICE_BYTES):
                    piece = raw[start:start + SLICE_BYTES]
                    f.write(_value_header(name, dims, TORCH_TO_MS[dtype], len(piece)))
                    f.write(piece)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(seen)


def _same_width_int(t):
    """An integer dtype of the tensor's width, to take its bytes through numpy (which lacks bfloat16)."""
    import torch
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
