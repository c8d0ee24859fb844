"""The servable manager of the model server stand-in: which versions of which models are loaded, in
which state, and which one answers a request. No gRPC here (see servicer.py).

States follow TF Serving's ModelVersionStatus: a version found on disk and wanted by the policy goes
START -> LOADING -> AVAILABLE (or END with the load error in `error`); a version the policy no longer
wants goes UNLOADING -> END. Requests hold a reference to the loaded version they resolved, so a
version being unloaded finishes the calls already running on it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus
from tensorflow_serving.config import model_server_config_pb2

from services.common.errors import ClassforgeError, Unavailable, status_code
from services.model_server import metrics

log = logging.getLogger("classforge.model_server")

State = ModelVersionStatus.State
SAVED_MODEL_PB = "saved_model.pb"
DEFAULT_SIGNATURE = "serving_default"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ServingError(ClassforgeError):
    """An error with TF Serving's status code and message, so clients treat both servers alike. `error_code`
    is TensorFlow's (tf.errors.NOT_FOUND …), the same number as gRPC's code, which the interceptor sends."""

    def __init__(self, error_code: int, message: str):
        super().__init__(message)
        self.code = status_code(error_code)


def tf_error_message(exc: tf.errors.OpError) -> str:
    """The line of a TF error that says what went wrong, without the graph-execution preamble."""
    for line in (exc.message or str(exc)).splitlines():
        text = line.strip()
        if text and not text.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")):
            return text.split(" [[")[0][:500]
    return type(exc).__name__


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, config: model_server_config_pb2.ModelConfig, default_num_versions: int) -> VersionPolicy:
        policy = config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            if not policy.specific.versions:
                raise ServingError(tf.errors.INVALID_ARGUMENT,
                                   f"model {config.name}: the specific version policy lists no versions")
            return cls("specific", versions=frozenset(policy.specific.versions))
        if which == "latest":
            return cls("latest", num_versions=max(1, policy.latest.num_versions or 1))
        return cls("latest", num_versions=max(1, default_num_versions))

    def aspired(self, on_disk: list[int]) -> set[int]:
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return self.versions & set(on_disk)
        return set(sorted(on_disk)[-self.num_versions:])


class LoadedVersion:
    """One version of a SavedModel, loaded: its serving signatures and their SignatureDefs."""

    def __init__(self, path: Path):
        self.path = path
        self.module = tf.saved_model.load(str(path), tags=["serve"])
        self.signatures = dict(self.module.signatures)
        saved = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_PB).read_bytes())
        graph = next((m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags), saved.meta_graphs[0])
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = {
            key: value for key, value in graph.signature_def.items() if not key.startswith("__")}

    def predict(self, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter: list[str]) -> dict[str, np.ndarray]:
        name = signature_name or DEFAULT_SIGNATURE
        function = self.signatures.get(name)
        if function is None:
            raise ServingError(tf.errors.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        expected = set(self.signature_defs[name].inputs) if name in self.signature_defs else set(inputs)
        missing, extra = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
        if missing or extra:
            raise ServingError(tf.errors.INVALID_ARGUMENT,
                               f"input tensor alias not found in signature: {', '.join(extra or missing)}. "
                               f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}.")
        try:
            outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.OpError as exc:
            # A decode op failing on a bad image is INVALID_ARGUMENT in TF Serving too.
            raise ServingError(exc.error_code, tf_error_message(exc)) from None
        except (TypeError, ValueError) as exc:  # dtype or shape does not fit the signature
            raise ServingError(tf.errors.INVALID_ARGUMENT, str(exc).splitlines()[0]) from None
        for key in output_filter:
            if key not in outputs:
                raise ServingError(tf.errors.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {key}")
        chosen = output_filter or list(outputs)
        return {key: outputs[key].numpy() for key in chosen}


@dataclass
class VersionEntry:
    version: int
    state: int = State.START
    error: str = ""
    loaded: LoadedVersion | None = None


@dataclass
class ModelEntry:
    name: str
    base_path: Path
    policy: VersionPolicy
    labels: dict[str, int] = field(default_factory=dict)
    versions: dict[int, VersionEntry] = field(default_factory=dict)

    def available(self) -> list[int]:
        return sorted(v for v, e in self.versions.items() if e.state == State.AVAILABLE and e.loaded is not None)


def versions_on_disk(model_dir: Path) -> list[int]:
    """Integer-named children holding a saved_model.pb: a version still being copied has none yet."""
    try:
        children = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for child in children:
        if child.name.isdigit() and child.is_dir() and (Path(child.path) / SAVED_MODEL_PB).is_file():
            found.append(int(child.name))
    return sorted(found)


class ModelServerCore:
    def __init__(self, base_path: str | os.PathLike, *, poll_seconds: float = 1.0, num_versions: int = 1,
                 config: model_server_config_pb2.ModelServerConfig | None = None,
                 allow_labels_for_unavailable: bool = False):
        self.base_path = Path(base_path)
        self.poll_seconds = poll_seconds
        self.num_versions = num_versions
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (load/unload round) at a time
        self._models: dict[str, ModelEntry] = {}
        self._discover = config is None  # until a config arrives: every directory is a model
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if config is not None:
            self._apply_config(config)

    @classmethod
    def config_from_file(cls, path: str) -> model_server_config_pb2.ModelServerConfig:
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(Path(path).read_text(), config)
        except (OSError, text_format.ParseError) as exc:
            raise ValueError(f"model config file {path}: {exc}") from None
        return config

    # ------------------------------------------------------------------ lifecycle

    def check_base_path(self) -> None:
        """Readiness: the base path must exist and be readable."""
        if not self.base_path.is_dir():
            raise Unavailable(f"model base path {self.base_path} does not exist or is not a directory")
        if not os.access(self.base_path, os.R_OK | os.X_OK):
            raise Unavailable(f"model base path {self.base_path} is not readable")

    def start(self) -> None:
        if self._thread is None:
            self.poll_once()  # the first versions are up before health says SERVING
            self._thread = threading.Thread(target=self._poll_forever, name="model-server-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive a bad directory
                log.exception("polling the model base path failed")

    # ------------------------------------------------------------------ polling

    def poll_once(self) -> None:
        with self._poll_lock:
            if self._discover:
                self._discover_models()
            with self._lock:
                models = list(self._models.values())
            for model in models:
                if model.policy.kind != "gone":
                    self._sync_model(model)
            with self._lock:  # models dropped by a config reload: unload everything they still hold
                for name in [n for n, m in self._models.items() if m.policy.kind == "gone"]:
                    self._unload_all(self._models.pop(name))

    def _discover_models(self) -> None:
        try:
            names = [e.name for e in os.scandir(self.base_path) if e.is_dir() and _MODEL_NAME.match(e.name)]
        except FileNotFoundError:
            names = []
        with self._lock:
            for name in names:
                if name not in self._models:
                    self._models[name] = ModelEntry(name, self.base_path / name,
                                                    VersionPolicy("latest", num_versions=self.num_versions))

    def _sync_model(self, model: ModelEntry) -> None:
        on_disk = versions_on_disk(model.base_path)
        aspired = model.policy.aspired(on_disk)
        with self._lock:
            to_load = sorted(v for v in aspired
                             if v not in model.versions or model.versions[v].state in (State.END, State.START)
                             and not model.versions[v].error)
            for version in to_load:
                model.versions[version] = VersionEntry(version, State.START)
            # A version that failed and then vanished from disk may be retried when it comes back.
            for version, entry in list(model.versions.items()):
                if entry.error and version not in on_disk:
                    del model.versions[version]
        for version in sorted(to_load, reverse=True):  # newest first: it is the one that will answer
            self._load(model, version)
        with self._lock:
            to_unload = [v for v, e in model.versions.items()
                         if e.state == State.AVAILABLE and v not in aspired]
        for version in to_unload:
            self._unload(model, version)

    def _load(self, model: ModelEntry, version: int) -> None:
        entry = model.versions[version]
        entry.state = State.LOADING
        started = time.perf_counter()
        log.info("loading servable", extra={"model": model.name, "version": version})
        try:
            loaded = LoadedVersion(model.base_path / str(version))
        except Exception as exc:  # noqa: BLE001 - a broken SavedModel is reported in its status
            with self._lock:
                entry.state, entry.error = State.END, f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}"
            log.error("loading servable failed", extra={"model": model.name, "version": version,
                                                         "error": entry.error})
            metrics.LOADS.labels(model.name, "error").inc()
            return
        with self._lock:
            entry.loaded, entry.state = loaded, State.AVAILABLE
        metrics.LOADS.labels(model.name, "ok").inc()
        metrics.LOAD_SECONDS.observe(time.perf_counter() - started)
        self._update_gauge(model)
        log.info("servable available", extra={"model": model.name, "version": version})

    def _unload(self, model: ModelEntry, version: int) -> None:
        with self._lock:
            entry = model.versions[version]
            entry.state = State.UNLOADING
            # In-flight requests keep their own reference; new ones can no longer resolve this version.
            entry.loaded = None
            entry.state = State.END
        self._update_gauge(model)
        log.info("servable unloaded", extra={"model": model.name, "version": version})

    def _unload_all(self, model: ModelEntry) -> None:
        for version, entry in model.versions.items():
            if entry.state == State.AVAILABLE:
                entry.loaded, entry.state = None, State.END
                log.info("servable unloaded", extra={"model": model.name, "version": version})
        self._update_gauge(model)

    def _update_gauge(self, model: ModelEntry) -> None:
        metrics.AVAILABLE_VERSIONS.labels(model.name).set(len(model.available()))

    # ------------------------------------------------------------------ config

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """ModelService.HandleReloadConfigRequest: the new config replaces the old one; models it no
        longer lists are unloaded; labels must point at AVAILABLE versions (unless allowed)."""
        which = config.WhichOneof("config")
        if which != "model_config_list":
            raise ServingError(tf.errors.INVALID_ARGUMENT,
                               "ModelServerConfig must contain a model_config_list (custom configs are not supported)")
        with self._lock:
            self._apply_config(config)
        self._wake.set()

    def _apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        new: dict[str, ModelEntry] = {}
        for model_config in config.model_config_list.config:
            name = model_config.name
            if not name or not _MODEL_NAME.match(name):
                raise ServingError(tf.errors.INVALID_ARGUMENT, f"invalid model name {name!r}")
            if name in new:
                raise ServingError(tf.errors.INVALID_ARGUMENT, f"Illegal to list model {name} multiple times")
            if not model_config.base_path:
                raise ServingError(tf.errors.INVALID_ARGUMENT, f"model {name}: base_path is required")
            if model_config.model_platform not in ("", "tensorflow"):
                raise ServingError(tf.errors.INVALID_ARGUMENT,
                                   f"model {name}: platform {model_config.model_platform!r} is not supported")
            policy = VersionPolicy.from_proto(model_config, self.num_versions)
            old = self._models.get(name)
            versions = old.versions if old is not None and old.base_path == Path(model_config.base_path) else {}
            labels = dict(model_config.version_labels)
            if not self.allow_labels_for_unavailable:
                for version in sorted(labels.values()):
                    entry = versions.get(version)
                    if entry is None or entry.state != State.AVAILABLE:
                        raise ServingError(
                            tf.errors.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {name}, which is not "
                            f"currently available for inference")
            new[name] = ModelEntry(name, Path(model_config.base_path), policy, labels, versions)
        for name, old in self._models.items():
            if name not in new:  # unloaded by the next poll
                new[f"\0gone:{name}"] = ModelEntry(name, old.base_path, VersionPolicy("gone"), {}, old.versions)
        self._models = new
        self._discover = False
        log.info("model config applied", extra={"models": sorted(n for n in new if not n.startswith("\0"))})

    # ------------------------------------------------------------------ requests

    def _model(self, name: str) -> ModelEntry | None:
        model = self._models.get(name)
        return model if model is not None and model.policy.kind != "gone" else None

    def resolve(self, name: str, version: int | None = None, label: str = "") -> tuple[int, LoadedVersion]:
        """The loaded version a request names (a number, a label, or neither: the latest)."""
        with self._lock:
            model = self._model(name)
            if label:
                if model is None or label not in model.labels:
                    raise ServingError(tf.errors.INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if model is not None:
                if version is None:
                    available = model.available()
                    if available:
                        version = available[-1]
                        return version, model.versions[version].loaded
                else:
                    entry = model.versions.get(version)
                    if entry is not None and entry.state == State.AVAILABLE and entry.loaded is not None:
                        return version, entry.loaded
        wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingError(tf.errors.NOT_FOUND, f"Servable not found for request: {wanted}")

    def status(self, name: str, version: int | None = None) -> list[VersionEntry]:
        with self._lock:
            model = self._model(name)
            if model is None or not model.versions:
                raise ServingError(tf.errors.NOT_FOUND, f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.versions:
                    raise ServingError(tf.errors.NOT_FOUND, f"Could not find version {version} of model {name}")
                entries = [model.versions[version]]
            else:
                entries = [model.versions[v] for v in sorted(model.versions, reverse=True)]
            return [VersionEntry(e.version, e.state, e.error) for e in entries]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(m.name for m in self._models.values() if m.policy.kind != "gone")
