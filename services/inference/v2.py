"""Open Inference Protocol v2 (KServe, Triton, MLServer): what its REST and gRPC forms share — the model as
v2 describes it, the checks of the input tensor, BYTES framing and the output encoding. The HTTP framing lives
in services/inference/http_api.py, the gRPC one in services/inference/v2_servicer.py; both call the same
Classifier as classforge's own Classify.

The model, as v2 metadata describes it (read from the model server's serving signature):

    input   image_bytes            BYTES  [-1]           encoded images: JPEG, PNG, GIF, BMP or WebP
    outputs probabilities_<task>   FP32   [-1, classes]
            class_ids_<task>       INT64  [-1]

An input shape of [batch] or [batch, 1] is accepted. Versions are decimal strings; none means the version
that answers classforge's Classify (the serving label).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np

from services.common import serving_signature as contract
from services.common.errors import InvalidArgument, shown
from services.inference import tfs_api as tfs
from services.inference.classifier import ModelMetadata
from services.inference.model_server_client import TensorInfo

BYTES = "BYTES"
PLATFORM = "tensorflow_savedmodel"  # Triton's name for a TensorFlow SavedModel
SERVER_NAME = "classforge-inference"
EXTENSIONS = ["binary_tensor_data"]  # Triton's binary data extension, on REST

_TF_DATATYPES = {
    tfs.types_pb2.DT_FLOAT: "FP32", tfs.types_pb2.DT_DOUBLE: "FP64", tfs.types_pb2.DT_HALF: "FP16",
    tfs.types_pb2.DT_BFLOAT16: "BF16", tfs.types_pb2.DT_INT8: "INT8", tfs.types_pb2.DT_INT16: "INT16",
    tfs.types_pb2.DT_INT32: "INT32", tfs.types_pb2.DT_INT64: "INT64", tfs.types_pb2.DT_UINT8: "UINT8",
    tfs.types_pb2.DT_UINT16: "UINT16", tfs.types_pb2.DT_UINT32: "UINT32", tfs.types_pb2.DT_UINT64: "UINT64",
    tfs.types_pb2.DT_BOOL: "BOOL", tfs.types_pb2.DT_STRING: BYTES,
}
_NUMPY_DATATYPES = {
    np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}


def server_version() -> str:
    try:
        return importlib.metadata.version("classforge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_version(text: str, field: str = "model_version") -> int:
    """A v2 model version: '' (the serving version) or a positive decimal integer."""
    if not text:
        return 0
    if not text.isdigit() or int(text) == 0:
        raise InvalidArgument(field, f"{shown(text)} is not a version number (a positive integer)")
    return int(text)


# ---------------------------------------------------------------------- metadata

def _tensor(name: str, info: TensorInfo) -> dict:
    datatype = _TF_DATATYPES.get(info.dtype) or tfs.types_pb2.DataType.Name(info.dtype)
    return {"name": name, "datatype": datatype, "shape": list(info.shape) if info.shape is not None else [-1]}


def metadata(meta: ModelMetadata) -> dict:
    """The model metadata object, as JSON (REST) and as the fields of ModelMetadataResponse (gRPC)."""
    return {"name": meta.model, "versions": [str(v) for v in meta.versions], "platform": PLATFORM,
            "inputs": [_tensor(name, info) for name, info in meta.inputs.items()],
            "outputs": [_tensor(name, info) for name, info in meta.outputs.items()]}


# ---------------------------------------------------------------------- inputs

def check_input(name: str, datatype: str, shape: list[int], where: str) -> None:
    """The one input tensor the model takes: image_bytes, BYTES, shape [batch] or [batch, 1]."""
    if name != contract.INPUT_KEY:
        raise InvalidArgument(f"{where}.name", f"{shown(name)} is not an input of the model; its one input is "
                                               f"{contract.INPUT_KEY!r} (BYTES, shape [-1])")
    if datatype != BYTES:
        raise InvalidArgument(f"{where}.datatype", f"must be BYTES (encoded images), got {shown(datatype)}")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise InvalidArgument(f"{where}.shape", f"must be [batch] (or [batch, 1]), got {list(shape)}")


def check_count(shape: list[int], count: int, where: str) -> None:
    if shape[0] != count:
        raise InvalidArgument(f"{where}.shape", f"{list(shape)} says {shape[0]} image(s) but the tensor holds {count}")


def deserialize_bytes(raw: bytes, where: str) -> list[bytes]:
    """BYTES elements in Triton's raw form (gRPC raw_input_contents, REST binary data): each element a 4-byte
    little-endian length followed by that many bytes."""
    elements: list[bytes] = []
    view, at = memoryview(raw), 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidArgument(where, f"ends inside the 4-byte length of element {len(elements)} (byte {at} of "
                                         f"{len(raw)}): BYTES elements are a little-endian uint32 length, then the "
                                         f"bytes")
        size = int.from_bytes(view[at:at + 4], "little")
        at += 4
        if at + size > len(raw):
            raise InvalidArgument(where, f"element {len(elements)} claims {size} bytes but only {len(raw) - at} "
                                         f"remain")
        elements.append(bytes(view[at:at + size]))
        at += size
    return elements


def serialize_bytes(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


# ---------------------------------------------------------------------- outputs

def datatype(array: np.ndarray) -> str:
    return _NUMPY_DATATYPES[array.dtype]


def raw(array: np.ndarray) -> bytes:
    """An output tensor's raw contents: row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
