import json

import pytest

from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.cli import main
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer
from services.common.storage import LocalObjectStore
from services.jobs.domain import JobsDomain
from services.jobs.main import SERVICE_NAME
from services.jobs.servicer import JobsServicer


@pytest.fixture
def jobs_address(tmp_path):
    bus = InProcessEventBus()
    domain = JobsDomain(bus, LocalObjectStore(tmp_path / "store"))
    bus.subscribe("jobs", domain.apply)
    server = GrpcServer("cli-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server, JobsServicer(domain), SERVICE_NAME)
    server.start()
    yield f"127.0.0.1:{server.port}"
    server.stop()
    bus.close()


def test_submit_status_list_and_errors(jobs_address, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("display_name: shoes\nsource: {object_prefix: uploads/shoes/}\ndataset: {val_fraction: 0.2}\n")
    assert main(["--plaintext", "--jobs", jobs_address, "submit", str(spec)]) == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 36

    assert main(["--plaintext", "--jobs", jobs_address, "--json", "status", job_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job_id"] == job_id and shown["spec"]["dataset"]["val_fraction"] == 0.2

    assert main(["--plaintext", "--jobs", jobs_address, "list"]) == 0
    assert job_id in capsys.readouterr().out

    assert main(["--plaintext", "--jobs", jobs_address, "status", "no-such-job"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {object_prefix: ../up}\n")
    assert main(["--plaintext", "--jobs", jobs_address, "submit", str(bad)]) == 1
    assert "INVALID_ARGUMENT: spec.source.object_prefix" in capsys.readouterr().err


def test_submit_takes_a_time_budget_and_a_recipe(jobs_address, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("source: {object_prefix: uploads/shirts/}\ntraining: {mirror_invariant: true, time_budget: 1h}\n")
    assert main(["--plaintext", "--jobs", jobs_address, "submit", str(spec), "--time-budget", "10m",
                 "--recipe", "auto"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["--plaintext", "--jobs", jobs_address, "--json", "status", job_id]) == 0
    training = json.loads(capsys.readouterr().out)["spec"]["training"]
    assert training == {"mirror_invariant": True, "time_budget": "10m", "recipe": "auto"}  # the flags win
    with pytest.raises(SystemExit, match="--time-budget.*'ten minutes' is not a duration"):
        main(["--plaintext", "--jobs", jobs_address, "submit", str(spec), "--time-budget", "ten minutes"])
    with pytest.raises(SystemExit):
        main(["--plaintext", "--jobs", jobs_address, "submit", str(spec), "--recipe", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_a_spec_with_an_unknown_field_is_rejected_with_the_file_name(tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text("sorce: {object_prefix: x/}\n")
    with pytest.raises(SystemExit, match="typo.yaml.*sorce"):
        main(["submit", str(spec)])


def test_report_names_the_index_of_a_finished_job_and_explains_a_missing_one(tmp_path, capsys):
    from classforge.v1 import events_pb2
    from services.common.events import new_event

    bus = InProcessEventBus()
    store = LocalObjectStore(tmp_path / "store")
    domain = JobsDomain(bus, store)
    server = GrpcServer("cli-report", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server, JobsServicer(domain), SERVICE_NAME)
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text("source: {local_path: /data}\n")
        main(["--plaintext", "--jobs", address, "submit", str(spec)])
        job_id = capsys.readouterr().out.strip()
        assert main(["--plaintext", "--jobs", address, "report", job_id]) == 1
        assert "has no report yet" in capsys.readouterr().err

        report_dir = store.uri(f"reports/{job_id}")
        domain.apply(new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(
            blessed=False, report_uri=report_dir + "/")))
        assert main(["--plaintext", "--jobs", address, "report", job_id]) == 0
        shown = capsys.readouterr().out.strip()
        assert shown == f"report: {(tmp_path / 'store' / 'reports' / job_id / 'index.html').resolve()}"
    finally:
        server.stop()
        bus.close()


def test_watch_shows_each_stage_as_plain_lines_without_a_terminal_or_as_json(tmp_path, capsys):
    from classforge.v1 import common_pb2, events_pb2
    from services.common.events import new_event

    bus = InProcessEventBus()
    domain = JobsDomain(bus, LocalObjectStore(tmp_path / "store"))
    server = GrpcServer("cli-watch", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server, JobsServicer(domain), SERVICE_NAME)
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text("source: {local_path: /data}\n")
        main(["--plaintext", "--jobs", address, "submit", str(spec)])
        job_id = capsys.readouterr().out.strip()
        for producer, payload in [
            ("ingest", {"dataset_prepared": events_pb2.DatasetPrepared(train_count=90, val_count=10)}),
            ("tfrecords", {"records_built": events_pb2.RecordsBuilt(train_examples=90)}),
            *[("trainer", {"training_progress": events_pb2.TrainingProgress(stage=2, epoch=1, step=n,
                                                                            total_steps=300)})
              for n in range(1, 301)],
            ("trainer", {"training_completed": events_pb2.TrainingCompleted()}),
            ("evaluator", {"evaluation_completed": events_pb2.EvaluationCompleted(accuracy=0.5, blessed=False)})]:
            domain.apply(new_event(job_id, producer, **payload))
        assert domain.get(job_id).status == common_pb2.JOB_STATUS_SUCCEEDED

        assert main(["--plaintext", "--jobs", address, "watch", job_id]) == 0
        lines = capsys.readouterr().out.splitlines()
        # A replayed history with 300 progress events within a second: every change of state, no progress
        # line in between. (No job_submitted in this history: nothing consumed it, so ingest just ends.)
        assert [line[11:30].split() for line in lines[:-1]] == [
            ["ingest", "done"], ["records", "running"], ["records", "done"],
            ["training", "running"], ["training", "done"], ["evaluation", "running"], ["evaluation", "done"]]
        assert "300/300 steps" in lines[4] and "accuracy 0.5000, not blessed" in lines[6]
        assert lines[-1] == f"job {job_id} SUCCEEDED"

        assert main(["--plaintext", "--jobs", address, "--json", "watch", job_id]) == 0
        text, replies, at = capsys.readouterr().out, [], 0
        while text[at:].strip():  # one JSON object per reply
            reply, at = json.JSONDecoder().raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
            replies.append(reply)
        assert len(replies) == 304 and replies[-1]["event"]["evaluation_completed"]["accuracy"] == 0.5
    finally:
        server.stop()
        bus.close()
