"""TF Serving's gRPC API (package tensorflow-serving-api) without importing TensorFlow itself.

The generated `tensorflow_serving.apis.*_pb2` modules import `tensorflow.core.framework.*_pb2`, and
importing any `tensorflow.*` module first runs `tensorflow/__init__.py`, which loads the whole
runtime (≈3.5 s and ≈600 MB resident on the reference machine) — for a client that only needs the
protobuf messages. While these modules are imported, `tensorflow` is a bare package object whose
`__path__` is the real package directory, so only the plain protobuf modules under
tensorflow/core load; the stand-in is removed afterwards, so a later `import tensorflow` in the same
process (tests, the embedded runner) runs the real `__init__` and reuses the already-imported
protobuf modules (same files, same descriptors).

Also here: the few TensorProto conversions the client needs, with numpy only.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np


def _import_without_tensorflow_runtime():
    if "tensorflow" in sys.modules:  # already loaded for real: nothing to avoid
        return
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("package tensorflow (a dependency of tensorflow-serving-api) is not installed")
    bare = types.ModuleType("tensorflow")
    bare.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = bare
    try:
        import tensorflow_serving.apis.get_model_metadata_pb2  # noqa: F401
        import tensorflow_serving.apis.get_model_status_pb2  # noqa: F401
        import tensorflow_serving.apis.model_management_pb2  # noqa: F401
        import tensorflow_serving.apis.model_service_pb2_grpc  # noqa: F401
        import tensorflow_serving.apis.predict_pb2  # noqa: F401
        import tensorflow_serving.apis.prediction_service_pb2_grpc  # noqa: F401
        import tensorflow_serving.config.model_server_config_pb2  # noqa: F401
    finally:
        if sys.modules.get("tensorflow") is bare:
            del sys.modules["tensorflow"]


_import_without_tensorflow_runtime()

# ruff: noqa: E402 - imported after the loader above on purpose
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

__all__ = [
    "file_system_storage_path_source_pb2", "get_model_metadata_pb2", "get_model_status_pb2",
    "model_management_pb2", "model_pb2", "model_server_config_pb2", "model_service_pb2_grpc", "predict_pb2",
    "prediction_service_pb2_grpc", "status_pb2", "tensor_pb2", "types_pb2", "string_tensor", "to_numpy",
    "State",
]

State = get_model_status_pb2.ModelVersionStatus.State

_NUMPY = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
}


def string_tensor(values: list[bytes]) -> tensor_pb2.TensorProto:
    """A 1-D DT_STRING tensor (a batch of encoded images)."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]),
        string_val=values)


def to_numpy(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A numeric TensorProto as an array, whether the server filled tensor_content (tf.make_tensor_proto)
    or the typed repeated field (TF Serving's AsProtoField; one value means "all elements equal")."""
    if tensor.dtype not in _NUMPY:
        raise ValueError(f"unsupported output dtype {types_pb2.DataType.Name(tensor.dtype)}")
    dtype, field = _NUMPY[tensor.dtype]
    shape = [d.size for d in tensor.tensor_shape.dim]
    count = int(np.prod(shape)) if shape else 1
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=dtype)
    else:
        values = np.asarray(getattr(tensor, field), dtype=dtype)
        if values.size == 1 and count > 1:
            values = np.full(count, values[0], dtype=dtype)
    if values.size != count:
        raise ValueError(f"tensor holds {values.size} values but its shape {shape} needs {count}")
    return values.reshape(shape)
