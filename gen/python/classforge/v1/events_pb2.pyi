import datetime

from classforge.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("event_id", "job_id", "occurred_at", "producer", "job_submitted", "cancel_requested", "dataset_prepared", "records_built", "training_progress", "training_completed", "evaluation_completed", "model_deployed", "stage_failed", "job_cancelled", "stage_heartbeat")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    JOB_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    DATASET_PREPARED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_BUILT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    STAGE_FAILED_FIELD_NUMBER: _ClassVar[int]
    JOB_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    STAGE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    job_id: str
    occurred_at: _timestamp_pb2.Timestamp
    producer: str
    job_submitted: JobSubmitted
    cancel_requested: CancelRequested
    dataset_prepared: DatasetPrepared
    records_built: RecordsBuilt
    training_progress: TrainingProgress
    training_completed: TrainingCompleted
    evaluation_completed: EvaluationCompleted
    model_deployed: ModelDeployed
    stage_failed: StageFailed
    job_cancelled: JobCancelled
    stage_heartbeat: StageHeartbeat
    def __init__(self, event_id: _Optional[str] = ..., job_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[str] = ..., job_submitted: _Optional[_Union[JobSubmitted, _Mapping]] = ..., cancel_requested: _Optional[_Union[CancelRequested, _Mapping]] = ..., dataset_prepared: _Optional[_Union[DatasetPrepared, _Mapping]] = ..., records_built: _Optional[_Union[RecordsBuilt, _Mapping]] = ..., training_progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., training_completed: _Optional[_Union[TrainingCompleted, _Mapping]] = ..., evaluation_completed: _Optional[_Union[EvaluationCompleted, _Mapping]] = ..., model_deployed: _Optional[_Union[ModelDeployed, _Mapping]] = ..., stage_failed: _Optional[_Union[StageFailed, _Mapping]] = ..., job_cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ..., stage_heartbeat: _Optional[_Union[StageHeartbeat, _Mapping]] = ...) -> None: ...

class JobSubmitted(_message.Message):
    __slots__ = ("spec", "owner")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.JobSpec
    owner: str
    def __init__(self, spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class CancelRequested(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DatasetPrepared(_message.Message):
    __slots__ = ("dataset", "train_count", "val_count", "test_count", "rejected_count")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    VAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    train_count: int
    val_count: int
    test_count: int
    rejected_count: int
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., train_count: _Optional[int] = ..., val_count: _Optional[int] = ..., test_count: _Optional[int] = ..., rejected_count: _Optional[int] = ...) -> None: ...

class RecordsBuilt(_message.Message):
    __slots__ = ("dataset_id", "records_uri", "train_examples", "val_examples")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    records_uri: str
    train_examples: int
    val_examples: int
    def __init__(self, dataset_id: _Optional[str] = ..., records_uri: _Optional[str] = ..., train_examples: _Optional[int] = ..., val_examples: _Optional[int] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("stage", "epoch", "step", "total_loss", "data_loss", "regularization_loss", "images_per_second", "metrics", "total_steps", "plan")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    DATA_LOSS_FIELD_NUMBER: _ClassVar[int]
    REGULARIZATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    stage: int
    epoch: int
    step: int
    total_loss: float
    data_loss: float
    regularization_loss: float
    images_per_second: float
    metrics: _containers.ScalarMap[str, float]
    total_steps: int
    plan: str
    def __init__(self, stage: _Optional[int] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_loss: _Optional[float] = ..., data_loss: _Optional[float] = ..., regularization_loss: _Optional[float] = ..., images_per_second: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., total_steps: _Optional[int] = ..., plan: _Optional[str] = ...) -> None: ...

class TrainingCompleted(_message.Message):
    __slots__ = ("model", "history_uri", "records_uri")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HISTORY_URI_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    history_uri: str
    records_uri: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., history_uri: _Optional[str] = ..., records_uri: _Optional[str] = ...) -> None: ...

class EvaluationCompleted(_message.Message):
    __slots__ = ("model", "blessed", "reasons", "report_uri", "accuracy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLESSED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    REPORT_URI_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    blessed: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    report_uri: str
    accuracy: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., blessed: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., report_uri: _Optional[str] = ..., accuracy: _Optional[float] = ...) -> None: ...

class ModelDeployed(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class StageFailed(_message.Message):
    __slots__ = ("stage", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.JobStage
    message: str
    def __init__(self, stage: _Optional[_Union[_common_pb2.JobStage, str]] = ..., message: _Optional[str] = ...) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ("stage", "checkpoint_uri")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.JobStage
    checkpoint_uri: str
    def __init__(self, stage: _Optional[_Union[_common_pb2.JobStage, str]] = ..., checkpoint_uri: _Optional[str] = ...) -> None: ...

class StageHeartbeat(_message.Message):
    __slots__ = ("stage", "activity", "done", "total", "unit", "queue_position")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.JobStage
    activity: str
    done: int
    total: int
    unit: str
    queue_position: int
    def __init__(self, stage: _Optional[_Union[_common_pb2.JobStage, str]] = ..., activity: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...
