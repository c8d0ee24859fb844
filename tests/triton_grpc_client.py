"""Runs tritonclient's gRPC client against an address, in a process of its own: tritonclient.grpc registers
Triton's grpc_service.proto, whose messages share their full names (inference.ModelInferRequest, …) with
KServe's grpc_predict_v2.proto that the inference service registers, and one process's protobuf descriptor
pool cannot hold both. The tests start this module with the calls to make as JSON on stdin:

    python -m tests.triton_grpc_client 127.0.0.1:50056 <<< '[{"call": "is_server_live"}, …]'

and read one JSON result per call on stdout: {"value": …} or {"error": {"status": …, "message": …}}.
Images travel as base64; infer's outputs come back as {name: {"datatype", "shape", "data"}}.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def _infer(client: triton.InferenceServerClient, call: dict):
    datatype = call.get("datatype", "BYTES")
    if datatype == "BYTES":
        data = np.array([base64.b64decode(i) for i in call["images"]], dtype=np.object_)
    else:
        data = np.array(call["values"], dtype=np.float32)
    data = data.reshape(call.get("shape", [len(data)]))
    tensor = triton.InferInput(call.get("input", "image_bytes"), list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    outputs = [triton.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
    result = client.infer(call["model"], [tensor], model_version=call.get("version", ""), outputs=outputs,
                          request_id=call.get("id", ""))
    response = result.get_response()
    return {"model_name": response.model_name, "model_version": response.model_version, "id": response.id,
            "outputs": {o.name: {"datatype": o.datatype, "shape": list(o.shape),
                                 "data": result.as_numpy(o.name).reshape(-1).tolist()} for o in response.outputs}}


def run(address: str, calls: list[dict]) -> list[dict]:
    client = triton.InferenceServerClient(address)
    results = []
    for call in calls:
        try:
            name = call["call"]
            if name == "infer":
                value = _infer(client, call)
            elif name == "get_model_metadata":
                value = client.get_model_metadata(call["model"], call.get("version", ""), as_json=True)
            elif name == "is_model_ready":
                value = client.is_model_ready(call["model"], call.get("version", ""))
            elif name == "get_server_metadata":
                value = client.get_server_metadata(as_json=True)
            else:
                value = getattr(client, name)()
            results.append({"value": value})
        except InferenceServerException as exc:
            results.append({"error": {"status": exc.status(), "message": exc.message()}})
    client.close()
    return results


if __name__ == "__main__":
    json.dump(run(sys.argv[1], json.load(sys.stdin)), sys.stdout)
