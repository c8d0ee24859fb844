"""A job's progress for a person: one bar per stage with a time estimate on a terminal, plain lines at a
bounded rate anywhere else (`classforge run`, `classforge watch`).

Both displays are fed the WatchJob stream (asked with include_heartbeats), (event, job) pairs, and show
the same per-stage states, folded here once by `JobProgress`: waiting, running, done, failed or
cancelled, what the stage says it is doing, and `done` of `total` units where the stage counts them
(training: `step` of `total_steps`; other stages: their heartbeats' done/total). The time estimate
comes from the events' own times, not from when they arrive, so a replayed history (`watch` of a job
already running) does not fake a speed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from classforge.v1 import common_pb2

# The stages in the order a job goes through them, as the jobs service names them.
STAGES = tuple(common_pb2.JobStage.Name(v) for v in common_pb2.JobStage.values() if v)
WAITING, RUNNING, DONE, FAILED, CANCELLED = "waiting", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)

# Which stage an event ends, and which one it starts.
_ENDS = {"dataset_prepared": "JOB_STAGE_INGEST", "records_built": "JOB_STAGE_RECORDS",
         "training_completed": "JOB_STAGE_TRAINING", "evaluation_completed": "JOB_STAGE_EVALUATION",
         "model_deployed": "JOB_STAGE_DEPLOYMENT"}
_STARTS = {"job_submitted": "JOB_STAGE_INGEST", "dataset_prepared": "JOB_STAGE_RECORDS",
           "records_built": "JOB_STAGE_TRAINING", "training_completed": "JOB_STAGE_EVALUATION"}


def stage_label(stage: str) -> str:
    return stage.removeprefix("JOB_STAGE_").lower()


def duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class StageState:
    stage: str
    state: str = WAITING
    done: int = 0
    total: int = 0
    unit: str = ""
    detail: str = ""  # from the stage's events: progress, the outcome, the failure
    activity: str = ""  # from its heartbeats; shown while no event has said more
    started_at: float | None = None  # event times (seconds since the epoch)
    ended_at: float | None = None
    # (event time, done) when the counting began in this stage: the rate is measured from there.
    _first: tuple[float, int] | None = None
    _last: tuple[float, int] | None = None

    @property
    def label(self) -> str:
        return stage_label(self.stage)

    def count(self, when: float, done: int, total: int, unit: str) -> None:
        self.done, self.total, self.unit = done, total, unit
        if self._first is None or done < self._first[1]:
            self._first = (when, done)
        self._last = (when, done)

    def eta_seconds(self) -> float | None:
        """Time left at the rate measured so far, or None while it cannot be told."""
        if not self.total or self._first is None or self._last is None or self.state != RUNNING:
            return None
        (t0, d0), (t1, d1) = self._first, self._last
        if d1 <= d0 or t1 <= t0:
            return None
        return max(0.0, (self.total - d1) * (t1 - t0) / (d1 - d0))

    def took(self) -> str:
        """How long an ended stage ran, by the events' times ('' while running or when not known)."""
        if self.started_at is None or self.ended_at is None:
            return ""
        return duration(self.ended_at - self.started_at)

    def summary(self) -> str:
        """One line: the state, the count and the estimate where known, and the detail."""
        parts = [f"{self.label:<10}", f"{self.state:<9}"]
        if self.total:
            parts.append(f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)")
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        if self.took():
            parts.append(f"in {self.took()}")
        if self.shown_detail:
            parts.append(self.shown_detail)
        return "  ".join(parts)

    @property
    def shown_detail(self) -> str:
        return self.detail or self.activity


def _seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


@dataclass
class JobProgress:
    """The per-stage states of one job, folded from its WatchJob replies."""

    stages: dict[str, StageState] = field(default_factory=lambda: {s: StageState(s) for s in STAGES})

    def update(self, event, job) -> list[StageState]:
        """Folds one (event, job) pair; returns the stages whose state (waiting/running/…) changed."""
        kind = event.WhichOneof("payload")
        when = _seconds(event.occurred_at) or time.time()
        changed: list[StageState] = []

        def move(stage: str, state: str, detail: str | None = None) -> StageState:
            s = self.stages[stage]
            if s.state in ENDED:  # a late word (a heartbeat sent as the stage ended) changes nothing
                return s
            if detail is not None:
                s.detail = detail
            if s.state != state:
                s.state = state
                if state == RUNNING:
                    s.started_at = when
                if state in ENDED:
                    s.ended_at = when
                if state == DONE and s.total:
                    s.done = s.total  # early stopping ends training short of the plan: the stage is done
                changed.append(s)
            return s

        if kind in _ENDS:
            move(_ENDS[kind], DONE, _finished(event, kind))
        if kind == "evaluation_completed" and job.stage == common_pb2.JOB_STAGE_DEPLOYMENT:
            move("JOB_STAGE_DEPLOYMENT", RUNNING, "publishing the blessed model")
        elif kind in _STARTS:
            move(_STARTS[kind], RUNNING, "")
        if kind == "training_progress":
            p = event.training_progress
            s = move("JOB_STAGE_TRAINING", RUNNING, _training(p))
            if p.total_steps:
                s.count(when, p.step, p.total_steps, "steps")
        elif kind == "stage_heartbeat":
            beat = event.stage_heartbeat
            name = common_pb2.JobStage.Name(beat.stage)
            if name in self.stages:
                s = move(name, RUNNING)
                if s.state == RUNNING:
                    s.activity = beat.activity
                    if beat.total:
                        s.count(when, beat.done, beat.total, beat.unit)
        elif kind == "stage_failed":
            name = common_pb2.JobStage.Name(event.stage_failed.stage or job.stage)
            if name in self.stages:
                move(name, FAILED, event.stage_failed.message)
        elif kind == "job_cancelled":
            name = common_pb2.JobStage.Name(event.job_cancelled.stage or job.stage)
            if name in self.stages:
                move(name, CANCELLED, "cancelled")
        elif kind == "cancel_requested":
            name = common_pb2.JobStage.Name(job.stage)
            if name in self.stages and self.stages[name].state == RUNNING:
                self.stages[name].detail = f"cancel requested: {event.cancel_requested.reason}"
        return changed


def _training(p) -> str:
    accuracy = next((v for k, v in sorted(p.metrics.items()) if k.endswith("accuracy")), None)
    text = (f"stage {p.stage} epoch {p.epoch}  loss {p.total_loss:.4f}  {p.images_per_second:.0f} img/s")
    return text + (f"  accuracy {accuracy:.4f}" if accuracy is not None else "")


def _finished(event, kind: str) -> str:
    if kind == "dataset_prepared":
        d = event.dataset_prepared
        return (f"{d.train_count} train, {d.val_count} val, {d.test_count} test images, "
                f"{d.rejected_count} rejected")
    if kind == "records_built":
        r = event.records_built
        return f"{r.train_examples} train and {r.val_examples} val examples"
    if kind == "training_completed":
        return "model exported"
    if kind == "evaluation_completed":
        e = event.evaluation_completed
        return f"accuracy {e.accuracy:.4f}, {'blessed' if e.blessed else 'not blessed'}"
    if kind == "model_deployed":
        m = event.model_deployed.model
        return f"serving {m.model_name} v{m.version}"
    return ""


# --------------------------------------------------------------------------- displays


class PlainDisplay:
    """Log lines: every change of a stage's state, and otherwise at most one line per stage every
    `interval` seconds, however fast the events come."""

    def __init__(self, stream: TextIO, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream, self.interval, self.clock = stream, interval, clock
        self.progress = JobProgress()
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.flush()

    def update(self, event, job) -> None:
        changed = {s.stage for s in self.progress.update(event, job)}
        now = self.clock()
        at = time.strftime("%H:%M:%S", time.gmtime(_seconds(event.occurred_at) or time.time()))
        for s in self.progress.stages.values():
            if s.state == WAITING:
                continue
            due = now - self._last_line.get(s.stage, float("-inf")) >= self.interval
            touched = s.stage in changed or (s.state == RUNNING and _is_about(event, s.stage))
            if s.stage in changed or (touched and due):
                self._line(f"{at}Z  {s.summary()}")
                self._last_line[s.stage] = now

    def note(self, text: str) -> None:
        """Other output (reports, results) between the progress lines."""
        self._line(text)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _is_about(event, stage: str) -> bool:
    kind = event.WhichOneof("payload")
    if kind == "training_progress":
        return stage == "JOB_STAGE_TRAINING"
    if kind == "stage_heartbeat":
        return common_pb2.JobStage.Name(event.stage_heartbeat.stage) == stage
    return False


class BarDisplay:
    """rich progress bars, one per stage that has started, redrawn in place on a terminal."""

    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Elapsed(TimeElapsedColumn):
            """How long an ended stage ran by its events' times (a replayed history ends at once here)."""

            def render(self, task):
                took = task.fields.get("took")
                return Text(took, style="progress.elapsed") if took else super().render(task)

        self.console = Console(file=stream)
        self.bars = Progress(SpinnerColumn(finished_text="•"), TextColumn("{task.description:<10}"),
                             BarColumn(), TextColumn("{task.fields[count]}", markup=False), Elapsed(),
                             TextColumn("{task.fields[eta]}", markup=False),
                             TextColumn("{task.fields[detail]}", markup=False),
                             console=self.console, redirect_stdout=False, redirect_stderr=False)
        self.progress = JobProgress()
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> BarDisplay:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def update(self, event, job) -> None:
        self.progress.update(event, job)
        for s in self.progress.stages.values():
            if s.state != WAITING:
                self._draw(s)

    def _draw(self, s: StageState) -> None:
        eta = s.eta_seconds()
        fields = {"count": f"{s.done}/{s.total} {s.unit}" if s.total else "", "took": s.took(),
                  "eta": f"ETA {duration(eta)}" if eta is not None else "",
                  "detail": s.shown_detail if s.state in (RUNNING, DONE) else f"[{s.state}] {s.shown_detail}"}
        if s.stage not in self._tasks:
            self._tasks[s.stage] = self.bars.add_task(s.label, total=None, **fields)
        task = self._tasks[s.stage]
        if s.state in ENDED:
            total = s.total or 1
            self.bars.update(task, total=total, completed=s.done if s.state != DONE else total, **fields)
            self.bars.stop_task(task)
        else:
            self.bars.update(task, total=s.total or None, completed=s.done, **fields)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def wants_bars(stream: TextIO, plain: bool) -> bool:
    """Bars only for a person at a terminal; plain lines for pipes, files, CI logs, or when asked."""
    isatty = getattr(stream, "isatty", None)
    return not plain and bool(isatty and isatty())


def display(stream: TextIO | None = None, *, plain: bool = False, interval: float = 10.0
            ) -> PlainDisplay | BarDisplay:
    """The display for `stream` (default stdout): bars on a terminal, else rate-bounded lines."""
    stream = stream or sys.stdout
    return BarDisplay(stream) if wants_bars(stream, plain) else PlainDisplay(stream, interval)
