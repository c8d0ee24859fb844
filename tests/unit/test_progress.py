"""Progress of a job for a person (services/progress.py): bars only on a terminal, plain lines at a
bounded rate otherwise, and the per-stage states and time estimate both are drawn from."""

import io
import re

from google.protobuf.timestamp_pb2 import Timestamp

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import jobs_service_pb2 as jobs_pb
from services import progress

T0 = 1_800_000_000.0


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def event(at: float, **payload) -> events_pb2.Event:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((T0 + at) * 1e9))
    return events_pb2.Event(job_id="j1", occurred_at=stamp, **payload)


def job(stage=common_pb2.JOB_STAGE_TRAINING) -> jobs_pb.Job:
    return jobs_pb.Job(job_id="j1", stage=stage, status=common_pb2.JOB_STATUS_RUNNING)


def up_to_training() -> list[events_pb2.Event]:
    return [event(0, job_submitted=events_pb2.JobSubmitted()),
            event(5, dataset_prepared=events_pb2.DatasetPrepared(train_count=900, val_count=100)),
            event(9, records_built=events_pb2.RecordsBuilt(train_examples=900, val_examples=100))]


def step(at: float, n: int, total: int = 1000) -> events_pb2.Event:
    return event(at, training_progress=events_pb2.TrainingProgress(stage=2, epoch=1 + n // 100, step=n,
                                                                   total_steps=total, images_per_second=300))


def test_bars_only_on_a_terminal_and_not_when_plain_lines_are_asked_for():
    assert progress.wants_bars(Terminal(), plain=False)
    assert not progress.wants_bars(Terminal(), plain=True)
    assert not progress.wants_bars(io.StringIO(), plain=False)  # a pipe, a file, a CI log
    assert isinstance(progress.display(Terminal()), progress.BarDisplay)
    assert isinstance(progress.display(Terminal(), plain=True), progress.PlainDisplay)
    assert isinstance(progress.display(io.StringIO()), progress.PlainDisplay)


def test_stages_move_from_waiting_to_done_and_training_counts_steps():
    state = progress.JobProgress()
    for e in up_to_training():
        state.update(e, job())
    stages = state.stages
    assert [stages[s].state for s in progress.STAGES] == ["done", "done", "running", "waiting", "waiting"]
    assert "900 train, 100 val" in stages["JOB_STAGE_INGEST"].detail
    state.update(step(10, 100), job())
    assert stages["JOB_STAGE_TRAINING"].eta_seconds() is None  # one point tells no rate
    state.update(step(20, 300), job())
    state.update(event(21, stage_heartbeat=events_pb2.StageHeartbeat(stage=common_pb2.JOB_STAGE_TRAINING,
                                                                      activity="training")), job())
    training = stages["JOB_STAGE_TRAINING"]
    assert training.shown_detail.startswith("stage 2 epoch 4")  # the events say more than the heartbeat
    assert (training.done, training.total) == (300, 1000)
    assert training.eta_seconds() == 35.0  # 200 steps in 10 s of event time: 700 steps left
    assert "300/1000 steps (30%)  ETA 35s" in training.summary()
    # Early stopping ends training short of the plan: done is done.
    state.update(event(30, training_completed=events_pb2.TrainingCompleted()), job(common_pb2.JOB_STAGE_EVALUATION))
    assert (training.state, training.done, training.eta_seconds()) == ("done", 1000, None)
    state.update(event(40, stage_failed=events_pb2.StageFailed(stage=common_pb2.JOB_STAGE_EVALUATION,
                                                               message="evaluator: no test images")),
                 job(common_pb2.JOB_STAGE_EVALUATION))
    assert stages["JOB_STAGE_EVALUATION"].state == "failed"
    assert stages["JOB_STAGE_EVALUATION"].detail == "evaluator: no test images"


def test_plain_lines_stay_bounded_for_a_burst_of_a_thousand_progress_events():
    out, clock = io.StringIO(), Clock()
    shown = progress.PlainDisplay(out, interval=10.0, clock=clock)
    for e in up_to_training():
        shown.update(e, job())
    changes = len(out.getvalue().splitlines())
    assert changes == 5  # ingest running; ingest done, records running; records done, training running
    for n in range(1, 1001):  # 1,000 events over 50 s of wall time: one line per 10 s at most
        clock.now += 0.05
        shown.update(step(10 + n * 0.05, n), job())
    lines = out.getvalue().splitlines()[changes:]
    assert 1 <= len(lines) <= 50 / 10 + 1
    assert all(line[11:].startswith("training") and "/1000 steps" in line for line in lines)
    assert "ETA" in lines[-1]
    # A change of state is never held back by the rate limit.
    shown.update(event(61, training_completed=events_pb2.TrainingCompleted()), job(common_pb2.JOB_STAGE_EVALUATION))
    last = out.getvalue().splitlines()[-2:]
    assert last[0] == "08:01:01Z  training    done       1000/1000 steps (100%)  in 52s  model exported"
    assert last[1].startswith("08:01:01Z  evaluation  running")


def test_bars_draw_every_started_stage_with_its_count_and_estimate():
    out = Terminal()
    with progress.display(out) as shown:
        shown.bars.console.width = 160
        for e in up_to_training():
            shown.update(e, job())
        shown.update(step(10, 100), job())
        shown.update(step(20, 300), job())
        shown.note("a note between the bars")
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # without the terminal's colour codes
    for text in ("ingest", "records", "training", "300/1000 steps", "ETA 35s", "a note between the bars"):
        assert text in drawn, f"{text!r} missing from the bars"
    assert "evaluation" not in drawn  # a stage that has not started has no bar yet
    # An ended stage shows how long it ran by its events (0 s to 5 s), not how long the display saw it.
    assert re.search(r"ingest .* 5s .*900 train", drawn) and re.search(r"records .* 4s .*900 train", drawn)


def test_a_stage_that_counts_its_work_in_heartbeats_gets_a_count_and_an_estimate():
    state = progress.JobProgress()
    ingest = state.stages["JOB_STAGE_INGEST"]

    def beat(at: float, done: int) -> None:
        state.update(event(at, stage_heartbeat=events_pb2.StageHeartbeat(
            stage=common_pb2.JOB_STAGE_INGEST, activity="writing images", done=done, total=5000, unit="images")),
            job(common_pb2.JOB_STAGE_INGEST))

    state.update(event(0, job_submitted=events_pb2.JobSubmitted()), job(common_pb2.JOB_STAGE_INGEST))
    beat(2, 1000)
    beat(4, 2000)
    assert (ingest.state, ingest.shown_detail, ingest.eta_seconds()) == ("running", "writing images", 6.0)
    assert "2000/5000 images (40%)  ETA 6s  writing images" in ingest.summary()
    state.update(event(5, dataset_prepared=events_pb2.DatasetPrepared(train_count=4500, val_count=500)),
                 job(common_pb2.JOB_STAGE_RECORDS))
    beat(5.1, 4900)  # a heartbeat sent as the stage ended: it changes nothing
    assert (ingest.state, ingest.done) == ("done", 5000) and ingest.detail.startswith("4500 train")
