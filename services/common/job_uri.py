"""`job://<job id>`: an earlier job's model, named in a spec's `training.initial_weights_uri` (retraining from
the last model). The jobs service checks the form at submit, the trainer resolves it to
`models/<job id>/`; both read it here."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument, shown

JOB_SCHEME = "job://"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def job_uri(job_id: str) -> str:
    return f"{JOB_SCHEME}{job_id}"


def job_from_uri(uri: str, field: str = "config.initial_weights_uri") -> str | None:
    """The job id of a `job://<id>` URI; None for any other URI; InvalidArgument for a malformed one."""
    if not uri.startswith(JOB_SCHEME):
        return None
    job_id = uri[len(JOB_SCHEME):].rstrip("/")
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument(field, f"{shown(uri)} is not job://<job id> (letters, digits, '.', '_', '-')")
    return job_id


# What fixes the shapes of a model's weights: a retrained model must be built the same way to load them.
ARCHITECTURE_FIELDS = ("backbone", "width_multiplier", "input_size", "small_input_stem", "group_norm",
                       "squeeze_excitation")


def retrain_from(training, earlier, job_id: str):
    """The TrainingConfig of a run that starts from `job_id`'s model: `training` (the new spec's) with
    initial_weights_uri = job://<job_id>, and the earlier config's architecture fields wherever the new
    one leaves them unset (zero/false). Everything else (stages, optimiser, augmentation) is the new
    spec's, or the trainer's defaults."""
    merged = type(training)()
    merged.CopyFrom(training)
    for name in ARCHITECTURE_FIELDS:
        if not getattr(merged, name):
            setattr(merged, name, getattr(earlier, name))
    merged.initial_weights_uri = job_uri(job_id)
    return merged
