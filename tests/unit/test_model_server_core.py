"""The model server stand-in behaves like TF Serving where the inference service relies on it:
the base path layout and polling, version states, version policies and labels, error codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from services.model_server.core import ModelServerCore, ServingError
from tests.support import toy_model

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from services.model_server.servicer import ModelServicer, PredictionServicer  # noqa: E402

AVAILABLE, END = 30, 50


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return toy_model.build(tmp_path_factory.mktemp("export") / "toy", seed=1)


def put_version(base: Path, model: str, version: int, export: Path, with_pb: bool = True) -> Path:
    target = base / model / str(version)
    shutil.copytree(export, target, ignore=None if with_pb else shutil.ignore_patterns("saved_model.pb"))
    return target


def states(core: ModelServerCore, model: str) -> dict[int, int]:
    return {entry.version: entry.state for entry in core.status(model)}


def config(*models: tuple[str, Path, list[int], dict[str, int]]) -> model_server_config_pb2.ModelServerConfig:
    result = model_server_config_pb2.ModelServerConfig()
    result.model_config_list.SetInParent()
    for name, base_path, versions, labels in models:
        entry = result.model_config_list.config.add(name=name, base_path=str(base_path), model_platform="tensorflow")
        entry.model_version_policy.specific.versions.extend(versions)
        entry.version_labels.update(labels)
    return result


def test_polls_versions_loads_only_complete_ones_and_serves_the_latest(tmp_path, export):
    core = ModelServerCore(tmp_path)
    with pytest.raises(ServingError) as caught:
        core.status("toy")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "Could not find any versions of model toy" in str(caught.value)

    partial = put_version(tmp_path, "toy", 1, export, with_pb=False)  # still being copied
    core.poll_once()
    with pytest.raises(ServingError):
        core.status("toy")
    shutil.copy(export / "saved_model.pb", partial / "saved_model.pb")  # the publisher's last file
    (tmp_path / "toy" / ".incoming-x").mkdir()  # not a version
    core.poll_once()
    assert states(core, "toy") == {1: AVAILABLE}

    put_version(tmp_path, "toy", 2, export)
    core.poll_once()
    assert states(core, "toy") == {2: AVAILABLE, 1: END}  # latest { num_versions: 1 }, like TF Serving
    assert core.resolve("toy")[0] == 2
    with pytest.raises(ServingError) as caught:
        core.resolve("toy", 1)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert str(caught.value) == "Servable not found for request: Specific(toy, 1)"


def test_reload_config_specific_versions_and_labels(tmp_path, export):
    core = ModelServerCore(tmp_path)
    for version in (1, 2, 3):
        put_version(tmp_path, "toy", version, export)
    core.poll_once()
    # A label may only point at an AVAILABLE version (TF Serving's rule without the "allow" flag).
    with pytest.raises(ServingError) as caught:
        core.reload_config(config(("toy", tmp_path / "toy", [1, 3], {"stable": 1})))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "which is not currently available for inference" in str(caught.value)

    core.reload_config(config(("toy", tmp_path / "toy", [1, 3], {})))
    core.poll_once()
    assert states(core, "toy") == {3: AVAILABLE, 1: AVAILABLE}
    core.reload_config(config(("toy", tmp_path / "toy", [1, 3], {"stable": 1})))
    assert core.resolve("toy", label="stable")[0] == 1
    assert core.resolve("toy")[0] == 3
    with pytest.raises(ServingError) as caught:
        core.resolve("toy", label="canary")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value) == "Unrecognized servable version label: canary"

    core.reload_config(config())  # a model left out of the config is unloaded
    core.poll_once()
    with pytest.raises(ServingError) as caught:
        core.resolve("toy")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_a_broken_version_ends_with_its_error(tmp_path, export):
    core = ModelServerCore(tmp_path)
    broken = tmp_path / "toy" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    core.poll_once()
    (entry,) = core.status("toy")
    assert entry.state == END and entry.error


def test_grpc_surface_predict_metadata_status(tmp_path, export):
    core = ModelServerCore(tmp_path)
    put_version(tmp_path, "toy", 4, export)
    core.poll_once()
    predict, models = PredictionServicer(core), ModelServicer(core)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([toy_model.png(5, 5, 1), toy_model.png(9, 7, 2)]))
    response = predict.Predict(request, None)
    assert response.model_spec.version.value == 4 and response.model_spec.signature_name == "serving_default"
    probabilities = tf.make_ndarray(response.outputs["probabilities_label"])
    assert probabilities.shape == (2, 3) and abs(probabilities.sum() - 2) < 1e-5

    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"\x89PNG\r\n\x1a\n garbage"]))
    with pytest.raises(ServingError) as caught:
        predict.Predict(request, None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "Graph execution" not in str(caught.value)

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "toy"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    predict.GetModelMetadata(metadata, None).metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert list(signature.inputs) == ["image_bytes"]
    assert set(signature.outputs) == {"probabilities_label", "class_ids_label", "probabilities_color",
                                      "class_ids_color"}

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "toy"
    (version,) = models.GetModelStatus(status, None).model_version_status
    assert (version.version, version.state, version.status.error_code) == (4, AVAILABLE, 0)
