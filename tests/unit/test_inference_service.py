"""The inference service in one process against the model server stand-in over real gRPC: publish a
blessed model (copy, AVAILABLE, label, model_deployed), Classify, rollback, errors and deadlines."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import inference_service_pb2 as pb
from services.common.events import new_event
from services.inference.classifier import DeadlineExceeded, MicroBatcher, Target
from services.model_server.core import LoadedVersion
from tests import inference_stack
from tests.support import toy_model

tf = pytest.importorskip("tensorflow")

IMAGES = [toy_model.png(12, 9, seed=s) for s in range(4)] + [toy_model.jpeg(20, 16, seed=9)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {seed: toy_model.build(root / f"seed{seed}", seed) for seed in (1, 2, 3)}


def direct(export: Path, image: bytes) -> dict[str, np.ndarray]:
    """The SavedModel called directly (what the evaluator does) — the reference for Classify."""
    function = tf.saved_model.load(str(export)).signatures["serving_default"]
    return {k: v.numpy()[0] for k, v in function(image_bytes=tf.constant([image])).items()}


class Stack(inference_stack.Stack):
    def classify(self, image: bytes, **kwargs) -> pb.ClassifyResponse:
        return super().classify(image, **{"top_k": 10, **kwargs})


@pytest.fixture
def stack(tmp_path, exports):
    s = Stack(tmp_path, exports)
    yield s
    s.close()


def probabilities(response: pb.ClassifyResponse, task: str) -> dict[str, float]:
    (prediction,) = [p for p in response.predictions if p.task == task]
    return {score.label: score.probability for score in prediction.top}


def assert_same_as_direct(response: pb.ClassifyResponse, export: Path, image: bytes):
    reference = direct(export, image)
    classes = toy_model.DEFAULT_TASKS
    assert [p.task for p in response.predictions] == list(classes)
    for task, names in classes.items():
        expected = reference[f"probabilities_{task}"]
        (prediction,) = [p for p in response.predictions if p.task == task]
        assert prediction.top[0].class_id == int(reference[f"class_ids_{task}"])
        assert prediction.top[0].label == names[int(reference[f"class_ids_{task}"])]
        got = np.zeros(len(names), np.float32)
        for score in prediction.top:
            got[score.class_id] = score.probability
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_publish_waits_for_available_then_classify_matches_the_saved_model(stack, exports):
    stack.submit("job-a", 1)
    deployed = [e for e in stack.out if e.WhichOneof("payload") == "model_deployed"]
    assert len(deployed) == 1 and not [e for e in stack.out if e.WhichOneof("payload") == "stage_failed"]
    ref = deployed[0].model_deployed.model
    assert (ref.job_id, ref.model_name, ref.version) == ("job-a", "toy", 1)
    assert stack.copied[-1] == "saved_model.pb" and "variables/variables.index" in stack.copied
    assert [s.state for s in stack.client.status("toy", 1)] == [30]  # AVAILABLE before model_deployed

    (model,) = stack.stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert model.model_name == "toy"
    assert [(v.version, v.state, v.job_id, v.serving) for v in model.versions] == [
        (1, pb.MODEL_VERSION_STATE_AVAILABLE, "job-a", True)]

    for image in IMAGES:
        response = stack.classify(image, model_name="toy")
        assert (response.model_name, response.version) == ("toy", 1)
        assert_same_as_direct(response, exports[1], image)
    top2 = stack.stub.Classify(pb.ClassifyRequest(image=IMAGES[0], model_name="toy", top_k=2), timeout=10)
    assert [len(p.top) for p in top2.predictions] == [2, 2]

    # Redelivery: model_deployed again, nothing copied again.
    copied = len(stack.copied)
    stack.publisher.handle(stack.evaluation("job-a", 1))
    stack.bus.drain()
    deployed = [e for e in stack.out if e.WhichOneof("payload") == "model_deployed"]
    assert len(deployed) == 2 and deployed[1].model_deployed.model.version == 1
    assert len(stack.copied) == copied and stack.repo.versions("toy") == [1]


def test_new_version_then_rollback_changes_the_answering_version(stack, exports):
    stack.submit("job-a", 1)
    stack.submit("job-b", 2)
    assert stack.repo.versions("toy") == [1, 2]
    image = IMAGES[1]
    assert stack.classify(image, model_name="toy").version == 2
    assert_same_as_direct(stack.classify(image, model_name="toy"), exports[2], image)
    assert_same_as_direct(stack.classify(image, model_name="toy", version=1), exports[1], image)

    reply = stack.stub.Rollback(pb.RollbackRequest(model_name="toy", version=1), timeout=30)
    assert [(v.version, v.serving) for v in reply.model.versions] == [(2, False), (1, True)]
    after = stack.classify(image, model_name="toy")
    assert after.version == 1
    assert_same_as_direct(after, exports[1], image)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Rollback(pb.RollbackRequest(model_name="toy", version=7), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "kept versions are 1, 2" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Rollback(pb.RollbackRequest(model_name="nope", version=1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # A newly published version answers again (a rollback is not a permanent pin).
    stack.submit("job-c", 3)
    assert stack.classify(image, model_name="toy").version == 3


def test_concurrent_requests_during_version_switches_all_succeed(stack, exports):
    stack.submit("job-a", 1)
    stack.submit("job-b", 2)
    expected = {v: direct(exports[seed], IMAGES[0])["probabilities_label"] for v, seed in ((1, 1), (2, 2))}
    stop = threading.Event()

    def switch():
        version = 1
        while not stop.is_set():
            stack.stub.Rollback(pb.RollbackRequest(model_name="toy", version=version), timeout=30)
            version = 3 - version

    def calls(_):
        answered = []
        for _ in range(20):
            response = stack.classify(IMAGES[0], model_name="toy")
            got = np.array([s.probability for s in sorted(response.predictions[0].top, key=lambda s: s.class_id)])
            np.testing.assert_allclose(got, expected[response.version], rtol=1e-6)
            answered.append(response.version)
        return answered

    switcher = threading.Thread(target=switch)
    switcher.start()
    try:
        with futures.ThreadPoolExecutor(8) as pool:
            answered = [v for batch in pool.map(calls, range(8)) for v in batch]
    finally:
        stop.set()
        switcher.join()
    assert len(answered) == 160 and set(answered) <= {1, 2}


def test_unblessed_or_undeployed_models_are_never_published(stack):
    stack.submit("job-x", 1, blessed=False)
    stack.submit("job-y", 1, deploy=False)
    assert stack.out == [] and stack.repo.models() == [] and stack.copied == []
    with pytest.raises(grpc.RpcError) as caught:
        stack.classify(IMAGES[0], model_name="toy")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_keeps_the_last_k_versions(tmp_path, exports):
    s = Stack(tmp_path, exports, keep_versions=2)
    try:
        for job, seed in (("j1", 1), ("j2", 2), ("j3", 3)):
            s.submit(job, seed, model="kept")
        assert s.repo.versions("kept") == [2, 3]
        assert [(v.version, v.serving) for v in s.publisher.list_models("kept")[0].versions] == [(3, True), (2, False)]
        # A redelivered event of a retired version is not published again.
        s.publisher.handle(s.evaluation("j1", 1))
        assert s.repo.versions("kept") == [2, 3]
    finally:
        s.close()


def test_a_broken_saved_model_fails_the_job_and_is_retired(stack):
    stack.store.put_bytes("models/job-broken/saved_model/saved_model.pb", b"not a protobuf")
    spec = common_pb2.JobSpec(deploy=common_pb2.DeployOptions(deploy=True, model_name="toy"))
    stack.bus.publish(new_event("job-broken", "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
    stack.bus.publish(new_event("job-broken", "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(
        model=common_pb2.ModelRef(uri=stack.store.uri("models/job-broken/saved_model")), blessed=True)))
    stack.bus.drain(timeout=60)
    (failed,) = stack.out
    assert failed.stage_failed.stage == common_pb2.JOB_STAGE_DEPLOYMENT
    assert "could not load" in failed.stage_failed.message
    assert stack.repo.versions("toy") == []


@pytest.mark.parametrize("image, problem", [
    (b"", "is empty"),
    (b"this is not an image at all", "is not a JPEG, PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot use it"),  # passes the sniff, fails the model's decode
    (toy_model.jpeg(16, 16, 1)[:60], "cannot use it"),  # a truncated JPEG
])
def test_a_bad_image_is_invalid_argument(stack, image, problem):
    stack.submit("job-a", 1)
    with pytest.raises(grpc.RpcError) as caught:
        stack.classify(image, model_name="toy")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith("image: ") and problem in caught.value.details()


def test_unknown_model_or_version_is_not_found(stack):
    stack.submit("job-a", 1)
    for kwargs in ({"model_name": "nope"}, {"model_name": "toy", "version": 5}):
        with pytest.raises(grpc.RpcError) as caught:
            stack.classify(IMAGES[0], **kwargs)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, kwargs
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.ListModels(pb.ListModelsRequest(model_name="nope"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_callers_deadline_is_propagated_to_predict(stack, monkeypatch):
    stack.submit("job-a", 1)
    slow = LoadedVersion.predict

    def predict(self, *args, **kwargs):
        time.sleep(1.5)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(LoadedVersion, "predict", predict)
    request = pb.ClassifyRequest(image=IMAGES[0], model_name="toy")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        stack.classifier.classify(request, time_remaining=0.3)  # the domain, not the client, gives up
    assert time.monotonic() - started < 1.0
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Classify(request, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(DeadlineExceeded):
        stack.classifier.classify(request, time_remaining=0.001)  # already spent: Predict is not even sent


def test_classify_stream_answers_in_order(stack, exports):
    stack.submit("job-a", 1)
    requests = [pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=image, model_name="toy", top_k=3))
                for image in IMAGES * 4]
    replies = list(stack.stub.ClassifyStream(iter(requests), timeout=30))
    assert len(replies) == len(requests)
    for request, reply in zip(requests, replies, strict=True):
        assert reply.response == stack.classify(request.request.image, model_name="toy", top_k=3)


class RecordingSend:
    """A stand-in for Classifier._send: records each batch; the first Predict is held until released."""

    def __init__(self):
        self.batches: list[list[bytes]] = []
        self.first_sent, self.release_first = threading.Event(), threading.Event()

    def __call__(self, target, images, timeout):
        self.batches.append(list(images))
        if len(self.batches) == 1:
            self.first_sent.set()
            self.release_first.wait(10)
        return 1, {"probabilities_label": np.arange(len(images), dtype=np.float32)[:, None]}


def test_micro_batching_sends_a_lone_request_at_once_and_batches_while_the_model_server_is_busy():
    send = RecordingSend()
    batcher = MicroBatcher(send, max_size=3, wait_s=30.0)  # a wait a lone request would notice
    target = Target("toy", label="stable")
    with futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.predict, target, b"a", 10)
        assert send.first_sent.wait(5)  # nothing was in flight: sent alone, without waiting 30 s
        # While that Predict is in flight, the next requests gather into one batch (sent when full).
        rest = [pool.submit(batcher.predict, target, image, 10) for image in (b"b", b"c", b"d")]
        while sum(len(b) for b in send.batches) < 4:
            time.sleep(0.01)
        send.release_first.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert send.batches[0] == [b"a"] and sorted(send.batches[1]) == [b"b", b"c", b"d"]
    # each caller gets its own row of the batch's answer
    rows = sorted(float(outputs["probabilities_label"][0, 0]) for _, outputs in answers[1:])
    assert rows == [0.0, 1.0, 2.0] and all(outputs["probabilities_label"].shape == (1, 1) for _, outputs in answers)


def test_micro_batching_a_short_deadline_does_not_fail_the_batch_members_with_time_left():
    """The leader's deadline bounds the batch's Predict; a member whose own deadline is far off must not
    inherit its DEADLINE_EXCEEDED: it is answered by a Predict of its own."""
    send = RecordingSend()
    sent_timeouts: list[float | None] = []

    def slow_then_fine(target, images, timeout):
        sent_timeouts.append(timeout)
        if len(sent_timeouts) == 2:  # the batch led by the short-deadline request
            raise DeadlineExceeded("the model server did not answer within the deadline")
        return send(target, images, timeout)

    batcher = MicroBatcher(slow_then_fine, max_size=2, wait_s=30.0)
    target = Target("toy", label="stable")
    with futures.ThreadPoolExecutor(4) as pool:
        busy = pool.submit(batcher.predict, target, b"a", 10)  # keeps a Predict in flight, so the next ones batch
        assert send.first_sent.wait(5)
        short = pool.submit(batcher.predict, target, b"short", 0.5)  # leads the next batch
        while not batcher._open:
            time.sleep(0.01)
        patient = pool.submit(batcher.predict, target, b"patient", 10)  # fills it: sent now
        with pytest.raises(DeadlineExceeded):
            short.result(10)
        version, outputs = patient.result(10)  # answered by its own Predict, not the leader's error
        send.release_first.set()
        busy.result(10)
    assert version == 1 and outputs["probabilities_label"].shape == (1, 1)
    assert send.batches[-1] == [b"patient"] and 0 < sent_timeouts[-1] <= 10


def test_micro_batching_gives_the_same_answers(tmp_path, exports):
    s = Stack(tmp_path, exports, batch_max_size=8)
    try:
        s.submit("job-a", 1)
        bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40

        def call(i):
            image = bad if i == 5 else IMAGES[i % len(IMAGES)]
            try:
                return i, s.classify(image, model_name="toy")
            except grpc.RpcError as exc:
                return i, exc.code()

        with futures.ThreadPoolExecutor(16) as pool:
            results = dict(pool.map(call, range(32)))
        assert results.pop(5) == grpc.StatusCode.INVALID_ARGUMENT  # only the bad image's caller fails
        for i, response in results.items():
            assert_same_as_direct(response, exports[1], IMAGES[i % len(IMAGES)])
    finally:
        s.close()
