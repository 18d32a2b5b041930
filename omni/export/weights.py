"""weights.safetensors written a tensor or a group at a time, so export never holds the model on the host.

`safetensors.numpy.save_file` takes every tensor at once as host arrays: with the params that
means a full host copy of the model, plus the serialized file it builds in memory before writing
(twice the model). The format is simple enough to stream (https://github.com/huggingface/safetensors,
"Format"): an 8-byte little-endian header length N, N bytes of JSON header (name -> dtype, shape,
[begin, end) byte offsets into the data; "__metadata__" -> strings), padded with spaces to a
multiple of 8, then the tensors' bytes, back to back. The header needs only shapes and dtypes,
so it is written first; then each tensor is fetched from the devices, written and dropped. The
file reads back with safetensors' own `load_file` (tests/test_export.py compares every tensor).
"""
from __future__ import annotations

import json
import math
import struct

import jax
import numpy as np

SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
                      np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.int8): "I8",
                      np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def safetensors_header(tensors: dict, metadata: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    """tensors: name -> anything with .shape and .dtype. Returns (the header as written, with its
    length prefix and padding; the names in the order their bytes follow it)."""
    order = sorted(tensors)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        dtype = np.dtype(tensors[name].dtype)
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"parameter '{name}' is {dtype}, which this writer does not store")
        size = math.prod(tensors[name].shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": [int(d) for d in tensors[name].shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(file, tensors: dict, metadata: dict[str, str] | None = None, groups=None) -> int:
    """Write `tensors` to the open binary `file`. Returns the bytes written.

    Either `tensors` holds the values (name -> jax.Array on any devices, or numpy), fetched to
    the host one at a time; or it holds only shapes and dtypes (ShapeDtypeStructs), and `groups`
    yields the values as {name: host array} dicts, in sorted name order, a group at a time
    (omni.run.load.OpenedRun.param_groups)."""
    head, order = safetensors_header(tensors, metadata)
    file.write(head)
    written = len(head)
    if groups is None:
        groups = ({name: tensors[name]} for name in order)
    expected = iter(order)
    for group in groups:
        for name, value in group.items():
            if name != next(expected, None):
                raise ValueError(f"tensor '{name}' arrived out of the header's order")
            value = np.asarray(jax.device_get(value), order="C")  # 0-d stays 0-d
            if value.shape != tuple(tensors[name].shape) or value.dtype != np.dtype(tensors[name].dtype):
                raise ValueError(f"tensor '{name}' is {value.dtype}{list(value.shape)}, the header says "
                                 f"{np.dtype(tensors[name].dtype)}{list(tensors[name].shape)}")
            file.write(value.reshape(-1).view(np.uint8))  # its buffer, without a second copy
            written += value.nbytes
        group = value = None  # dropped before the next group is read
    if next(expected, None) is not None:
        raise ValueError("the groups ended before every tensor in the header was written")
    return written
