from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Backbone(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKBONE_UNSPECIFIED: _ClassVar[Backbone]
    BACKBONE_RESNET18: _ClassVar[Backbone]
    BACKBONE_RESNET34: _ClassVar[Backbone]
    BACKBONE_RESNET50: _ClassVar[Backbone]
    BACKBONE_RESNET101: _ClassVar[Backbone]
    BACKBONE_MOBILENET_V2: _ClassVar[Backbone]
    BACKBONE_EFFICIENTNET_B0: _ClassVar[Backbone]
    BACKBONE_SMALL_CNN: _ClassVar[Backbone]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]
    LR_SCHEDULE_STEP: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]

class JobStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STAGE_UNSPECIFIED: _ClassVar[JobStage]
    JOB_STAGE_INGEST: _ClassVar[JobStage]
    JOB_STAGE_RECORDS: _ClassVar[JobStage]
    JOB_STAGE_TRAINING: _ClassVar[JobStage]
    JOB_STAGE_EVALUATION: _ClassVar[JobStage]
    JOB_STAGE_DEPLOYMENT: _ClassVar[JobStage]

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_PENDING: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_SUCCEEDED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]
BACKBONE_UNSPECIFIED: Backbone
BACKBONE_RESNET18: Backbone
BACKBONE_RESNET34: Backbone
BACKBONE_RESNET50: Backbone
BACKBONE_RESNET101: Backbone
BACKBONE_MOBILENET_V2: Backbone
BACKBONE_EFFICIENTNET_B0: Backbone
BACKBONE_SMALL_CNN: Backbone
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_SGD: Optimizer
OPTIMIZER_ADAM: Optimizer
OPTIMIZER_ADAMW: Optimizer
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
LR_SCHEDULE_STEP: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule
JOB_STAGE_UNSPECIFIED: JobStage
JOB_STAGE_INGEST: JobStage
JOB_STAGE_RECORDS: JobStage
JOB_STAGE_TRAINING: JobStage
JOB_STAGE_EVALUATION: JobStage
JOB_STAGE_DEPLOYMENT: JobStage
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_PENDING: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_SUCCEEDED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus

class DataSource(_message.Message):
    __slots__ = ("object_prefix", "dataset_id", "local_path", "list_file")
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    LIST_FILE_FIELD_NUMBER: _ClassVar[int]
    object_prefix: str
    dataset_id: str
    local_path: str
    list_file: str
    def __init__(self, object_prefix: _Optional[str] = ..., dataset_id: _Optional[str] = ..., local_path: _Optional[str] = ..., list_file: _Optional[str] = ...) -> None: ...

class DatasetOptions(_message.Message):
    __slots__ = ("max_class_ratio", "val_fraction", "test_fraction", "seed", "max_per_class", "min_side", "max_pixels")
    MAX_CLASS_RATIO_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    max_class_ratio: float
    val_fraction: float
    test_fraction: float
    seed: int
    max_per_class: int
    min_side: int
    max_pixels: int
    def __init__(self, max_class_ratio: _Optional[float] = ..., val_fraction: _Optional[float] = ..., test_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., max_per_class: _Optional[int] = ..., min_side: _Optional[int] = ..., max_pixels: _Optional[int] = ...) -> None: ...

class Augmentation(_message.Message):
    __slots__ = ("crop_scale_min", "crop_scale_max", "crop_aspect_min", "crop_aspect_max", "box_jitter", "horizontal_flip", "brightness", "contrast", "saturation", "hue", "jpeg_quality_min", "jpeg_quality_max", "rescale_min", "rescale_max", "multi_scale_sizes")
    CROP_SCALE_MIN_FIELD_NUMBER: _ClassVar[int]
    CROP_SCALE_MAX_FIELD_NUMBER: _ClassVar[int]
    CROP_ASPECT_MIN_FIELD_NUMBER: _ClassVar[int]
    CROP_ASPECT_MAX_FIELD_NUMBER: _ClassVar[int]
    BOX_JITTER_FIELD_NUMBER: _ClassVar[int]
    HORIZONTAL_FLIP_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SATURATION_FIELD_NUMBER: _ClassVar[int]
    HUE_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_MIN_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_MAX_FIELD_NUMBER: _ClassVar[int]
    RESCALE_MIN_FIELD_NUMBER: _ClassVar[int]
    RESCALE_MAX_FIELD_NUMBER: _ClassVar[int]
    MULTI_SCALE_SIZES_FIELD_NUMBER: _ClassVar[int]
    crop_scale_min: float
    crop_scale_max: float
    crop_aspect_min: float
    crop_aspect_max: float
    box_jitter: float
    horizontal_flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float
    jpeg_quality_min: int
    jpeg_quality_max: int
    rescale_min: float
    rescale_max: float
    multi_scale_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, crop_scale_min: _Optional[float] = ..., crop_scale_max: _Optional[float] = ..., crop_aspect_min: _Optional[float] = ..., crop_aspect_max: _Optional[float] = ..., box_jitter: _Optional[float] = ..., horizontal_flip: _Optional[bool] = ..., brightness: _Optional[float] = ..., contrast: _Optional[float] = ..., saturation: _Optional[float] = ..., hue: _Optional[float] = ..., jpeg_quality_min: _Optional[int] = ..., jpeg_quality_max: _Optional[int] = ..., rescale_min: _Optional[float] = ..., rescale_max: _Optional[float] = ..., multi_scale_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class TrainingStage(_message.Message):
    __slots__ = ("epochs", "learning_rate", "freeze_backbone", "skip")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    FREEZE_BACKBONE_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    learning_rate: float
    freeze_backbone: bool
    skip: bool
    def __init__(self, epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., freeze_backbone: _Optional[bool] = ..., skip: _Optional[bool] = ...) -> None: ...

class TaskLoss(_message.Message):
    __slots__ = ("task", "weight", "regression")
    TASK_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_FIELD_NUMBER: _ClassVar[int]
    task: str
    weight: float
    regression: bool
    def __init__(self, task: _Optional[str] = ..., weight: _Optional[float] = ..., regression: _Optional[bool] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("input_size", "batch_size", "seed", "backbone", "squeeze_excitation", "group_norm", "small_input_stem", "initial_weights_uri", "augmentation", "label_smoothing", "class_weights", "center_loss_weight", "task_losses", "weight_decay", "optimizer", "momentum", "nesterov", "lr_schedule", "warmup_epochs", "head_stage", "full_stage", "validate_every_epochs", "early_stopping_patience", "mixed_precision", "xla", "max_steps_per_epoch", "width_multiplier", "dropout", "recipe", "time_budget", "mirror_invariant", "workers")
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    SQUEEZE_EXCITATION_FIELD_NUMBER: _ClassVar[int]
    GROUP_NORM_FIELD_NUMBER: _ClassVar[int]
    SMALL_INPUT_STEM_FIELD_NUMBER: _ClassVar[int]
    INITIAL_WEIGHTS_URI_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    CLASS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CENTER_LOSS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TASK_LOSSES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    HEAD_STAGE_FIELD_NUMBER: _ClassVar[int]
    FULL_STAGE_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_EVERY_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIXED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    XLA_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MIRROR_INVARIANT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    input_size: int
    batch_size: int
    seed: int
    backbone: Backbone
    squeeze_excitation: bool
    group_norm: bool
    small_input_stem: bool
    initial_weights_uri: str
    augmentation: Augmentation
    label_smoothing: float
    class_weights: bool
    center_loss_weight: float
    task_losses: _containers.RepeatedCompositeFieldContainer[TaskLoss]
    weight_decay: float
    optimizer: Optimizer
    momentum: float
    nesterov: bool
    lr_schedule: LrSchedule
    warmup_epochs: int
    head_stage: TrainingStage
    full_stage: TrainingStage
    validate_every_epochs: int
    early_stopping_patience: int
    mixed_precision: bool
    xla: bool
    max_steps_per_epoch: int
    width_multiplier: float
    dropout: float
    recipe: str
    time_budget: str
    mirror_invariant: bool
    workers: int
    def __init__(self, input_size: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., backbone: _Optional[_Union[Backbone, str]] = ..., squeeze_excitation: _Optional[bool] = ..., group_norm: _Optional[bool] = ..., small_input_stem: _Optional[bool] = ..., initial_weights_uri: _Optional[str] = ..., augmentation: _Optional[_Union[Augmentation, _Mapping]] = ..., label_smoothing: _Optional[float] = ..., class_weights: _Optional[bool] = ..., center_loss_weight: _Optional[float] = ..., task_losses: _Optional[_Iterable[_Union[TaskLoss, _Mapping]]] = ..., weight_decay: _Optional[float] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ..., lr_schedule: _Optional[_Union[LrSchedule, str]] = ..., warmup_epochs: _Optional[int] = ..., head_stage: _Optional[_Union[TrainingStage, _Mapping]] = ..., full_stage: _Optional[_Union[TrainingStage, _Mapping]] = ..., validate_every_epochs: _Optional[int] = ..., early_stopping_patience: _Optional[int] = ..., mixed_precision: _Optional[bool] = ..., xla: _Optional[bool] = ..., max_steps_per_epoch: _Optional[int] = ..., width_multiplier: _Optional[float] = ..., dropout: _Optional[float] = ..., recipe: _Optional[str] = ..., time_budget: _Optional[str] = ..., mirror_invariant: _Optional[bool] = ..., workers: _Optional[int] = ...) -> None: ...

class PlanChoice(_message.Message):
    __slots__ = ("field", "value", "reason")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    reason: str
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TrainingPlan(_message.Message):
    __slots__ = ("recipe", "choices", "time_budget_seconds", "measured_images_per_second", "measured_eval_images_per_second", "planned_training_seconds", "evaluation_margin_seconds", "planned_epochs", "actual_training_seconds", "text")
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MEASURED_EVAL_IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PLANNED_TRAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_MARGIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_TRAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    choices: _containers.RepeatedCompositeFieldContainer[PlanChoice]
    time_budget_seconds: float
    measured_images_per_second: float
    measured_eval_images_per_second: float
    planned_training_seconds: float
    evaluation_margin_seconds: float
    planned_epochs: int
    actual_training_seconds: float
    text: str
    def __init__(self, recipe: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[PlanChoice, _Mapping]]] = ..., time_budget_seconds: _Optional[float] = ..., measured_images_per_second: _Optional[float] = ..., measured_eval_images_per_second: _Optional[float] = ..., planned_training_seconds: _Optional[float] = ..., evaluation_margin_seconds: _Optional[float] = ..., planned_epochs: _Optional[int] = ..., actual_training_seconds: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class ConfusionBound(_message.Message):
    __slots__ = ("true_label", "predicted_label", "max_rate")
    TRUE_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_RATE_FIELD_NUMBER: _ClassVar[int]
    true_label: str
    predicted_label: str
    max_rate: float
    def __init__(self, true_label: _Optional[str] = ..., predicted_label: _Optional[str] = ..., max_rate: _Optional[float] = ...) -> None: ...

class EvaluationGates(_message.Message):
    __slots__ = ("min_accuracy", "min_class_recall", "confusion_bounds", "max_regression", "max_class_regression")
    MIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MIN_CLASS_RECALL_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASS_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    min_accuracy: float
    min_class_recall: float
    confusion_bounds: _containers.RepeatedCompositeFieldContainer[ConfusionBound]
    max_regression: float
    max_class_regression: float
    def __init__(self, min_accuracy: _Optional[float] = ..., min_class_recall: _Optional[float] = ..., confusion_bounds: _Optional[_Iterable[_Union[ConfusionBound, _Mapping]]] = ..., max_regression: _Optional[float] = ..., max_class_regression: _Optional[float] = ...) -> None: ...

class DeployOptions(_message.Message):
    __slots__ = ("deploy", "model_name")
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    deploy: bool
    model_name: str
    def __init__(self, deploy: _Optional[bool] = ..., model_name: _Optional[str] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("display_name", "source", "dataset", "training", "gates", "deploy")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    source: DataSource
    dataset: DatasetOptions
    training: TrainingConfig
    gates: EvaluationGates
    deploy: DeployOptions
    def __init__(self, display_name: _Optional[str] = ..., source: _Optional[_Union[DataSource, _Mapping]] = ..., dataset: _Optional[_Union[DatasetOptions, _Mapping]] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., gates: _Optional[_Union[EvaluationGates, _Mapping]] = ..., deploy: _Optional[_Union[DeployOptions, _Mapping]] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("dataset_id", "uri", "tasks")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    uri: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset_id: _Optional[str] = ..., uri: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("job_id", "uri", "model_name", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    uri: str
    model_name: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., uri: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
