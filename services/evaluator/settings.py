"""The evaluator's settings: the shared service settings plus its own CLASSFORGE_EVALUATOR_* knobs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env
from services.evaluator.engine import Options


@dataclass(frozen=True)
class EvaluatorSettings(ServiceSettings):
    work_dir: str = env("CLASSFORGE_EVALUATOR_WORK_DIR", "/tmp/classforge-evaluator",
                        "local scratch space: downloaded models, cached record shards, the report being written")
    batch_size: int = env("CLASSFORGE_EVALUATOR_BATCH_SIZE", 64, "images per call of the serving signature")
    gallery_per_cell: int = env("CLASSFORGE_EVALUATOR_GALLERY_PER_CELL", 16,
                                "error-gallery images per (true, predicted) pair")
    mislabel_top: int = env("CLASSFORGE_EVALUATOR_MISLABEL_TOP", 100, "suspected mislabels listed per task")
    near_duplicate_distance: int = env("CLASSFORGE_EVALUATOR_NEAR_DUPLICATE_BITS", 4,
                                       "largest dHash Hamming distance (of 64 bits) of two near-duplicates")
    cam_per_class: int = env("CLASSFORGE_EVALUATOR_CAM_PER_CLASS", 2,
                             "Grad-CAM images per class, each of correct and wrong predictions")
    default_max_regression: float = env("CLASSFORGE_EVALUATOR_DEFAULT_MAX_REGRESSION", 0.0,
                                        "allowed accuracy drop against the served model when the job's gates say 0")
    default_max_class_regression: float = env("CLASSFORGE_EVALUATOR_DEFAULT_MAX_CLASS_REGRESSION", 0.0,
                                              "allowed per-class recall drop when the job's gates say 0")

    def options(self) -> Options:
        return Options(batch_size=self.batch_size, gallery_per_cell=self.gallery_per_cell,
                       mislabel_top=self.mislabel_top, near_duplicate_distance=self.near_duplicate_distance,
                       cam_per_class=self.cam_per_class)
