"""Where each stage's artefacts live in the one bucket (docs/architecture.md, "Artefact layout"), written
once: the stages that write them and the tools that read them across stages (`classforge lineage`) use
these names. Every artefact's manifest.json (evaluation.json for a report) is written last."""

from __future__ import annotations

DATASETS_PREFIX = "datasets/"
RECORDS_PREFIX = "records/"
MODELS_PREFIX = "models/"
REPORTS_PREFIX = "reports/"
COMPARISONS_PREFIX = "comparisons/"  # comparisons/<job_a>__<job_b>/, comparison.json last
MANIFEST = "manifest.json"
EVALUATION_JSON = "evaluation.json"  # a report's manifest
# models/<job>/model.keras, beside saved_model/: the whole Keras model (no custom objects), which the
# evaluator loads for Grad-CAM without any trainer code.
KERAS_MODEL = "model.keras"


def dataset_prefix(dataset_id: str) -> str:
    return f"{DATASETS_PREFIX}{dataset_id}/"


def records_prefix(build_id: str) -> str:
    return f"{RECORDS_PREFIX}{build_id}/"


def model_prefix(job_id: str) -> str:
    return f"{MODELS_PREFIX}{job_id}/"


def report_prefix(job_id: str) -> str:
    return f"{REPORTS_PREFIX}{job_id}/"
