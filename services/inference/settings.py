"""Settings of the inference service."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import DEFAULT_HTTP_PORTS, ServiceSettings, env


@dataclass(frozen=True)
class InferenceSettings(ServiceSettings):
    model_base_path: str = env("CLASSFORGE_MODEL_BASE_PATH",
                               help="directory TF Serving polls: <model>/<version>/saved_model.pb; published "
                                    "versions are copied here")
    http_port: int = env("CLASSFORGE_HTTP_PORT", 0,
                         "REST port (TF Serving-style /v1 and Open Inference Protocol v2 /v2); 0 means the default, "
                         f"{DEFAULT_HTTP_PORTS['inference']}, -1 disables")
    model_server: str = env("CLASSFORGE_MODEL_SERVER", "127.0.0.1:8500",
                            "TF Serving (or services.model_server) gRPC address, host:port")
    model_server_base_path: str = env("CLASSFORGE_MODEL_SERVER_BASE_PATH", "",
                                      "the base path as the model server sees it (its mount point); empty: the "
                                      "same as CLASSFORGE_MODEL_BASE_PATH")
    keep_versions: int = env("CLASSFORGE_KEEP_VERSIONS", 3,
                             "published versions kept (and loaded) per model; older ones are deleted")
    default_model: str = env("CLASSFORGE_DEFAULT_MODEL", "classforge",
                             "model name used when a job's spec.deploy.model_name or a request's model_name is empty")
    serving_label: str = env("CLASSFORGE_SERVING_LABEL", "stable",
                             "TF Serving version label that marks the version answering requests without a version")
    default_top_k: int = env("CLASSFORGE_DEFAULT_TOP_K", 5, "classes returned per task when top_k is 0")
    max_image_bytes: int = env("CLASSFORGE_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "largest image accepted")
    max_image_pixels: int = env("CLASSFORGE_MAX_IMAGE_PIXELS", 50_000_000,
                                "most pixels an image's header may declare (decompression-bomb guard, checked "
                                "before the model server decodes it)")
    max_batch_images: int = env("CLASSFORGE_MAX_BATCH_IMAGES", 64,
                                "most images in one REST classify or v2 infer request")
    predict_timeout: float = env("CLASSFORGE_PREDICT_TIMEOUT_SECONDS", 30.0,
                                 "longest a Predict may take when the caller set no deadline")
    publish_timeout: float = env("CLASSFORGE_PUBLISH_TIMEOUT_SECONDS", 300.0,
                                 "how long a published version may take to become AVAILABLE")
    reconcile_seconds: float = env("CLASSFORGE_RECONCILE_SECONDS", 30.0,
                                   "how often the model server's config (versions, labels) is re-sent, so a "
                                   "restarted model server serves the right versions again; 0 disables")
    stream_window: int = env("CLASSFORGE_STREAM_WINDOW", 8, "images of one ClassifyStream in flight at once")
    # Off by default: batching is the model server's job (Compose and k8s run TF Serving with --enable_batching),
    # and batching twice adds both waits. On where the model server does not batch: the embedded mode's stand-in.
    batch_max_size: int = env("CLASSFORGE_BATCH_MAX_SIZE", 0,
                              "client-side micro-batching: most images per Predict; 0 or 1 disables")
    batch_wait_ms: float = env("CLASSFORGE_BATCH_WAIT_MS", 2.0,
                               "client-side micro-batching: how long the first request waits for others, only while a "
                               "Predict of the same model is in flight (else it is sent at once)")

    @property
    def rest_port(self) -> int:
        """The REST port to bind: -1 (disabled), or CLASSFORGE_HTTP_PORT, or the default."""
        return self.http_port or DEFAULT_HTTP_PORTS["inference"]

    @property
    def server_base_path(self) -> str:
        return self.model_server_base_path or self.model_base_path
