from classforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassMetrics(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class TaskMetrics(_message.Message):
    __slots__ = ("task", "accuracy", "balanced_accuracy", "top_k_accuracy", "expected_calibration_error", "classes")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CALIBRATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    task: str
    accuracy: float
    balanced_accuracy: float
    top_k_accuracy: float
    expected_calibration_error: float
    classes: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    def __init__(self, task: _Optional[str] = ..., accuracy: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., top_k_accuracy: _Optional[float] = ..., expected_calibration_error: _Optional[float] = ..., classes: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("job_id", "model", "tasks", "blessed", "reasons", "report_uri")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    BLESSED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    REPORT_URI_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: _common_pb2.ModelRef
    tasks: _containers.RepeatedCompositeFieldContainer[TaskMetrics]
    blessed: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    report_uri: str
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskMetrics, _Mapping]]] = ..., blessed: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., report_uri: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("job_id", "model", "records_uri", "gates")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: _common_pb2.ModelRef
    records_uri: str
    gates: _common_pb2.EvaluationGates
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., records_uri: _Optional[str] = ..., gates: _Optional[_Union[_common_pb2.EvaluationGates, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: EvaluationReport
    def __init__(self, report: _Optional[_Union[EvaluationReport, _Mapping]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: EvaluationReport
    def __init__(self, report: _Optional[_Union[EvaluationReport, _Mapping]] = ...) -> None: ...

class CompareEvaluationsRequest(_message.Message):
    __slots__ = ("job_a", "job_b")
    JOB_A_FIELD_NUMBER: _ClassVar[int]
    JOB_B_FIELD_NUMBER: _ClassVar[int]
    job_a: str
    job_b: str
    def __init__(self, job_a: _Optional[str] = ..., job_b: _Optional[str] = ...) -> None: ...

class MetricChange(_message.Message):
    __slots__ = ("metric", "a", "b", "delta")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    metric: str
    a: float
    b: float
    delta: float
    def __init__(self, metric: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class TaskComparison(_message.Message):
    __slots__ = ("task", "overall", "right_to_wrong", "wrong_to_right", "matched_images")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    RIGHT_TO_WRONG_FIELD_NUMBER: _ClassVar[int]
    WRONG_TO_RIGHT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    task: str
    overall: _containers.RepeatedCompositeFieldContainer[MetricChange]
    right_to_wrong: int
    wrong_to_right: int
    matched_images: int
    def __init__(self, task: _Optional[str] = ..., overall: _Optional[_Iterable[_Union[MetricChange, _Mapping]]] = ..., right_to_wrong: _Optional[int] = ..., wrong_to_right: _Optional[int] = ..., matched_images: _Optional[int] = ...) -> None: ...

class CompareEvaluationsResponse(_message.Message):
    __slots__ = ("comparison_uri", "same_test_images", "tasks", "notes")
    COMPARISON_URI_FIELD_NUMBER: _ClassVar[int]
    SAME_TEST_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    comparison_uri: str
    same_test_images: bool
    tasks: _containers.RepeatedCompositeFieldContainer[TaskComparison]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, comparison_uri: _Optional[str] = ..., same_test_images: _Optional[bool] = ..., tasks: _Optional[_Iterable[_Union[TaskComparison, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
