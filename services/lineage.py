"""Lineage of a job, read from the manifests in the object store: the dataset version and its parents,
the records build, the model (and the earlier job it started from), the report and the served version.

Each link is found from the one before it, as the stages recorded it: the model manifest names its
records, the records manifest its dataset, a dataset version its parent; the dataset of a job that has
not trained yet comes from ingest's record of the job. A link that does not exist (yet) is reported as
missing with the reason, never guessed. Works on any ObjectStore (the embedded run's local store, MinIO).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.common import artefacts
from services.common.errors import ClassforgeError
from services.common.storage import ObjectNotFound, ObjectStore

MAX_PARENTS = 100  # a loop in hand-edited manifests must not hang the command


@dataclass
class Link:
    kind: str  # dataset, parent dataset, records, model, report, served
    ident: str  # "" when missing
    key: str  # the object the facts were read from
    facts: dict = field(default_factory=dict)
    missing: str = ""  # why there is no such link

    def as_dict(self) -> dict:
        return {"kind": self.kind, "id": self.ident, "key": self.key, "facts": self.facts,
                **({"missing": self.missing} if self.missing else {})}


def _json(store: ObjectStore, key: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(key))
    except ObjectNotFound:
        return None


def trace(store: ObjectStore, job_id: str) -> list[Link]:
    """The links in the order dataset version -> parent datasets -> records -> model -> report -> served."""
    from services.inference.publisher import job_state_key, serving_state_key
    from services.ingest.domain import IngestDomain

    model_key = artefacts.model_prefix(job_id) + artefacts.MANIFEST
    model = _json(store, model_key)
    records_link, dataset_id, dataset_source = None, "", ""
    if model is not None and model.get("records_uri"):
        records_link, dataset_id = _records(store, model["records_uri"])
        dataset_source = records_link.key
    if not dataset_id:
        marker_key = IngestDomain.job_marker_key(job_id)
        marker = _json(store, marker_key) or {}
        dataset_id, dataset_source = marker.get("dataset_id", ""), marker_key
    links = _datasets(store, dataset_id, dataset_source)
    if records_link is None:
        records_link = Link("records", "", "", missing="no model manifest names its records yet")
    links.append(records_link)

    if model is None:
        links.append(Link("model", "", model_key, missing=f"{model_key} does not exist (not trained, or not yet)"))
    else:
        facts = {"epochs": model.get("epochs"), "saved_model": model.get("saved_model"),
                 "tasks": {t["name"]: len(t.get("classes", [])) for t in model.get("labels", {}).get("tasks", [])}}
        if model.get("initial_weights"):
            start = model["initial_weights"]
            facts["started_from"] = {"job_id": start["job_id"], "whole_model": start["whole_model"]}
        links.append(Link("model", job_id, model_key, facts))

    report_key = artefacts.report_prefix(job_id) + artefacts.EVALUATION_JSON
    evaluation = _json(store, report_key)
    if evaluation is None:
        links.append(Link("report", "", report_key, missing=f"{report_key} does not exist (not evaluated yet)"))
    else:
        facts = {"split": evaluation.get("split"), "examples": evaluation.get("examples"),
                 "accuracy": {t["task"]: t.get("accuracy") for t in evaluation.get("tasks", [])},
                 "blessed": evaluation.get("blessing", {}).get("blessed")}
        links.append(Link("report", job_id, report_key, facts))

    published_key = job_state_key(job_id, "published.json")
    published = _json(store, published_key)
    if published is None:
        links.append(Link("served", "", published_key, missing="no version of this job's model was published"))
    else:
        name, version = published["model_name"], published["version"]
        serving = (_json(store, serving_state_key(name)) or {}).get("serving")
        facts = {"model_name": name, "version": version, "published_at": published.get("published_at"),
                 "serving_now": serving == version, "version_serving_now": serving}
        links.append(Link("served", f"{name} v{version}", published_key, facts))
    return links


def _records(store: ObjectStore, records_uri: str) -> tuple[Link, str]:
    try:
        prefix = store.key_from_uri(records_uri.rstrip("/"))
    except ClassforgeError as exc:
        return Link("records", "", records_uri, missing=f"not in this object store: {exc.message}"), ""
    key = f"{prefix}/{artefacts.MANIFEST}"
    manifest = _json(store, key)
    if manifest is None:
        return Link("records", "", key, missing=f"{key} does not exist"), ""
    facts = {"counts": manifest.get("counts"), "options": manifest.get("options"),
             "dataset_manifest_sha256": manifest.get("dataset_manifest_sha256")}
    return Link("records", manifest.get("build_id", prefix), key, facts), manifest.get("dataset_id", "")


def _datasets(store: ObjectStore, dataset_id: str, found_in: str) -> list[Link]:
    if not dataset_id:
        return [Link("dataset", "", found_in, missing="no record names this job's dataset yet")]
    links: list[Link] = []
    seen: set[str] = set()
    while dataset_id and dataset_id not in seen and len(links) < MAX_PARENTS:
        seen.add(dataset_id)
        kind = "dataset" if not links else "parent dataset"
        key = artefacts.dataset_prefix(dataset_id) + artefacts.MANIFEST
        manifest = _json(store, key)
        if manifest is None:
            links.append(Link(kind, dataset_id, key, missing=f"{key} does not exist"))
            break
        facts = {"version": manifest.get("lineage", {}).get("version", 1), "counts": {
            k: manifest["counts"].get(k) for k in ("images", "train", "val", "test")}, "source": manifest.get("source")}
        if manifest.get("corrections"):
            c = manifest["corrections"]
            facts["corrections"] = {"relabeled": c["relabeled"], "dropped": c["dropped"], "kept": c["kept"]}
            facts["label_changes"] = {f"{task}/{label}": d["change"]
                                      for task, labels in manifest.get("label_counts_diff", {}).items()
                                      for label, d in labels.items() if d["change"]}
        links.append(Link(kind, dataset_id, key, facts))
        dataset_id = manifest.get("parent", {}).get("dataset_id", "")
    return links


def render(job_id: str, links: list[Link]) -> str:
    lines = [f"lineage of job {job_id}"]
    width = max(len(link.kind) for link in links)
    for link in links:
        if link.missing:
            lines.append(f"  {link.kind:<{width}}  (none) {link.missing}")
            continue
        lines.append(f"  {link.kind:<{width}}  {link.ident}  {_facts(link)}")
        lines.append(f"  {'':<{width}}    from {link.key}")
    return "\n".join(lines)


def _facts(link: Link) -> str:
    f = link.facts
    if link.kind.endswith("dataset"):
        counts = f["counts"]
        text = (f"version {f['version']}: {counts['images']} images (train list {counts['train']}, val {counts['val']}"
                f", test {counts['test']})")
        if "corrections" in f:
            c = f["corrections"]
            changes = ", ".join(f"{k} {v:+d}" for k, v in f["label_changes"].items())
            text += f"; review: relabeled {c['relabeled']}, dropped {c['dropped']}, kept {c['kept']} ({changes})"
        else:
            source = f.get("source") or {}
            text += f"; from {source.get('kind', '?')} {source.get('path') or source.get('prefix') or ''}".rstrip()
        return text
    if link.kind == "records":
        return "examples " + ", ".join(f"{k} {v}" for k, v in (f.get("counts") or {}).items())
    if link.kind == "model":
        text = f"{f['epochs']} epochs; classes " + ", ".join(f"{k} {v}" for k, v in f["tasks"].items())
        if "started_from" in f:
            start = f["started_from"]
            text += (f"; started from job {start['job_id']}'s "
                     + ("whole model" if start["whole_model"] else "backbone (head rebuilt)"))
        return text
    if link.kind == "report":
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in f["accuracy"].items() if v is not None)
        return f"accuracy {accuracy} on {f['examples']} {f['split']} images; " + (
            "blessed" if f["blessed"] else "not blessed")
    if link.kind == "served":
        now = "serving now" if f["serving_now"] else f"not serving now (v{f['version_serving_now']} answers)"
        return f"published {f['published_at']}; {now}"
    return ""
